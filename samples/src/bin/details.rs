//! bookinfo-details [PORT]: the book's details.
fn main() -> std::process::ExitCode {
    keel_samples::http::main_with("bookinfo-details", keel_samples::details::run)
}
