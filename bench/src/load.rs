//! The client side of the load: pre-encoded vector batches, DoPut streams
//! (windowed, optionally paced) and DoGet scans, each recording into a
//! [`Meter`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow::array::{FixedSizeListArray, Float32Array, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};

use crate::meter::Meter;
use crate::server::{connect, Client};

/// Distinct batches cycled through, so that snapshot compression sees
/// realistic (random) data rather than one batch repeated.
const POOL_BATCHES_MAX: usize = 16;
/// Memory the pool may take; large batches get fewer distinct copies.
const POOL_BYTES_MAX: usize = 64 << 20;

/// `id int32, vector fixed_size_list<float32>[dim]`, random floats.
pub fn vector_batch(rows: usize, dim: i32, first_id: i32) -> anyhow::Result<RecordBatch> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("vector", DataType::FixedSizeList(item.clone(), dim), false),
    ]));
    let mut rng = rand::rng();
    let ids = Int32Array::from_iter_values((0..rows as i32).map(|i| first_id.wrapping_add(i)));
    let values = Float32Array::from_iter_values((0..rows * dim as usize).map(|_| rng.random::<f32>()));
    let vectors = FixedSizeListArray::try_new(item, dim, Arc::new(values), None)?;
    Ok(RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(vectors)])?)
}

fn encode(batch: &RecordBatch) -> anyhow::Result<(FlightData, FlightData)> {
    let mut encoded = arrow_flight::utils::batches_to_flight_data(&batch.schema(), vec![batch.clone()])?;
    if encoded.len() != 2 {
        bail!("expected a schema and one batch message, got {}", encoded.len());
    }
    let data = encoded.pop().expect("two messages");
    let schema = encoded.pop().expect("two messages");
    Ok((schema, data))
}

pub fn message_bytes(m: &FlightData) -> u64 {
    (m.data_header.len() + m.data_body.len()) as u64
}

/// Batches encoded once, before the clock starts.
pub struct BatchPool {
    schema: FlightData,
    batches: Vec<FlightData>,
    pub rows_per_batch: usize,
    pub dim: i32,
}

impl BatchPool {
    pub fn new(rows_per_batch: usize, dim: i32) -> anyhow::Result<Arc<Self>> {
        if rows_per_batch == 0 || dim <= 0 {
            bail!("--rows-per-batch and --dim must be positive");
        }
        let (schema, first) = encode(&vector_batch(rows_per_batch, dim, 0)?)?;
        let n = (POOL_BYTES_MAX / message_bytes(&first).max(1) as usize).clamp(1, POOL_BATCHES_MAX);
        let mut batches = vec![first];
        for i in 1..n {
            batches.push(encode(&vector_batch(rows_per_batch, dim, (i * rows_per_batch) as i32)?)?.1);
        }
        Ok(Arc::new(Self { schema, batches, rows_per_batch, dim }))
    }

    pub fn batch_bytes(&self) -> u64 {
        message_bytes(&self.batches[0])
    }

    /// A batch of fewer rows (the last one of a `--total-rows` run).
    fn short(&self, rows: usize) -> anyhow::Result<FlightData> {
        Ok(encode(&vector_batch(rows, self.dim, 0)?)?.1)
    }
}

/// How a set of DoPut streams runs.
#[derive(Clone, Debug)]
pub struct PutPlan {
    pub streams: usize,
    /// Batches a stream may have sent but not had acknowledged yet.
    pub window: usize,
    pub dataset: String,
    pub dataset_per_stream: bool,
    /// Stop sending at this instant …
    pub deadline: Option<Instant>,
    /// … or after this many rows in all (the last batch may be shorter).
    pub rows_total: Option<u64>,
    /// Pace each stream to this many batches per second.
    pub batches_per_s_per_stream: Option<f64>,
}

impl PutPlan {
    pub fn dataset_of(&self, stream: usize) -> String {
        if self.dataset_per_stream {
            format!("{}-{stream}", self.dataset)
        } else {
            self.dataset.clone()
        }
    }
}

/// Runs the plan's streams to the end; every acknowledged batch goes into
/// `meter` (rows, IPC bytes, latency from send, or from when it was due when paced).
pub async fn run_puts(addr: &str, pool: &Arc<BatchPool>, plan: &PutPlan, meter: &Arc<Meter>) -> anyhow::Result<()> {
    let budget = Arc::new(AtomicU64::new(plan.rows_total.unwrap_or(u64::MAX)));
    let tasks: Vec<_> = (0..plan.streams.max(1))
        .map(|i| {
            let (addr, pool, plan, meter, budget) =
                (addr.to_owned(), pool.clone(), plan.clone(), meter.clone(), budget.clone());
            tokio::spawn(async move { put_stream(&addr, i, &pool, &plan, &meter, &budget).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        t.await?.with_context(|| format!("put stream {i}"))?;
    }
    Ok(())
}

async fn put_stream(
    addr: &str,
    index: usize,
    pool: &BatchPool,
    plan: &PutPlan,
    meter: &Arc<Meter>,
    budget: &AtomicU64,
) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    let window = plan.window.max(1);
    let (tx, rx) = mpsc::channel::<FlightData>(window);
    tx.send(pool.schema.clone().with_descriptor(FlightDescriptor::new_path(vec![plan.dataset_of(index)]))).await?;
    // (due or sent, rows, bytes) of each batch not yet acknowledged, in order.
    let in_flight: Arc<Mutex<VecDeque<(Instant, u64, u64)>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(window));
    let responses = client.do_put(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let acker = {
        let (in_flight, permits, meter) = (in_flight.clone(), permits.clone(), meter.clone());
        tokio::spawn(async move {
            let mut responses = responses;
            let result = async {
                while let Some(r) = responses.next().await {
                    let _: PutResult = r?;
                    let (t0, rows, bytes) =
                        in_flight.lock().expect("lock").pop_front().expect("an ack matches a sent batch");
                    meter.latency(t0.elapsed());
                    meter.add(rows, 1, bytes);
                    permits.add_permits(1);
                }
                Ok::<_, tonic::Status>(())
            }
            .await;
            // IMPORTANT: wakes a sender waiting for a permit when the stream ended early.
            permits.close();
            result
        })
    };
    let period = plan.batches_per_s_per_stream.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-9)));
    let started = Instant::now();
    let rows_per_batch = pool.rows_per_batch as u64;
    for k in 0u64.. {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let Ok(left) = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            (left > 0).then(|| left - left.min(rows_per_batch))
        }) else {
            break;
        };
        let rows = left.min(rows_per_batch);
        let msg = if rows == rows_per_batch {
            pool.batches[(k as usize + index) % pool.batches.len()].clone()
        } else {
            pool.short(rows as usize)?
        };
        let due = period.map(|p| started + p.mul_f64(k as f64));
        if let Some(due) = due {
            if plan.deadline.is_some_and(|d| due >= d) {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = permits.acquire().await else { break };
        permit.forget();
        let bytes = message_bytes(&msg);
        in_flight.lock().expect("lock").push_back((due.unwrap_or_else(Instant::now), rows, bytes));
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    drop(tx);
    acker.await?.map_err(|s| anyhow::anyhow!("DoPut to {addr} failed: {} {}", s.code(), s.message()))
}

/// Sends `rows_total` rows with 2 streams as fast as acknowledgements allow,
/// unmeasured: data for a read workload to scan.
pub async fn fill(addr: &str, pool: &Arc<BatchPool>, plan: &PutPlan, rows_total: u64) -> anyhow::Result<()> {
    if rows_total == 0 {
        return Ok(());
    }
    let plan = PutPlan {
        window: 64,
        deadline: None,
        rows_total: Some(rows_total),
        batches_per_s_per_stream: None,
        ..plan.clone()
    };
    run_puts(addr, pool, &plan, &Meter::new("fill")).await.context("filling the dataset before the job")
}

/// One full DoGet scan of `dataset`; rows and IPC bytes go into `meter` as
/// they arrive, the scan's duration as its latency. `Ok(false)`: no such
/// dataset (yet).
pub async fn scan(client: &mut Client, dataset: &str, meter: &Arc<Meter>) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let ticket = arrow_flight::Ticket { ticket: dataset.to_owned().into() };
    let stream = match client.do_get(ticket).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
        Err(s) => bail!("DoGet {dataset}: {} {}", s.code(), s.message()),
    };
    let counted = {
        let meter = meter.clone();
        stream.map(move |r| {
            if let Ok(m) = &r {
                meter.add(0, 0, message_bytes(m));
            }
            r.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)))
        })
    };
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(counted);
    while let Some(b) = batches.next().await {
        match b {
            Ok(b) => meter.add(b.num_rows() as u64, 1, 0),
            Err(arrow_flight::error::FlightError::Tonic(s)) if s.code() == tonic::Code::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("DoGet {dataset}")),
        }
    }
    meter.latency(t0.elapsed());
    Ok(true)
}

/// Scans `dataset` again and again until `stop` is set (a scan under way is
/// finished and counted). A dataset that does not exist yet is retried.
pub async fn scan_until(addr: &str, dataset: &str, meter: &Arc<Meter>, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    while !stop.load(Ordering::Relaxed) {
        if !scan(&mut client, dataset, meter).await? {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// DoPut of `rows`-row batches one at a time (the next is sent when the
/// previous one is acknowledged) until `phase` says stop; each latency goes
/// to `meters[phase]`.
pub async fn one_at_a_time(
    addr: &str,
    dataset: &str,
    rows: usize,
    dim: i32,
    meters: &[Arc<Meter>],
    phase: &AtomicU64,
) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    let (schema, batch) = encode(&vector_batch(rows, dim, 0)?)?;
    let bytes = message_bytes(&batch);
    let (tx, rx) = mpsc::channel::<FlightData>(1);
    tx.send(schema.with_descriptor(FlightDescriptor::new_path(vec![dataset.to_owned()]))).await?;
    let mut responses = client.do_put(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    loop {
        let p = phase.load(Ordering::Relaxed) as usize;
        let Some(meter) = meters.get(p) else { break };
        let t0 = Instant::now();
        tx.send(batch.clone()).await?;
        match responses.next().await {
            Some(Ok(_)) => {
                meter.latency(t0.elapsed());
                meter.add(rows as u64, 1, bytes);
            }
            Some(Err(s)) => bail!("DoPut {dataset}: {} {}", s.code(), s.message()),
            None => bail!("DoPut {dataset}: the server ended the stream"),
        }
    }
    drop(tx);
    while let Some(r) = responses.next().await {
        r?;
    }
    Ok(())
}
