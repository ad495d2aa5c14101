//! DoPut: decode FlightData once, hand the batch and its untouched IPC bytes
//! to the owning shard, and send one `PutResult` per batch once it is durable.
//!
//! Two tasks per stream: the reader decodes and queues batches (waiting when
//! the shard pushes back), the acker awaits durability in order and answers.
//! Up to [`PUT_WINDOW_BATCHES`] batches of one stream wait for their commit
//! at once; that is what lets one stream fill a group commit.

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, PutResult};
use futures::stream::BoxStream;
use futures::{Future, StreamExt};
use longbow_engine::{Engine, IpcMessage, Lsn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

use super::ticket::dataset_from_descriptor;
use crate::error::into_status;

/// Batches of one DoPut stream accepted by the shard but not yet acknowledged.
pub const PUT_WINDOW_BATCHES: usize = 512;

type Ack = std::pin::Pin<Box<dyn Future<Output = longbow_engine::Result<Lsn>> + Send>>;

enum Step {
    Ack { rows: usize, ack: Ack },
    Fail(Status),
}

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
    let (step_tx, step_rx) = mpsc::channel::<Step>(PUT_WINDOW_BATCHES);
    // Unbounded, so a client that reads PutResults late never stalls the
    // reader; each entry is a few dozen bytes per batch.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(read(engine, dataset, decoder, step_tx));
    tokio::spawn(acknowledge(step_rx, out_tx));
    Ok(UnboundedReceiverStream::new(out_rx).boxed())
}

async fn read(engine: Engine, dataset: String, mut decoder: FlightDataDecoder, steps: mpsc::Sender<Step>) {
    let mut opened = false;
    while let Some(item) = decoder.next().await {
        let fail = match item {
            Err(FlightError::Tonic(status)) => *status,
            Err(e) => Status::invalid_argument(format!("undecodable FlightData for dataset {dataset:?}: {e}")),
            Ok(decoded) => match decoded.payload {
                DecodedPayload::None => continue,
                DecodedPayload::Schema(schema) => match engine.open(&dataset, schema).await {
                    Ok(()) => {
                        opened = true;
                        continue;
                    }
                    Err(e) => into_status(e),
                },
                DecodedPayload::RecordBatch(batch) => {
                    assert!(opened, "the decoder yields batches only after a schema");
                    let rows = batch.num_rows();
                    let message = IpcMessage { header: decoded.inner.data_header, body: decoded.inner.data_body };
                    match engine.append(&dataset, batch, message).await {
                        Ok(ack) => {
                            if steps.send(Step::Ack { rows, ack: Box::pin(ack) }).await.is_err() {
                                return; // the acker stopped after an error
                            }
                            continue;
                        }
                        Err(e) => into_status(e),
                    }
                }
            },
        };
        let _ = steps.send(Step::Fail(fail)).await;
        return;
    }
    if !opened {
        let _ = steps
            .send(Step::Fail(Status::invalid_argument(format!(
                "DoPut for dataset {dataset:?} carried no schema message"
            ))))
            .await;
    }
}

async fn acknowledge(mut steps: mpsc::Receiver<Step>, out: mpsc::UnboundedSender<Result<PutResult, Status>>) {
    while let Some(step) = steps.recv().await {
        let result = match step {
            Step::Ack { rows, ack } => ack.await.map(|lsn| put_result(rows, lsn)).map_err(into_status),
            Step::Fail(status) => Err(status),
        };
        let failed = result.is_err();
        if out.send(result).is_err() || failed {
            return;
        }
    }
}

fn put_result(rows: usize, lsn: Lsn) -> PutResult {
    let body = serde_json::json!({ "rows": rows, "lsn": lsn });
    PutResult { app_metadata: serde_json::to_vec(&body).expect("json").into() }
}
