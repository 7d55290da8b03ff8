//! EDS: the endpoints of each outbound cluster, filtered by the subset's labels.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::registry::{Discovery, Endpoint, ServiceRegistry};

pub fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The assignment for `cluster` from `endpoints` carrying every label of `subset`. One
/// locality with a weight, which gRPC's xDS client requires and Envoy accepts.
pub fn assignment(
    cluster: &str,
    endpoints: &[Endpoint],
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .iter()
        .filter(|e| subset.is_none_or(|s| s.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|e| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket(&e.address, e.port)),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The workload itself, for inbound clusters.
pub fn local(cluster: &str, port: u16) -> ClusterLoadAssignment {
    local_at(cluster, "127.0.0.1", port)
}

/// One fixed address (or DNS name, for STRICT_DNS clusters).
pub fn local_at(cluster: &str, address: &str, port: u16) -> ClusterLoadAssignment {
    let ep = Endpoint {
        address: address.to_owned(),
        port,
        labels: BTreeMap::new(),
        service_account: String::new(),
        workload: String::new(),
    };
    assignment(cluster, std::slice::from_ref(&ep), None)
}

/// Every outbound EDS cluster's assignment, by cluster name.
pub fn assignments(
    reg: &dyn ServiceRegistry,
    rules: &super::cds::DestinationRules<'_>,
) -> Vec<ClusterLoadAssignment> {
    let mut out = Vec::new();
    for svc in reg
        .services()
        .filter(|s| s.discovery == Discovery::Endpoints)
    {
        let subsets = rules
            .get(&svc.hostname)
            .map(|r| r.subsets.as_slice())
            .unwrap_or_default();
        for port in &svc.ports {
            let eps = reg.endpoints(&svc.hostname, port.port);
            out.push(assignment(
                &super::cds::outbound_name(port.port, "", &svc.hostname),
                eps,
                None,
            ));
            for s in subsets {
                out.push(assignment(
                    &super::cds::outbound_name(port.port, &s.name, &svc.hostname),
                    eps,
                    Some(&s.labels),
                ));
            }
        }
    }
    out
}
