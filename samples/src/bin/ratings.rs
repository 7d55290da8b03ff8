//! bookinfo-ratings [PORT]: reviewers' stars (`SERVICE_VERSION=v-faulty|v-delayed` for the test variants).
fn main() -> std::process::ExitCode {
    let flavor = keel_samples::ratings::Flavor::from_env();
    keel_samples::http::main_with("bookinfo-ratings", move |l| {
        keel_samples::ratings::run(l, flavor)
    })
}
