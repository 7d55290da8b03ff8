//! keel-xds: Envoy's aggregated discovery service (ADS), the one protocol Keel's components
//! use to hand each other configuration.
//!
//! Galley serves validated Istio config to pilot and mixer with it (type URLs such as
//! `networking.istio.io/v1alpha3/VirtualService`, the idea Istio later called MCP-over-xDS);
//! pilot serves Envoy's own types to proxies with it. The pieces:
//!
//! - [`snapshot`]: what a server offers — per type URL, a version and named resources.
//! - [`server`]: a state-of-the-world ADS server over tonic. Each stream tracks, per type, the
//!   subscribed names, the version and nonce it last sent, and what the client ACKed or NACKed
//!   (with the NACK's error detail kept); new snapshots are pushed as they are published.
//! - [`delta`]: the incremental protocol's state machine, served by the same server.
//! - [`status`]: that bookkeeping, readable by debug endpoints (`/debug/syncz`).
//! - [`wire`]: the gRPC service itself; state of the world responses are written from the
//!   snapshot's shared resources without copying them per stream first.
//! - [`client`]: an ADS client that reconnects with backoff and keeps the last good state.
//!
//! Nothing here knows Istio or Envoy semantics beyond the protocol.

pub mod client;
pub mod delta;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod wire;

pub use envoy_types::pb::envoy::config::core::v3::Node;
pub use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
pub use envoy_types::pb::google::protobuf::Any;
pub use snapshot::{ResourceMap, TypeResources, XdsSnapshot};
