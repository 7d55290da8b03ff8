//! bookinfo-productpage [PORT]: the product page, login and the products API.
fn main() -> std::process::ExitCode {
    let cfg = keel_samples::productpage::Config::from_env();
    keel_samples::http::main_with("bookinfo-productpage", move |l| {
        keel_samples::productpage::run(l, cfg)
    })
}
