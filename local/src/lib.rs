//! keel-local: the runtime behind `keelctl up` (design.md §5).
//!
//! Work in progress (the local-mesh issue): [`net`] gives each pod a network namespace with
//! its own address on a bridge, and records every change before making it, so teardown
//! works from the record even after a crash.

pub mod dns;
pub mod net;
