//! The ADS service on the wire: tonic's gRPC plumbing for both ADS methods, with state of
//! the world responses encoded straight from the snapshot's shared resources.
//!
//! Why not the generated `AggregatedDiscoveryServiceServer`: its responses are
//! `DiscoveryResponse` values, which own their resources, so every push to every proxy
//! deep-copied each resource (an allocation and a copy per cluster, per proxy) before
//! encoding copied it again. Pilot pushes the same encoded clusters to thousands of proxies;
//! [`SotwResponse`] holds them by `Arc` and writes each into the gRPC frame once. On the
//! wire it is exactly a `DiscoveryResponse` (same field numbers), which the tests check by
//! decoding it as one.

use std::convert::Infallible;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use crate::server::{AdsServer, ResponseStream, SnapshotSource};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Largest request accepted (galley's clients send small ones; a bound all the same).
const MAX_DECODING: usize = 64 << 20;
/// Largest response sent: a whole mesh's clusters for one proxy fits many times over.
const MAX_ENCODING: usize = 256 << 20;

/// A state of the world response, encoded as `DiscoveryResponse` fields 1 (version_info),
/// 2 (resources), 4 (type_url) and 5 (nonce); the resources are the snapshot's own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Any>>,
    pub type_url: String,
    pub nonce: String,
}

impl SotwResponse {
    /// The same response as an owned `DiscoveryResponse` (tests, debugging).
    pub fn to_discovery_response(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|a| Any::clone(a)).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl prost::Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use prost::encoding::{message, string};
        if !self.version_info.is_empty() {
            string::encode(1, &self.version_info, buf);
        }
        for any in &self.resources {
            message::encode(2, &**any, buf);
        }
        if !self.type_url.is_empty() {
            string::encode(4, &self.type_url, buf);
        }
        if !self.nonce.is_empty() {
            string::encode(5, &self.nonce, buf);
        }
    }

    /// Only ever sent: a server never decodes its own responses, so every field read is
    /// skipped (prost's contract for unknown fields).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{message, string};
        let text = |tag: u32, s: &String| {
            if s.is_empty() {
                0
            } else {
                string::encoded_len(tag, s)
            }
        };
        text(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|any| message::encoded_len(2, &**any))
                .sum::<usize>()
            + text(4, &self.type_url)
            + text(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = SotwResponse::default();
    }
}

/// Requests decoded by prost; [`SotwResponse`]s written into a buffer reserved at their
/// exact size. (Prost's encoder lets tonic's buffer grow by doubling from 8 KiB, which for
/// a half-megabyte response is seven reallocations, each copying what was written and
/// touching fresh pages.)
#[derive(Debug, Default)]
struct SotwCodec(ProstCodec<SotwResponse, DiscoveryRequest>);

struct SotwEncoder;

impl Encoder for SotwEncoder {
    type Item = SotwResponse;
    type Error = Status;

    fn encode(&mut self, item: SotwResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::Message;
        dst.reserve(item.encoded_len());
        item.encode_raw(dst);
        Ok(())
    }
}

impl Codec for SotwCodec {
    type Encode = SotwResponse;
    type Decode = DiscoveryRequest;
    type Encoder = SotwEncoder;
    type Decoder = <ProstCodec<SotwResponse, DiscoveryRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> SotwEncoder {
        SotwEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

/// The ADS gRPC service (both methods) for tonic's `Server::add_service`.
pub struct AdsService<S> {
    server: Arc<AdsServer<S>>,
}

impl<S> AdsService<S> {
    pub(crate) fn new(server: AdsServer<S>) -> Self {
        AdsService {
            server: Arc::new(server),
        }
    }
}

impl<S> std::fmt::Debug for AdsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.server.fmt(f)
    }
}

impl<S> Clone for AdsService<S> {
    fn clone(&self) -> Self {
        AdsService {
            server: self.server.clone(),
        }
    }
}

impl<S> NamedService for AdsService<S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

struct SotwMethod<S>(Arc<AdsServer<S>>);

impl<S: SnapshotSource> StreamingService<DiscoveryRequest> for SotwMethod<S> {
    type Response = SotwResponse;
    type ResponseStream = ResponseStream<SotwResponse>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(server.open_sotw(request.into_inner())) })
    }
}

struct DeltaMethod<S>(Arc<AdsServer<S>>);

impl<S: SnapshotSource> StreamingService<DeltaDiscoveryRequest> for DeltaMethod<S> {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = ResponseStream<DeltaDiscoveryResponse>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(server.open_delta(request.into_inner())) })
    }
}

impl<S, B> Service<http::Request<B>> for AdsService<S>
where
    S: SnapshotSource,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SotwCodec::default())
                    .apply_max_message_size_config(Some(MAX_DECODING), Some(MAX_ENCODING));
                Ok(grpc.streaming(SotwMethod(server), req).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(
                    ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default(),
                )
                .apply_max_message_size_config(Some(MAX_DECODING), Some(MAX_ENCODING));
                Ok(grpc.streaming(DeltaMethod(server), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn a_sotw_response_is_a_discovery_response_on_the_wire() {
        let any = |t: &str, v: &[u8]| {
            Arc::new(Any {
                type_url: t.into(),
                value: v.to_vec(),
            })
        };
        let resp = SotwResponse {
            version_info: "v7".into(),
            resources: vec![
                any("type.googleapis.com/x.Cluster", b"\x0a\x03abc"),
                any("type.googleapis.com/x.Cluster", &[0u8; 300]),
                any("", b""),
            ],
            type_url: "type.googleapis.com/x.Cluster".into(),
            nonce: "12".into(),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, resp.to_discovery_response());
        assert_eq!(decoded.resources[1].value.len(), 300);
        // And byte for byte what prost writes for the owned message.
        assert_eq!(bytes, resp.to_discovery_response().encode_to_vec());
        // Empty strings are left out, as proto3 does.
        let empty = SotwResponse::default();
        assert!(empty.encode_to_vec().is_empty());
        assert_eq!(
            DiscoveryResponse::decode(empty.encode_to_vec().as_slice()).unwrap(),
            DiscoveryResponse::default()
        );
    }
}
