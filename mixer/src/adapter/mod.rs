//! Adapters: what handlers do with instances.

pub mod prometheus;
pub mod stdio;
