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
    /// Scan a dataset with DoGet from N concurrent streams, `repeat` times each.
    Get(GetArgs),
    /// Start a server, write N MiB of WAL, kill -9 it, and time the restart
    /// until it answers again.
    Recovery(RecoveryArgs),
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
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Parser, Clone)]
struct GetArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    addr: String,
    #[arg(long, default_value = "bench")]
    dataset: String,
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Full scans per stream.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Parser, Clone)]
struct RecoveryArgs {
    /// The `longbow` binary to start.
    #[arg(long, default_value = "target/release/longbow")]
    server_bin: std::path::PathBuf,
    /// Working directory (data and snapshots go under it; emptied first).
    #[arg(long, default_value = "target/bench/recovery")]
    dir: std::path::PathBuf,
    /// MiB of vector batches to write before the kill.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args, Clone)]
struct OutputArgs {
    /// `human` (summary line) or `json` (one fio-like document per run).
    #[arg(long, value_enum, default_value = "human")]
    output_format: OutputFormat,
    /// Job name in the report.
    #[arg(long, default_value = "job")]
    name: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Human,
    Json,
}

/// One job's result, printed as a human line or a fio-like JSON document.
struct Report {
    workload: &'static str,
    options: serde_json::Value,
    rows: u64,
    bytes: u64,
    seconds: f64,
    /// Microseconds (acknowledgement latency for put, whole-scan time for get).
    hist: Option<Histogram<u64>>,
    extra: serde_json::Value,
}

impl Report {
    fn print(&self, out: &OutputArgs) {
        let bw = self.bytes as f64 / self.seconds / (1 << 20) as f64;
        let rps = self.rows as f64 / self.seconds;
        match out.output_format {
            OutputFormat::Human => {
                let mut line = format!(
                    "{} [{}]: {} rows in {:.2}s = {rps:.0} rows/s, {bw:.1} MiB/s",
                    out.name, self.workload, self.rows, self.seconds
                );
                if let Some(h) = &self.hist {
                    line += &format!(
                        "; latency us min {} p50 {} p95 {} p99 {} p99.9 {} max {}",
                        h.min(),
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.95),
                        h.value_at_quantile(0.99),
                        h.value_at_quantile(0.999),
                        h.max()
                    );
                }
                if !self.extra.is_null() {
                    line += &format!(" {}", self.extra);
                }
                println!("{line}");
            }
            OutputFormat::Json => {
                let lat = self.hist.as_ref().map(|h| {
                    serde_json::json!({
                        "min": h.min(), "p50": h.value_at_quantile(0.5), "p95": h.value_at_quantile(0.95),
                        "p99": h.value_at_quantile(0.99), "p99.9": h.value_at_quantile(0.999), "max": h.max(),
                        "mean": h.mean(), "samples": h.len(),
                    })
                });
                let doc = serde_json::json!({
                    "longbow-bench version": env!("CARGO_PKG_VERSION"),
                    "jobs": [{
                        "jobname": out.name, "workload": self.workload, "options": self.options,
                        "rows": self.rows, "io_bytes": self.bytes, "runtime_s": self.seconds,
                        "bw_mib_s": bw, "rows_per_s": rps, "lat_us": lat, "extra": self.extra,
                    }],
                });
                println!("{doc}");
            }
        }
    }
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
    Report {
        workload: "put",
        options: serde_json::json!({
            "addr": args.addr, "streams": args.streams, "rows_per_batch": args.rows_per_batch, "dim": args.dim,
            "window": args.window, "dataset": args.dataset, "dataset_per_stream": args.dataset_per_stream,
        }),
        rows,
        bytes,
        seconds: secs,
        hist: Some(hist),
        extra: serde_json::Value::Null,
    }
    .print(&args.out);
    Ok(())
}

async fn connect(addr: &str) -> anyhow::Result<FlightServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX))
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|_| {
            let args = args.clone();
            tokio::spawn(async move {
                let mut client = connect(&args.addr).await?;
                let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
                let (mut rows, mut bytes) = (0u64, 0u64);
                for _ in 0..args.repeat {
                    let t0 = Instant::now();
                    let ticket = arrow_flight::Ticket { ticket: args.dataset.clone().into() };
                    let stream = client.do_get(ticket).await?.into_inner();
                    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                        stream.map(|r| r.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)))),
                    );
                    while let Some(b) = batches.next().await {
                        let b = b?;
                        rows += b.num_rows() as u64;
                        bytes += b.get_array_memory_size() as u64;
                    }
                    hist.saturating_record(t0.elapsed().as_micros() as u64);
                }
                Ok::<_, anyhow::Error>((rows, bytes, hist))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut rows, mut bytes) = (0, 0);
    for t in tasks {
        let (r, b, h) = t.await??;
        rows += r;
        bytes += b;
        hist.add(h)?;
    }
    Report {
        workload: "get",
        options: serde_json::json!({ "addr": args.addr, "dataset": args.dataset, "streams": args.streams, "repeat": args.repeat }),
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        hist: Some(hist),
        extra: serde_json::Value::Null,
    }
    .print(&args.out);
    Ok(())
}

/// Starts `longbow` on `dir` and returns it with its Flight address once it
/// prints its ready line.
fn start_server(args: &RecoveryArgs) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(&args.server_bin)
        .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--shards", &args.shards.to_string()])
        .arg("--data-path")
        .arg(args.dir.join("data"))
        .arg("--snapshot-path")
        .arg(args.dir.join("snapshots"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.server_bin.display()))?;
    let stdout = child.stdout.take().expect("stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("longbow ready flight=") {
            let addr = addr.split_whitespace().next().unwrap_or_default().to_owned();
            return Ok((child, format!("http://{addr}")));
        }
    }
    bail!("{} exited before it was ready", args.server_bin.display())
}

async fn recovery(args: RecoveryArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let (mut child, addr) = start_server(&args)?;
    let batch = vector_batch(1000, 128);
    let rows_total = args.mib * (1 << 20) / batch.get_array_memory_size() as u64 * 1000;
    let put_args = PutArgs {
        addr: addr.clone(),
        streams: args.shards.max(1) * 2,
        rows_per_batch: 1000,
        dim: 128,
        duration: 0.0,
        total_rows: Some(rows_total),
        dataset: "recovery".into(),
        dataset_per_stream: true,
        window: 64,
        out: OutputArgs { output_format: OutputFormat::Human, name: "fill".into() },
    };
    put(put_args).await?;
    child.kill()?;
    child.wait()?;
    let wal_bytes: u64 = walk_bytes(&args.dir.join("data"));
    let t0 = Instant::now();
    let (mut child, addr) = start_server(&args)?;
    let ready = t0.elapsed().as_secs_f64();
    let mut client = connect(&addr).await?;
    let infos: Vec<_> = client.list_flights(arrow_flight::Criteria::default()).await?.into_inner().collect().await;
    let answered = t0.elapsed().as_secs_f64();
    let rows: u64 = infos.into_iter().filter_map(|i| i.ok()).map(|i| i.total_records as u64).sum();
    let _ = child.kill();
    let _ = child.wait();
    Report {
        workload: "recovery",
        options: serde_json::json!({ "mib": args.mib, "shards": args.shards }),
        rows,
        bytes: wal_bytes,
        seconds: answered,
        hist: None,
        extra: serde_json::json!({ "restart_to_ready_s": ready, "restart_to_first_answer_s": answered, "wal_bytes": wal_bytes }),
    }
    .print(&args.out);
    Ok(())
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
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
            Command::Get(args) => get(args).await,
            Command::Recovery(args) => recovery(args).await,
            Command::NullServer { listen } => null_server(listen).await,
        }
    })
}
