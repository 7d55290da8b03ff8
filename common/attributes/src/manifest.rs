//! The attribute vocabulary: every attribute's name and type.

use std::collections::BTreeMap;

use crate::value::ValueType;

/// Attribute names and types that expressions are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    attributes: BTreeMap<String, ValueType>,
}

/// Istio 1.0's default manifests (`istioproxy` and `kubernetes`) as `name=TYPE` pairs.
const ISTIO_1_0: &str = "origin.ip=IP_ADDRESS origin.uid=STRING origin.user=STRING request.headers=STRING_MAP request.id=STRING request.host=STRING request.method=STRING request.path=STRING request.reason=STRING request.referer=STRING request.scheme=STRING request.total_size=INT64 request.size=INT64 request.time=TIMESTAMP request.useragent=STRING response.code=INT64 response.duration=DURATION response.headers=STRING_MAP response.total_size=INT64 response.size=INT64 response.time=TIMESTAMP source.uid=STRING source.user=STRING source.principal=STRING destination.uid=STRING destination.principal=STRING destination.port=INT64 connection.event=STRING connection.id=STRING connection.received.bytes=INT64 connection.received.bytes_total=INT64 connection.sent.bytes=INT64 connection.sent.bytes_total=INT64 connection.duration=DURATION connection.mtls=BOOL connection.requested_server_name=STRING context.protocol=STRING context.timestamp=TIMESTAMP context.time=TIMESTAMP context.reporter.local=BOOL context.reporter.kind=STRING context.reporter.uid=STRING api.service=STRING api.version=STRING api.operation=STRING api.protocol=STRING request.auth.principal=STRING request.auth.audiences=STRING request.auth.presenter=STRING request.auth.claims=STRING_MAP request.auth.raw_claims=STRING request.api_key=STRING \
source.ip=IP_ADDRESS source.labels=STRING_MAP source.metadata=STRING_MAP source.name=STRING source.namespace=STRING source.owner=STRING source.service=STRING source.serviceAccount=STRING source.services=STRING source.workload.uid=STRING source.workload.name=STRING source.workload.namespace=STRING destination.ip=IP_ADDRESS destination.labels=STRING_MAP destination.metadata=STRING_MAP destination.owner=STRING destination.name=STRING destination.container.name=STRING destination.namespace=STRING destination.service=STRING destination.service.uid=STRING destination.service.name=STRING destination.service.namespace=STRING destination.service.host=STRING destination.serviceAccount=STRING destination.workload.uid=STRING destination.workload.name=STRING destination.workload.namespace=STRING";

impl Manifest {
    /// Istio 1.0's attributes (what its default config declares).
    pub fn istio() -> Manifest {
        let mut m = Manifest::default();
        for pair in ISTIO_1_0.split_whitespace() {
            if let Some((name, t)) = pair.split_once('=')
                && let Some(t) = ValueType::parse(t)
            {
                m.attributes.insert(name.to_owned(), t);
            }
        }
        m
    }

    pub fn insert(&mut self, name: &str, t: ValueType) {
        self.attributes.insert(name.to_owned(), t);
    }

    pub fn get(&self, name: &str) -> Option<ValueType> {
        self.attributes.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}
