//! DoPut: decode FlightData once, hand the batch and its untouched IPC bytes
//! to the owning shard, and send one `PutResult` per batch once it is durable.
//!
//! One task per stream alternates between reading the next batch and
//! answering acknowledgements in order. Up to [`PUT_WINDOW_BATCHES`] batches
//! of one stream wait for their commit at once; that is what lets one stream
//! fill a group commit.

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, PutResult};
use futures::stream::{BoxStream, FuturesOrdered};
use futures::{Future, StreamExt};
use longbow_engine::{Engine, IpcMessage, Lsn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

use super::ticket::dataset_from_descriptor;
use crate::error::into_status;

/// Batches of one DoPut stream accepted by the shard but not yet acknowledged.
pub const PUT_WINDOW_BATCHES: usize = 512;

type Ack = std::pin::Pin<Box<dyn Future<Output = (usize, longbow_engine::Result<Lsn>)> + Send>>;
type Out = mpsc::UnboundedSender<Result<PutResult, Status>>;

pub async fn do_put(
    engine: Engine,
    mut input: Streaming<FlightData>,
) -> Result<BoxStream<'static, Result<PutResult, Status>>, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty DoPut stream: expected a path FlightDescriptor and a schema"))?;
    let dataset = dataset_from_descriptor(first.flight_descriptor.as_ref())?;
    // Checked here too so a bad name fails before any data is read.
    longbow_engine::dataset::validate_name(&dataset).map_err(into_status)?;

    let rest = input.map(|r| r.map_err(|s| FlightError::Tonic(Box::new(s))));
    let decoder = FlightDataDecoder::new(futures::stream::once(async { Ok(first) }).chain(rest));
    // Unbounded, so a client that reads PutResults late never stalls
    // ingest; each entry is a few dozen bytes per batch.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(engine, dataset, decoder, out_tx));
    Ok(UnboundedReceiverStream::new(out_rx).boxed())
}

async fn pump(engine: Engine, dataset: String, mut decoder: FlightDataDecoder, out: Out) {
    let mut acks: FuturesOrdered<Ack> = FuturesOrdered::new();
    let mut opened = false;
    let mut reading = true;
    // An input error is reported after the acknowledgements before it.
    let mut failure: Option<Status> = None;
    loop {
        tokio::select! {
            biased;
            Some((rows, result)) = acks.next(), if !acks.is_empty() => {
                let reply = result.map(|lsn| put_result(rows, lsn)).map_err(into_status);
                let failed = reply.is_err();
                if out.send(reply).is_err() || failed {
                    return;
                }
            }
            item = decoder.next(), if reading && acks.len() < PUT_WINDOW_BATCHES => {
                let step = match item {
                    None => {
                        reading = false;
                        if !opened {
                            failure = Some(Status::invalid_argument(format!(
                                "DoPut for dataset {dataset:?} carried no schema message"
                            )));
                        }
                        continue;
                    }
                    Some(item) => read_one(&engine, &dataset, item, &mut opened).await,
                };
                match step {
                    Ok(Some(ack)) => acks.push_back(ack),
                    Ok(None) => {}
                    Err(status) => {
                        reading = false;
                        failure = Some(status);
                    }
                }
            }
            else => break,
        }
    }
    if let Some(status) = failure {
        let _ = out.send(Err(status));
    }
}

/// Handles one decoded message: a schema opens the dataset, a batch is
/// queued on its shard and yields the future of its acknowledgement.
async fn read_one(
    engine: &Engine,
    dataset: &str,
    item: Result<arrow_flight::decode::DecodedFlightData, FlightError>,
    opened: &mut bool,
) -> Result<Option<Ack>, Status> {
    let decoded = match item {
        Err(FlightError::Tonic(status)) => return Err(*status),
        Err(e) => return Err(Status::invalid_argument(format!("undecodable FlightData for dataset {dataset:?}: {e}"))),
        Ok(d) => d,
    };
    match decoded.payload {
        DecodedPayload::None => Ok(None),
        DecodedPayload::Schema(schema) => {
            engine.open(dataset, schema).await.map_err(into_status)?;
            *opened = true;
            Ok(None)
        }
        DecodedPayload::RecordBatch(batch) => {
            assert!(*opened, "the decoder yields batches only after a schema");
            let rows = batch.num_rows();
            let message = IpcMessage { header: decoded.inner.data_header, body: decoded.inner.data_body };
            let started = std::time::Instant::now();
            let ack = engine.append(dataset, batch, message).await.map_err(into_status)?;
            let metrics = engine.metrics().clone();
            Ok(Some(Box::pin(async move {
                let result = ack.await;
                metrics.put_ack_seconds.observe(started.elapsed().as_secs_f64());
                (rows, result)
            })))
        }
    }
}

fn put_result(rows: usize, lsn: Lsn) -> PutResult {
    let body = serde_json::json!({ "rows": rows, "lsn": lsn });
    PutResult { app_metadata: serde_json::to_vec(&body).expect("json").into() }
}
