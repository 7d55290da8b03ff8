//! keel-pilot: turns the service registry and Istio's networking configuration into Envoy
//! xDS for every connected proxy.
//!
//! Layers: [`registry`] (services and endpoints from config, pure) and [`proxy`] (who is
//! asking) -> [`xds`] (pure translation to Envoy types). Work in progress: CDS and EDS are
//! here; LDS, RDS and the ADS server follow (see the pilot issue).

pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod xds;

/// Logging: `text` for people, `json` for machines; level from `RUST_LOG`.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
