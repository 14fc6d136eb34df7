//! An Export call through tonic whose message was encoded before the call: a test's huge export
//! (a million records take seconds to encode in a debug build) is then sent as soon as the
//! connection is open, rather than after the server's first-request deadline has run out on a
//! busy machine while the client encodes.

use bytes::{Buf as _, BufMut as _, Bytes};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message as _;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{TestApp, authorized};

/// Bytes out as they are, an Export response in.
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ExportLogsServiceResponse;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportLogsServiceResponse>, Status> {
        let response = ExportLogsServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::internal(format!("an undecodable response: {e}")))?;
        Ok(Some(response))
    }
}

impl TestApp {
    /// Exports `message`, an `ExportLogsServiceRequest` encoded beforehand, over gRPC with `key`.
    pub async fn export_encoded(
        &self,
        key: &Secret,
        message: Bytes,
    ) -> Result<ExportLogsServiceResponse, Status> {
        let channel = tonic::transport::Endpoint::from_shared(self.grpc_url.clone())
            .expect("a gRPC URL")
            .connect()
            .await
            .expect("grpc connect");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(logbridge::otlp::grpc::EXPORT_PATH);
        grpc.unary(authorized(message, key), path, Encoded)
            .await
            .map(tonic::Response::into_inner)
    }
}
