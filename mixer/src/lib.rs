//! keel-mixer: Istio 1.0's Mixer model, running.
//!
//! Configuration (rules, instances, handlers from galley) is resolved into a [`plan::Plan`]:
//! every rule's `match` and every instance field compiled once against the attribute manifest,
//! every reference resolved, every problem named. For each report, the plan turns an attribute
//! bag into built instances per handler ([`plan::Plan::dispatch`]); adapters
//! ([`adapter::prometheus`], [`adapter::stdio`]) consume them. All of this is pure: the
//! service around it (report intake, galley subscription, HTTP) owns the I/O.

pub mod adapter;
pub mod check;
pub mod forward;
pub mod instance;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod policy;
pub mod report;
pub mod server;

pub use instance::{Instance, InstanceBody};
pub use plan::{Dispatch, Plan};
