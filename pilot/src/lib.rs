//! keel-pilot: turns the service registry and Istio's networking configuration into Envoy
//! xDS for every connected proxy.
//!
//! Layers: [`registry`] (services and endpoints from config, pure) and [`proxy`] (who is
//! asking) -> [`xds`] (pure translation to Envoy types). Work in progress: CDS and EDS are
//! here; LDS, RDS and the ADS server follow (see the pilot issue).

pub mod proxy;
pub mod registry;
pub mod xds;
