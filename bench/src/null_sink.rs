//! `longbow-bench null-server`: a Flight server that decodes and discards
//! DoPut batches but answers like Longbow (one PutResult per batch), the
//! protocol ceiling to report ingest against, measured in the same run.

use std::net::SocketAddr;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::server::WINDOW_BYTES;

/// Decodes every batch, keeps nothing, acknowledges each like Longbow does.
struct NullSink;

#[tonic::async_trait]
impl FlightService for NullSink {
    type HandshakeStream = BoxStream<'static, Result<arrow_flight::HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<arrow_flight::FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<arrow_flight::ActionType, Status>>;

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        let input = request.into_inner().map(|r| r.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s))));
        let out = FlightDataDecoder::new(input).filter_map(|d| async move {
            match d {
                Ok(d) => match d.payload {
                    DecodedPayload::RecordBatch(b) => {
                        let body = serde_json::json!({ "rows": b.num_rows(), "lsn": 0 });
                        Some(Ok(PutResult { app_metadata: serde_json::to_vec(&body).expect("json").into() }))
                    }
                    _ => None,
                },
                Err(e) => Some(Err(Status::invalid_argument(e.to_string()))),
            }
        });
        Ok(Response::new(out.boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<arrow_flight::HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn list_flights(
        &self,
        _: Request<arrow_flight::Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<arrow_flight::FlightInfo>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<arrow_flight::PollInfo>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn get_schema(&self, _: Request<FlightDescriptor>) -> Result<Response<arrow_flight::SchemaResult>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn do_get(&self, _: Request<arrow_flight::Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn do_action(&self, _: Request<arrow_flight::Action>) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }
    async fn list_actions(&self, _: Request<arrow_flight::Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
    }
}

pub async fn null_server(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("null-server ready flight={}", listener.local_addr()?);
    let svc = FlightServiceServer::new(NullSink).max_decoding_message_size(usize::MAX);
    // The same transport settings as Longbow's gateway.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
