//! Load generator and reference sink for Longbow.
//!
//! - `longbow-bench put`: N concurrent DoPut streams of
//!   `id int32, vector fixed_size_list<float32>[dim]` batches; a progress line
//!   per second and a summary (rows/s, MiB/s, ack latency percentiles).
//! - `longbow-bench null-server`: a Flight server that decodes and discards
//!   batches but answers like Longbow (one PutResult per batch): the protocol
//!   ceiling to report ingest against, measured in the same run.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow::array::{FixedSizeListArray, Float32Array, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use clap::{Parser, Subcommand};
use futures::stream::BoxStream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status, Streaming};

/// HTTP/2 flow-control window, as Longbow's gateway uses.
const WINDOW: u32 = 16 << 20;

#[derive(Parser)]
#[command(name = "longbow-bench", about = "Load generator and reference sink for Longbow")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream vector batches into a Flight server with DoPut.
    Put(PutArgs),
    /// A Flight server that decodes and discards DoPut batches.
    NullServer {
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
}

#[derive(Parser, Clone)]
struct PutArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    addr: String,
    /// Concurrent DoPut streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    #[arg(long, default_value_t = 1000)]
    rows_per_batch: usize,
    #[arg(long, default_value_t = 128)]
    dim: i32,
    /// Seconds to run (ignored when --total-rows is given).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many rows in all.
    #[arg(long)]
    total_rows: Option<u64>,
    /// Dataset name; with --dataset-per-stream, stream i writes `<name>-<i>`.
    #[arg(long, default_value = "bench")]
    dataset: String,
    #[arg(long)]
    dataset_per_stream: bool,
    /// Batches a stream may have sent but not yet had acknowledged. 1 sends
    /// each batch only after the previous one is acknowledged.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Print the summary as one JSON line too.
    #[arg(long)]
    json: bool,
}

fn vector_batch(rows: usize, dim: i32) -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("vector", DataType::FixedSizeList(item.clone(), dim), false),
    ]));
    let ids = Int32Array::from_iter_values(0..rows as i32);
    let values = Float32Array::from_iter_values((0..rows * dim as usize).map(|i| (i % 977) as f32 * 0.25));
    let vectors = FixedSizeListArray::try_new(item, dim, Arc::new(values), None).expect("vectors");
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(vectors)]).expect("batch")
}

#[derive(Default)]
struct Totals {
    rows: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
}

async fn put_stream(
    args: PutArgs,
    index: usize,
    messages: Arc<(FlightData, FlightData)>,
    totals: Arc<Totals>,
    deadline: Option<Instant>,
    rows_budget: Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())?
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut client =
        FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX);
    let dataset = if args.dataset_per_stream { format!("{}-{index}", args.dataset) } else { args.dataset.clone() };
    let (schema_msg, batch_msg) = (&messages.0, &messages.1);
    let first = schema_msg.clone().with_descriptor(FlightDescriptor::new_path(vec![dataset]));
    let (tx, rx) = mpsc::channel::<FlightData>(args.window.max(1));
    tx.send(first).await?;
    let batch_bytes = (batch_msg.data_header.len() + batch_msg.data_body.len()) as u64;
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let window = Arc::new(Semaphore::new(args.window.max(1)));

    let responses = client.do_put(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let acker = {
        let (sent_at, window, totals) = (sent_at.clone(), window.clone(), totals.clone());
        let rows = args.rows_per_batch as u64;
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut responses = responses;
            while let Some(r) = responses.next().await {
                let _: PutResult = r?;
                let t0 = sent_at.lock().expect("lock").pop_front().expect("an ack matches a sent batch");
                hist.saturating_record(t0.elapsed().as_micros() as u64);
                totals.rows.fetch_add(rows, Ordering::Relaxed);
                totals.batches.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(batch_bytes, Ordering::Relaxed);
                window.add_permits(1);
            }
            Ok::<_, Status>(hist)
        })
    };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let take = args.rows_per_batch as u64;
        if rows_budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(take)).is_err() {
            break;
        }
        window.acquire().await?.forget();
        sent_at.lock().expect("lock").push_back(Instant::now());
        if tx.send(batch_msg.clone()).await.is_err() {
            break;
        }
    }
    drop(tx);
    let hist = acker.await?.map_err(|s| anyhow::anyhow!("DoPut failed: {} {}", s.code(), s.message()))?;
    Ok(hist)
}

async fn put(args: PutArgs) -> anyhow::Result<()> {
    let batch = vector_batch(args.rows_per_batch, args.dim);
    let mut encoded = arrow_flight::utils::batches_to_flight_data(&batch.schema(), [&batch])?;
    if encoded.len() != 2 {
        bail!("expected a schema and one batch message, got {}", encoded.len());
    }
    let batch_msg = encoded.pop().expect("batch");
    let schema_msg = encoded.pop().expect("schema");
    let batch_mib = (batch_msg.data_header.len() + batch_msg.data_body.len()) as f64 / (1 << 20) as f64;
    eprintln!(
        "put: {} streams x {} rows/batch ({batch_mib:.3} MiB/batch), window {}, dim {}",
        args.streams, args.rows_per_batch, args.window, args.dim
    );
    let messages = Arc::new((schema_msg, batch_msg));
    let totals = Arc::new(Totals::default());
    let deadline = args.total_rows.is_none().then(|| Instant::now() + Duration::from_secs_f64(args.duration));
    let budget = Arc::new(AtomicU64::new(args.total_rows.unwrap_or(u64::MAX)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|i| tokio::spawn(put_stream(args.clone(), i, messages.clone(), totals.clone(), deadline, budget.clone())))
        .collect();
    let progress = {
        let totals = totals.clone();
        tokio::spawn(async move {
            let mut last = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (totals.rows.load(Ordering::Relaxed), totals.bytes.load(Ordering::Relaxed));
                eprintln!(
                    "[{:>5.1}s] {:>10} rows/s {:>9.1} MiB/s  ({} rows acked)",
                    started.elapsed().as_secs_f64(),
                    now.0 - last.0,
                    (now.1 - last.1) as f64 / (1 << 20) as f64,
                    now.0
                );
                last = now;
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let rows = totals.rows.load(Ordering::Relaxed);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let q = |p: f64| hist.value_at_quantile(p);
    println!(
        "summary: {rows} rows in {secs:.2}s = {:.0} rows/s, {:.1} MiB/s; ack latency us p50 {} p95 {} p99 {} p99.9 {} max {}",
        rows as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64,
        q(0.5),
        q(0.95),
        q(0.99),
        q(0.999),
        hist.max()
    );
    if args.json {
        let j = serde_json::json!({
            "rows": rows, "seconds": secs, "rows_per_s": rows as f64 / secs,
            "mib_per_s": bytes as f64 / secs / (1 << 20) as f64,
            "p50_us": q(0.5), "p95_us": q(0.95), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": hist.max(),
            "streams": args.streams, "rows_per_batch": args.rows_per_batch, "window": args.window,
        });
        println!("{j}");
    }
    Ok(())
}

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

async fn null_server(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("null-server ready flight={}", listener.local_addr()?);
    let svc = FlightServiceServer::new(NullSink).max_decoding_message_size(usize::MAX);
    // The same transport settings as Longbow's gateway.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Put(args) => put(args).await,
            Command::NullServer { listen } => null_server(listen).await,
        }
    })
}
