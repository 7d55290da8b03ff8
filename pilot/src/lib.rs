//! keel-pilot: turns the service registry and Istio's networking configuration into Envoy
//! xDS for every connected proxy.
//!
//! Work in progress: the service registry ([`registry`]) is here; the xDS translation and
//! the ADS server follow (see the pilot issue).

pub mod registry;
