//! bookinfo-reviews [PORT]: v1/v2/v3 by `ENABLE_RATINGS` and `STAR_COLOR`.
fn main() -> std::process::ExitCode {
    let cfg = keel_samples::reviews::Config::from_env();
    keel_samples::http::main_with("bookinfo-reviews", move |l| {
        keel_samples::reviews::run(l, cfg)
    })
}
