//! Adapters: what handlers do with instances.

pub mod fluentd;
pub mod prometheus;
pub mod rotate;
pub mod stdio;
