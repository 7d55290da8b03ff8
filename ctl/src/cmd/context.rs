//! `keelctl context [--set-galley ADDR]`: show or set where keelctl finds galley.

use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remember this galley address (`host:port` or `http://host:port`).
    #[arg(long)]
    pub set_galley: Option<String>,
}

pub fn run(args: &Args, flag: Option<&str>, out: &mut dyn Write) -> anyhow::Result<bool> {
    if let Some(addr) = &args.set_galley {
        let mut ctx = crate::context::load()?;
        ctx.galley = Some(addr.clone());
        crate::context::save(&ctx)?;
        writeln!(
            out,
            "galley: {addr} (saved in {})",
            crate::context::context_path().display()
        )?;
    } else {
        writeln!(out, "galley: {}", crate::context::galley_addr(flag)?)?;
        writeln!(
            out,
            "context file: {}",
            crate::context::context_path().display()
        )?;
    }
    Ok(true)
}
