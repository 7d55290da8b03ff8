//! Translation to Envoy xDS v3, one module per resource type. Everything here is a pure
//! function of (registry, configuration, proxy).

pub mod cds;
pub mod eds;
pub mod lds;
pub mod rds;

use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};

/// Packs a message as `google.protobuf.Any`.
pub fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
