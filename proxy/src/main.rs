//! keel-proxy: see the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `keel-proxy init ...`: the pod's capture (Istio's init container), then exit.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let args = keel_proxy::capture::InitArgs::parse_from(std::env::args_os().skip(1));
        return match keel_proxy::capture::init(&args, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel-proxy init: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = keel_proxy::Args::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let filter = tracing_subscriber::EnvFilter::try_new(&initial)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_ansi(false))
            .init();
        // The admin API's /logging changes the level through the reload handle.
        keel_proxy::admin::set_log_control(
            Box::new(move |level| {
                let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            }),
            &initial,
        );
    }
    // One worker (Envoy's --concurrency 1, a sidecar's usual setting): the whole proxy on
    // one thread, without the work-stealing scheduler's cross-thread wake-ups.
    let built = if args.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.concurrency)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keel_proxy::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-proxy: {e}");
            ExitCode::from(64)
        }
    }
}
