//! `etcdserverpb.KV` as served: `Range` answered with bytes encoded off the API thread,
//! every other method by the generated server.
//!
//! tonic encodes a unary answer on the task of the connection that asked, and every
//! client connection runs on the one "api" thread: encoding an unlimited range of 54 MB
//! there held each put queued behind it for tens of milliseconds. Here a large range is
//! read, converted and encoded on the blocking pool (where it is computed anyway), and the
//! API thread only copies the finished bytes out.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::BufMut as _;
use prost::Message as _;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Bytes, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;
use tonic_prost::ProstDecoder;

use crate::pb;
use crate::service::{KvService, Shared};

const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// The KV service with its own route for `Range`.
#[derive(Clone, Debug)]
pub struct KvRoutes {
    generated: pb::kv_server::KvServer<KvService>,
    shared: Arc<Shared>,
}

impl KvRoutes {
    /// The KV service of `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { generated: pb::kv_server::KvServer::new(KvService(shared.clone())), shared }
    }
}

impl NamedService for KvRoutes {
    const NAME: &'static str = <pb::kv_server::KvServer<KvService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for KvRoutes
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != RANGE_PATH {
            return self.generated.call(request);
        }
        let method = EncodedRange(self.shared.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(EncodedRangeCodec);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// A `RangeResponse` already in its wire encoding.
#[derive(Debug)]
struct Encoded(Vec<u8>);

struct EncodedRange(Arc<Shared>);

impl UnaryService<pb::RangeRequest> for EncodedRange {
    type Response = Encoded;
    type Future = BoxFuture<tonic::Response<Encoded>, Status>;

    fn call(&mut self, request: tonic::Request<pb::RangeRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let encoded = shared.range(request.into_inner(), |response| response.encode_to_vec());
            encoded.await.map(|bytes| tonic::Response::new(Encoded(bytes)))
        })
    }
}

/// Decodes the request as the generated server does; "encodes" the answer by copying it.
struct EncodedRangeCodec;

impl Codec for EncodedRangeCodec {
    type Encode = Encoded;
    type Decode = pb::RangeRequest;
    type Encoder = CopyEncoder;
    type Decoder = ProstDecoder<pb::RangeRequest>;

    fn encoder(&mut self) -> CopyEncoder {
        CopyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

struct CopyEncoder;

impl Encoder for CopyEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put_slice(&item.0);
        Ok(())
    }
}
