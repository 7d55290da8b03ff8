//! The ADS subscription (state of the world, or incremental when the bootstrap says
//! `DELTA_GRPC`): clusters, endpoints, listeners, routes from pilot, each response
//! checked by [`crate::model::validate`] (ACK, or NACK naming the resource and field; the
//! last good state stays), then the whole accepted state converted into one
//! [`Config`](crate::model::Config) and published. The client reconnects with backoff and
//! keeps serving the last state while pilot is away.

use std::sync::Arc;

use keel_xds::client::{ClientConfig, ClientState};
use tokio::sync::watch;

use crate::bootstrap::Bootstrap;
use crate::model::{self, CLUSTER_TYPE, Config, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// The accepted state, converted. Resources were validated on arrival, so a failure here
/// cannot happen; it is logged and the resource left out rather than trusted.
pub fn config_of(state: &ClientState) -> Config {
    let mut config = Config::default();
    for (type_url, accepted) in &state.types {
        for any in &accepted.resources {
            if let Err(e) = model::convert_into(&mut config, type_url, any) {
                tracing::error!(error = %e, "an accepted resource did not convert; left out");
            }
        }
    }
    config
}

pub fn subscribe(
    boot: &Bootstrap,
) -> (
    watch::Receiver<Arc<ClientState>>,
    watch::Receiver<Arc<Config>>,
) {
    // Clusters first, so endpoints and routes arrive for clusters that exist (Envoy's
    // warming order).
    let types = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
        .map(str::to_owned)
        .to_vec();
    let mut cfg = ClientConfig::new(boot.ads.clone(), boot.node_id.clone(), types);
    cfg.node.cluster = boot.node_cluster.clone();
    cfg.delta = boot.delta;
    let (mut state, _task) = keel_xds::client::spawn(cfg, model::validate);
    let (tx, rx) = watch::channel(Arc::new(Config::default()));
    let state_rx = state.clone();
    tokio::spawn(async move {
        loop {
            let current = state.borrow_and_update().clone();
            if !current.types.is_empty() {
                let config = config_of(&current);
                tracing::info!(
                    listeners = config.listeners.len(),
                    routes = config.routes.len(),
                    clusters = config.clusters.len(),
                    "configuration applied"
                );
                tx.send_replace(Arc::new(config));
            }
            if let Some((type_url, reason)) = &current.last_nack {
                tracing::warn!(
                    type_url,
                    reason,
                    "rejected a configuration (NACK); keeping the last good one"
                );
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    (state_rx, rx)
}
