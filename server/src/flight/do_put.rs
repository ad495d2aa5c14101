//! DoPut: decode FlightData once, hand the batch and its untouched IPC bytes
//! to the owning shard, and send one `PutResult` per batch once it is durable.
//!
//! Two tasks per stream: the reader takes messages off the socket, charges
//! each batch's bytes to the admission budget shared by every stream,
//! decodes it and queues it on its shard; the writer awaits the
//! acknowledgements in order and sends them. When the budget is spent the
//! reader stops reading, so HTTP/2 flow control pushes back on the client:
//! back-pressure, not refusals.
//!
//! Refused means not stored: once a batch fails, the stream is failed
//! ([`PutStream`]) and the shard drops every later batch of it that is not
//! committed yet; the same happens when the client goes away. The error the
//! client gets follows the acknowledgements of the batches before it.
//!
//! Idempotent producers: a batch may carry `{"producer": id, "seq": n}` as
//! its FlightData `app_metadata` (or the stream names the producer once in
//! a CMD descriptor `{"dataset": name, "producer": id, "seq": first}` and
//! each batch takes the next number). The shard stores each (producer,
//! seq) once; a retried one is acknowledged again with its original LSN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::MessageHeader;
use arrow_flight::{FlightData, PutResult};
use futures::stream::BoxStream;
use futures::{Future, StreamExt};
use longbow_engine::limits::ALIGNED_BODY_BYTES_MIN;
use longbow_engine::metrics::Stage;
use longbow_engine::{Committed, Engine, IpcMessage, ProducerSeq, PutStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use super::ticket::dataset_from_descriptor;
use crate::error::into_status;

/// Batches of one DoPut stream accepted by the shard but not yet acknowledged.
pub const PUT_WINDOW_BATCHES: usize = 512;

/// Bytes every DoPut stream together may hold between reading a batch off
/// the socket and its acknowledgement (decoded or queued). A batch waits
/// for its share before it is decoded, and its stream is not read meanwhile.
pub struct Admission {
    permits: Arc<Semaphore>,
    capacity_bytes: u32,
    /// The longest a client waits for one acknowledgement: a write held
    /// back longer than this is answered UNAVAILABLE (twice the engine's
    /// back-pressure timeout, after which the engine refuses on its own).
    ack_timeout: Duration,
}

impl Admission {
    pub fn new(capacity_bytes: u64, backpressure_timeout: Duration) -> Self {
        let capacity_bytes = capacity_bytes.clamp(1 << 20, u32::MAX as u64) as u32;
        Self {
            permits: Arc::new(Semaphore::new(capacity_bytes as usize)),
            capacity_bytes,
            ack_timeout: backpressure_timeout * 2,
        }
    }

    /// Waits for room for `bytes`; a batch larger than the whole budget
    /// takes all of it.
    pub(crate) async fn admit(&self, bytes: usize) -> OwnedSemaphorePermit {
        let n = (bytes.max(1) as u64).min(self.capacity_bytes as u64) as u32;
        self.permits.clone().acquire_many_owned(n).await.expect("the admission semaphore is never closed")
    }

    /// Bytes admitted and not yet acknowledged.
    pub fn in_flight_bytes(&self) -> u64 {
        (self.capacity_bytes as usize - self.permits.available_permits()) as u64
    }
}

/// An acknowledgement to come: rows, and the commit with the batch's
/// producer sequence number.
type Ack = std::pin::Pin<Box<dyn Future<Output = (usize, longbow_engine::Result<(Committed, Option<u64>)>)> + Send>>;
/// PutResults with the time each acknowledgement arrived.
type Out = mpsc::UnboundedSender<(Result<PutResult, Status>, Instant)>;

/// What the reader hands the writer, in stream order.
enum Step {
    Ack(Ack),
    /// The input ended badly: report it after the acknowledgements before it.
    Fail(Status),
}

/// A DoPut's messages, from tonic or from Flight SQL's peeked stream.
pub type Input = BoxStream<'static, Result<FlightData, Status>>;
/// A DoPut's answers: one `PutResult` per durable batch.
pub type Acks = BoxStream<'static, Result<PutResult, Status>>;

pub async fn do_put(engine: Engine, admission: Arc<Admission>, mut input: Input) -> Result<Acks, Status> {
    let first =
        input.next().await.transpose()?.ok_or_else(|| {
            Status::invalid_argument("empty DoPut stream: expected a path FlightDescriptor and a schema")
        })?;
    let (dataset, producer) = open_descriptor(first.flight_descriptor.as_ref())?;
    // Checked here too so a bad name fails before any data is read.
    longbow_engine::dataset::validate_name(&dataset).map_err(into_status)?;
    Ok(start(engine, admission, dataset, producer, Some(first), input))
}

/// Flight SQL bulk ingest (CommandStatementIngest) into `dataset`: the same
/// durable path as DoPut; answers the rows stored once every batch is
/// durable, or the first batch's error (later ones are then not stored).
pub async fn ingest(engine: Engine, admission: Arc<Admission>, dataset: String, input: Input) -> Result<i64, Status> {
    longbow_engine::dataset::validate_name(&dataset).map_err(into_status)?;
    let mut acks = start(engine, admission, dataset, None, None, input);
    let mut rows = 0i64;
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        let body: serde_json::Value = serde_json::from_slice(&ack.app_metadata).expect("our own PutResult JSON");
        rows += body["rows"].as_i64().expect("rows in PutResult");
    }
    Ok(rows)
}

/// Reads `input` (after `first`, when the caller took it to find the
/// dataset) into `dataset`, one acknowledgement per durable batch.
fn start(
    engine: Engine,
    admission: Arc<Admission>,
    dataset: String,
    producer: Option<NamedProducer>,
    first: Option<FlightData>,
    input: Input,
) -> Acks {
    // Unbounded, so a client that reads PutResults late never stalls
    // ingest; each entry is a few dozen bytes per batch, and at most
    // PUT_WINDOW_BATCHES of them wait.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (step_tx, step_rx) = mpsc::channel(PUT_WINDOW_BATCHES);
    let stream = PutStream::new();
    let metrics = engine.metrics().clone();
    let ack_timeout = admission.ack_timeout;
    let reader = Reader { engine, admission, dataset, producer, stream: stream.clone(), schema: None, steps: step_tx };
    tokio::spawn(reader.run(first, input));
    tokio::spawn(write_acks(step_rx, out_tx, stream, ack_timeout));
    let send = metrics.stage(Stage::Send).clone();
    // The `send` stage ends when the transport takes the PutResult.
    let out = UnboundedReceiverStream::new(out_rx).map(move |(r, acked_at): (Result<PutResult, Status>, Instant)| {
        send.observe(acked_at.elapsed().as_secs_f64());
        r
    });
    out.boxed()
}

struct Reader {
    engine: Engine,
    admission: Arc<Admission>,
    dataset: String,
    /// The producer the descriptor named, and the sequence number its next
    /// batch takes unless its app_metadata gives one.
    producer: Option<NamedProducer>,
    stream: PutStream,
    schema: Option<SchemaRef>,
    steps: mpsc::Sender<Step>,
}

impl Reader {
    async fn run(mut self, first: Option<FlightData>, mut input: Input) {
        let mut next = first;
        loop {
            let data = match next.take() {
                Some(d) => d,
                None => match input.next().await {
                    Some(Ok(d)) => d,
                    None => break,
                    Some(Err(status)) => {
                        // A message the transport refused (over the size
                        // limit, not protobuf): the client is still there,
                        // so the batches before it are stored and
                        // acknowledged, and then it gets the refusal.
                        // Otherwise the client's side of the stream broke:
                        // it will not read acknowledgements either.
                        if !crate::transport::status::is_refused_message(&status) {
                            self.stream.fail();
                        }
                        let _ = self.steps.send(Step::Fail(status)).await;
                        return;
                    }
                },
            };
            if self.stream.is_failed() {
                return; // the writer reported the failure
            }
            match self.one(data).await {
                Ok(None) => {}
                Ok(Some(ack)) => {
                    if self.steps.send(Step::Ack(ack)).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = self.steps.send(Step::Fail(status)).await;
                    return;
                }
            }
        }
        if self.schema.is_none() {
            let status =
                Status::invalid_argument(format!("DoPut for dataset {:?} carried no schema message", self.dataset));
            let _ = self.steps.send(Step::Fail(status)).await;
        }
    }

    /// One message: a schema opens the dataset, a batch is admitted,
    /// decoded and queued on its shard, yielding its acknowledgement.
    async fn one(&mut self, data: FlightData) -> Result<Option<Ack>, Status> {
        if data.data_header.is_empty() {
            return Ok(None); // app_metadata only, or the descriptor alone
        }
        let dataset = &self.dataset;
        let bad = |e: String| Status::invalid_argument(format!("undecodable FlightData for dataset {dataset:?}: {e}"));
        let message = arrow::ipc::root_as_message(&data.data_header).map_err(|e| bad(e.to_string()))?;
        match message.header_type() {
            MessageHeader::Schema => {
                let schema = SchemaRef::new(arrow::datatypes::Schema::try_from(&data).map_err(|e| bad(e.to_string()))?);
                if self.schema.is_some() {
                    return Err(Status::invalid_argument(format!(
                        "DoPut for dataset {dataset:?} sent a second schema message"
                    )));
                }
                self.engine.open(dataset, schema.clone()).await.map_err(into_status)?;
                self.schema = Some(schema);
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let producer = producer_of(&mut self.producer, &data.app_metadata)?;
                let Some(schema) = self.schema.clone() else {
                    return Err(Status::invalid_argument(format!(
                        "DoPut for dataset {dataset:?} sent a record batch before its schema"
                    )));
                };
                let bytes = data.data_header.len() + data.data_body.len();
                let permit = self.admission.admit(bytes).await;
                let metrics = self.engine.metrics().clone();
                let decoding = Instant::now();
                let (batch, ipc) = decode_batch(&data, &message, schema).map_err(bad)?;
                // IMPORTANT: from here on nothing of this stream's tonic
                // buffer is kept when the body was copied, so tonic reuses
                // its memory for the next message on this thread instead of
                // faulting in fresh pages (17 % of CPU under a memory limit).
                drop(data);
                metrics.stage(Stage::Decode).observe(decoding.elapsed().as_secs_f64());
                let rows = batch.num_rows();
                let queued = Instant::now();
                let seq = producer.as_ref().map(|p| p.seq);
                let ack = self.engine.append(dataset, batch, ipc, producer, &self.stream).await.map_err(|e| {
                    self.stream.fail();
                    into_status(e)
                })?;
                Ok(Some(Box::pin(async move {
                    let result = ack.await;
                    drop(permit);
                    if let Ok(c) = &result {
                        metrics.stage(Stage::Ack).observe(c.durable_at.elapsed().as_secs_f64());
                    }
                    metrics.put_ack_seconds.observe(queued.elapsed().as_secs_f64());
                    (rows, result.map(|c| (c, seq)))
                })))
            }
            MessageHeader::DictionaryBatch => Err(Status::invalid_argument(format!(
                "DoPut for dataset {dataset:?}: dictionary batches are not supported; cast dictionary columns to their value type"
            ))),
            other => Err(bad(format!("unexpected IPC message {:?}", other.variant_name()))),
        }
    }
}

/// Decodes a record batch message, copying its body once into aligned
/// memory: the transport leaves it at an arbitrary offset in its own buffer
/// (the gRPC and protobuf framing), which then holds nothing of the batch.
/// A large body goes into block-aligned, zero-padded memory that the WAL
/// writes as it is (frame version 3, no copy into the commit buffer); a
/// small one, if misaligned, into memory aligned for the columns. The
/// columns are sliced from that one copy, and the returned IPC message (what
/// the WAL logs) is that copy too.
fn decode_batch(
    data: &FlightData,
    message: &arrow::ipc::Message<'_>,
    schema: SchemaRef,
) -> Result<(arrow::array::RecordBatch, IpcMessage), String> {
    let fb = message.header_as_record_batch().ok_or("unreadable IPC record batch header")?;
    let declared = usize::try_from(message.bodyLength()).map_err(|_| "negative IPC body length")?;
    if declared > data.data_body.len() {
        return Err(format!(
            "the IPC header declares a {declared}-byte body, the message carries {}",
            data.data_body.len()
        ));
    }
    let header = bytes::Bytes::copy_from_slice(&data.data_header);
    let ipc = if data.data_body.len() >= ALIGNED_BODY_BYTES_MIN {
        IpcMessage::with_aligned_body(header, &data.data_body)
    } else if data.data_body.as_ptr().align_offset(64) != 0 {
        let body = Buffer::from_slice_ref(&data.data_body);
        IpcMessage::new(header, bytes::Bytes::from_owner(OwnedBuffer(body)))
    } else {
        IpcMessage::new(data.data_header.clone(), data.data_body.clone())
    };
    let body = Buffer::from(ipc.body.clone());
    let batch =
        longbow_engine::wal::ipc::read_batch(&body, fb, schema, message.version()).map_err(|e| e.to_string())?;
    Ok((batch, ipc))
}

/// An arrow buffer as the owner of `bytes::Bytes` (arrow 59's `Buffer` has
/// no `AsRef<[u8]>`), so the aligned copy is shared, not copied again.
struct OwnedBuffer(Buffer);

impl AsRef<[u8]> for OwnedBuffer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Sends the acknowledgements in stream order. The first failure ends the
/// stream: the error names how many queued batches were not stored.
async fn write_acks(mut steps: mpsc::Receiver<Step>, out: Out, stream: PutStream, ack_timeout: Duration) {
    while let Some(step) = steps.recv().await {
        let reply = match step {
            Step::Fail(status) => Err(status),
            Step::Ack(ack) => {
                tokio::select! {
                    (rows, result) = ack => result.map(|(c, seq)| put_result(rows, c, seq)).map_err(into_status),
                    _ = tokio::time::sleep(ack_timeout) => Err(Status::unavailable(format!(
                        "no acknowledgement within {ack_timeout:?}: the batch was held back (memory limit, slow \
                         disk); it may still be stored if its commit was already being written; retry with a \
                         producer id to be safe"
                    ))),
                    _ = out.closed() => {
                        // The client went away: what it was not told about is not stored.
                        stream.fail();
                        return;
                    }
                }
            }
        };
        let failed = reply.is_err();
        let reply = reply.map_err(|status| {
            stream.fail();
            let queued = steps.len();
            if queued == 0 {
                return status;
            }
            Status::with_details(
                status.code(),
                format!("{}; the {queued} batches received after it were not stored either", status.message()),
                status.details().to_vec().into(),
            )
        });
        if out.send((reply, Instant::now())).is_err() || failed {
            stream.fail();
            return;
        }
    }
}

fn put_result(rows: usize, c: Committed, seq: Option<u64>) -> PutResult {
    let mut body = serde_json::json!({ "rows": rows, "lsn": c.lsn });
    if let Some(seq) = seq {
        body["seq"] = seq.into();
    }
    if c.duplicate {
        body["duplicate"] = true.into();
    }
    PutResult { app_metadata: serde_json::to_vec(&body).expect("json").into() }
}

/// The idempotent-producer fields a DoPut may carry.
#[derive(Debug, Default, serde::Deserialize)]
struct ProducerFields {
    dataset: Option<String>,
    producer: Option<String>,
    seq: Option<u64>,
}

/// A producer named once for a whole stream, and its next sequence number.
type NamedProducer = (Arc<str>, u64);

/// The dataset a DoPut writes, from a PATH descriptor `[name]`, or a CMD
/// descriptor `{"dataset": name, "producer": id, "seq": first}`.
fn open_descriptor(d: Option<&arrow_flight::FlightDescriptor>) -> Result<(String, Option<NamedProducer>), Status> {
    use arrow_flight::flight_descriptor::DescriptorType;
    let Some(d) = d.filter(|d| d.r#type == DescriptorType::Cmd as i32) else {
        return Ok((dataset_from_descriptor(d)?, None));
    };
    let f: ProducerFields = serde_json::from_slice(&d.cmd).map_err(|e| {
        Status::invalid_argument(format!(
            "a CMD descriptor for DoPut must be JSON {{\"dataset\": name, \"producer\": id, \"seq\": first}}: {e}"
        ))
    })?;
    let dataset = f.dataset.ok_or_else(|| Status::invalid_argument("the CMD descriptor names no \"dataset\""))?;
    let producer = match f.producer {
        Some(p) => Some((checked_producer(p)?, f.seq.unwrap_or(0))),
        None => None,
    };
    Ok((dataset, producer))
}

fn checked_producer(id: String) -> Result<Arc<str>, Status> {
    if id.is_empty() || id.len() > longbow_engine::limits::PRODUCER_ID_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "a producer id must be 1 to {} bytes",
            longbow_engine::limits::PRODUCER_ID_BYTES_MAX
        )));
    }
    Ok(id.into())
}

/// The producer and sequence number of a batch: from its app_metadata
/// (a JSON object with "seq", and "producer" unless the descriptor named
/// one), else the descriptor's producer's next number. Other
/// app_metadata is the client's own and ignored.
fn producer_of(named: &mut Option<NamedProducer>, app_metadata: &[u8]) -> Result<Option<ProducerSeq>, Status> {
    let fields = (!app_metadata.is_empty() && app_metadata[0] == b'{')
        .then(|| serde_json::from_slice::<ProducerFields>(app_metadata).ok())
        .flatten()
        .filter(|f| f.producer.is_some() || f.seq.is_some());
    let (id, seq) = match (fields, &*named) {
        (Some(f), named) => {
            let id = match (f.producer, named) {
                (Some(p), _) => checked_producer(p)?,
                (None, Some((id, _))) => id.clone(),
                (None, None) => {
                    return Err(Status::invalid_argument(
                        "a batch's app_metadata gives a \"seq\" but no \"producer\", and the descriptor names none",
                    ))
                }
            };
            let seq = f.seq.ok_or_else(|| {
                Status::invalid_argument("a batch's app_metadata names a \"producer\" but gives no \"seq\"")
            })?;
            (id, seq)
        }
        (None, Some((id, next))) => (id.clone(), *next),
        (None, None) => return Ok(None),
    };
    if let Some((named_id, next)) = named {
        if *named_id == id {
            *next = seq + 1;
        }
    }
    Ok(Some(ProducerSeq { id, seq }))
}
