//! keel-samples: Istio's Bookinfo in Rust, observably the same as the 1.0 original (see
//! ../shared/spec/bookinfo.md): productpage (the page, login, the API), details, reviews
//! v1/v2/v3 (one program; environment picks the version) and ratings.
//!
//! Each service is a `run(listener, config)` function so tests can start them in process on
//! loopback; the binaries in `src/bin` only parse the environment and the port.

pub mod details;
pub mod http;
pub mod page;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod session;
