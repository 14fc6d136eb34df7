//! Sending already-encoded bytes as an OTLP/gRPC export: for clients whose encoding must not be
//! timed, and for bodies no well-behaved client would send.

use bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The path of the OTLP logs Export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// A codec that sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Exports `body` (an encoded `ExportLogsServiceRequest`) on `channel` with `authorization`.
pub async fn export(
    channel: tonic::transport::Channel,
    authorization: &str,
    body: bytes::Bytes,
) -> Result<Vec<u8>, tonic::Status> {
    export_with(channel, Some(authorization), body, false).await
}

/// Exports `body` with `authorization` if any, gzip-compressed if `gzip`.
pub async fn export_with(
    channel: tonic::transport::Channel,
    authorization: Option<&str>,
    body: bytes::Bytes,
    gzip: bool,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    if gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    if let Some(authorization) = authorization {
        request.metadata_mut().insert(
            "authorization",
            authorization.parse().expect("an ASCII header value"),
        );
    }
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}
