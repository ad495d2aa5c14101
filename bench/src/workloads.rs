//! The workloads (`put`, `get`, `mixed`, `snapshot`, `recovery`): their
//! options, and how each runs against a [`Server`] and fills a [`JobReport`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;

use crate::load::{fill, one_at_a_time, run_puts, scan, scan_until, BatchPool, PutPlan};
use crate::meter::{Meter, Progress, MIB};
use crate::report::{JobReport, RecoveryFigures, SnapshotFigures};
use crate::server::{Server, ServerArgs};

/// Names a job file's `workload=` key accepts.
pub const WORKLOADS: [&str; 5] = ["put", "get", "mixed", "snapshot", "recovery"];

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Workload {
    /// Stream vector batches into a dataset with DoPut from N concurrent
    /// streams; ack latency per batch.
    Put(PutArgs),
    /// Scan a dataset with DoGet from N concurrent streams, `--repeat` times
    /// each; latency = one whole scan.
    Get(GetArgs),
    /// `put` load while `--readers` streams DoGet-scan the same dataset(s)
    /// over and over; put and get figures.
    Mixed(MixedArgs),
    /// Ingest `--mib` MiB, then time DoAction force_snapshot end to end while
    /// a side stream puts small batches one at a time: side ack latency
    /// before vs during the snapshot.
    Snapshot(SnapshotArgs),
    /// Start a server, fill `--mib` MiB of WAL, kill -9 it, and time the
    /// restart until it answers ListFlights (always spawns the server).
    Recovery(RecoveryArgs),
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct JobArgs {
    /// Job name in reports [default: the workload's name; in a job file, the section's].
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(clap::Args, Clone, Debug, Serialize)]
#[command(next_help_heading = "Load")]
pub struct LoadArgs {
    /// Concurrent DoPut streams (one HTTP/2 connection each).
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Rows in each batch.
    #[arg(long, default_value_t = 1000)]
    pub rows_per_batch: usize,
    /// Vector dimension (float32 values per row).
    #[arg(long, default_value_t = 128)]
    pub dim: i32,
    /// Seconds to run; ignored when --total-rows is given.
    #[arg(long, visible_alias = "runtime", value_name = "SECONDS", default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after exactly this many rows in all (the last batch may be shorter).
    #[arg(long)]
    pub total_rows: Option<u64>,
    /// Pace all streams together to this many rows/s (open loop, like wrk2:
    /// latency counts from when a batch was due, so falling behind shows).
    #[arg(long, value_name = "ROWS_PER_S", conflicts_with = "rate_batches")]
    pub rate_rows: Option<f64>,
    /// Pace all streams together to this many batches/s.
    #[arg(long, value_name = "BATCHES_PER_S")]
    pub rate_batches: Option<f64>,
    /// Dataset name; with --dataset-per-stream, stream i writes `<name>-<i>`.
    #[arg(long, default_value = "bench")]
    pub dataset: String,
    /// One dataset per stream (`--dataset-per-stream` or `=true`/`=false`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dataset_per_stream: bool,
    /// Batches a stream may have sent but not yet had acknowledged; 1 sends
    /// each batch only after the previous one is acknowledged.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

impl LoadArgs {
    /// The plan, with the deadline counted from now.
    fn plan(&self) -> anyhow::Result<PutPlan> {
        if self.streams == 0 {
            bail!("--streams must be at least 1");
        }
        let batches_per_s = match (self.rate_rows, self.rate_batches) {
            (Some(r), _) => Some(r / self.rows_per_batch as f64),
            (_, Some(b)) => Some(b),
            _ => None,
        };
        if batches_per_s.is_some_and(|r| r.is_nan() || r <= 0.0) {
            bail!("a rate must be positive");
        }
        Ok(PutPlan {
            streams: self.streams,
            window: self.window,
            dataset: self.dataset.clone(),
            dataset_per_stream: self.dataset_per_stream,
            deadline: self.total_rows.is_none().then(|| Instant::now() + Duration::from_secs_f64(self.duration)),
            rows_total: self.total_rows,
            batches_per_s_per_stream: batches_per_s.map(|r| r / self.streams as f64),
        })
    }
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct PutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct GetArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    #[arg(long, default_value = "bench")]
    pub dataset: String,
    /// Concurrent DoGet streams.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Full scans per stream.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Rows to put into the dataset first (unmeasured; needed with --spawn-server).
    #[arg(long, default_value_t = 0)]
    pub fill_rows: u64,
    /// Rows per batch of the fill.
    #[arg(long, default_value_t = 1000)]
    pub rows_per_batch: usize,
    /// Vector dimension of the fill.
    #[arg(long, default_value_t = 128)]
    pub dim: i32,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct MixedArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
    /// DoGet streams scanning the put datasets over and over (reader i scans
    /// the dataset of put stream i mod --streams) while the puts run.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Rows to put before the clock starts, so readers have data at once.
    #[arg(long, default_value_t = 0)]
    pub fill_rows: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct SnapshotArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    /// MiB (Arrow IPC) to ingest into --dataset before the snapshot.
    #[arg(long, default_value_t = 256.0)]
    pub mib: f64,
    /// DoPut streams for the ingest.
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    #[arg(long, default_value_t = 1000)]
    pub rows_per_batch: usize,
    #[arg(long, default_value_t = 128)]
    pub dim: i32,
    /// The dataset snapshotted; the side stream writes `<dataset>-side`.
    #[arg(long, default_value = "snap")]
    pub dataset: String,
    /// Rows per side-stream batch (sent one at a time).
    #[arg(long, default_value_t = 10)]
    pub side_rows: usize,
    /// Seconds of side-stream acks measured before the snapshot starts.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub baseline: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct RecoveryArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    /// MiB (Arrow IPC) of vector batches to write before the kill.
    #[arg(long, default_value_t = 1024.0)]
    pub mib: f64,
    /// DoPut streams for the fill (each writes its own dataset).
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

impl Workload {
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Put(_) => "put",
            Workload::Get(_) => "get",
            Workload::Mixed(_) => "mixed",
            Workload::Snapshot(_) => "snapshot",
            Workload::Recovery(_) => "recovery",
        }
    }

    pub fn name(&self) -> String {
        let job = match self {
            Workload::Put(a) => &a.job,
            Workload::Get(a) => &a.job,
            Workload::Mixed(a) => &a.job,
            Workload::Snapshot(a) => &a.job,
            Workload::Recovery(a) => &a.job,
        };
        job.name.clone().unwrap_or_else(|| self.kind().to_owned())
    }

    fn server_args(&self) -> (&ServerArgs, bool) {
        match self {
            Workload::Put(a) => (&a.server, false),
            Workload::Get(a) => (&a.server, false),
            Workload::Mixed(a) => (&a.server, false),
            Workload::Snapshot(a) => (&a.server, false),
            Workload::Recovery(a) => (&a.server, true),
        }
    }

    fn options(&self) -> serde_json::Value {
        let v = match self {
            Workload::Put(a) => serde_json::to_value(a),
            Workload::Get(a) => serde_json::to_value(a),
            Workload::Mixed(a) => serde_json::to_value(a),
            Workload::Snapshot(a) => serde_json::to_value(a),
            Workload::Recovery(a) => serde_json::to_value(a),
        };
        v.expect("options serialize")
    }

    /// Opens (or starts) the server, runs the job, stops a spawned server.
    pub async fn run(&self) -> anyhow::Result<JobReport> {
        let (server_args, must_spawn) = self.server_args();
        let mut server = Server::open(server_args, must_spawn).await?;
        let name = self.name();
        let mut report = JobReport::new(name.clone(), self.kind(), self.options(), server.describe());
        let started = Instant::now();
        let result = match self {
            Workload::Put(a) => put(a, &server, &name, &mut report).await,
            Workload::Get(a) => get(a, &server, &name, &mut report).await,
            Workload::Mixed(a) => mixed(a, &server, &name, &mut report).await,
            Workload::Snapshot(a) => snapshot(a, &server, &name, &mut report).await,
            Workload::Recovery(a) => recovery(a, &mut server, &name, &mut report).await,
        };
        report.runtime_s = started.elapsed().as_secs_f64();
        if let Err(e) = result {
            let tail = server.log_tail();
            drop(server);
            return Err(if tail.is_empty() { e } else { e.context(format!("server stderr, last lines:\n{tail}")) });
        }
        server.stop().await?;
        Ok(report)
    }
}

fn announce(name: &str, pool: &BatchPool, plan: &PutPlan, server: &Server) {
    eprintln!(
        "{name}: {} streams x {} rows/batch (dim {}, {:.3} MiB/batch), window {}{} -> {}",
        plan.streams,
        pool.rows_per_batch,
        pool.dim,
        pool.batch_bytes() as f64 / MIB,
        plan.window,
        plan.batches_per_s_per_stream.map(|r| format!(", paced to {:.1} batches/s per stream", r)).unwrap_or_default(),
        server.addr()
    );
}

async fn put(a: &PutArgs, server: &Server, name: &str, report: &mut JobReport) -> anyhow::Result<()> {
    let pool = BatchPool::new(a.load.rows_per_batch, a.load.dim)?;
    let plan = a.load.plan()?;
    announce(name, &pool, &plan, server);
    let meter = Meter::new("put");
    let progress = Progress::start(name.to_owned(), vec![meter.clone()]);
    let t0 = Instant::now();
    run_puts(server.addr(), &pool, &plan, &meter).await?;
    drop(progress);
    report.write = Some(meter.stats(t0.elapsed()));
    Ok(())
}

async fn get(a: &GetArgs, server: &Server, name: &str, report: &mut JobReport) -> anyhow::Result<()> {
    if a.fill_rows > 0 {
        let pool = BatchPool::new(a.rows_per_batch, a.dim)?;
        let plan = PutPlan {
            streams: 2,
            window: 64,
            dataset: a.dataset.clone(),
            dataset_per_stream: false,
            deadline: None,
            rows_total: None,
            batches_per_s_per_stream: None,
        };
        fill(server.addr(), &pool, &plan, a.fill_rows).await?;
    }
    eprintln!("{name}: {} DoGet streams x {} scans of {} -> {}", a.streams, a.repeat, a.dataset, server.addr());
    let meter = Meter::new("get");
    let progress = Progress::start(name.to_owned(), vec![meter.clone()]);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..a.streams.max(1))
        .map(|_| {
            let (addr, dataset, meter, repeat) = (server.addr().to_owned(), a.dataset.clone(), meter.clone(), a.repeat);
            tokio::spawn(async move {
                let mut client = crate::server::connect(&addr).await?;
                for _ in 0..repeat {
                    if !scan(&mut client, &dataset, &meter).await? {
                        bail!("dataset {dataset:?} not found (put data first, or give --fill-rows)");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    drop(progress);
    report.read = Some(meter.stats(t0.elapsed()));
    Ok(())
}

async fn mixed(a: &MixedArgs, server: &Server, name: &str, report: &mut JobReport) -> anyhow::Result<()> {
    let pool = BatchPool::new(a.load.rows_per_batch, a.load.dim)?;
    fill(server.addr(), &pool, &a.load.plan()?, a.fill_rows).await?;
    let plan = a.load.plan()?;
    announce(name, &pool, &plan, server);
    eprintln!("{name}: {} DoGet readers scanning the same dataset(s) meanwhile", a.readers);
    let (put_meter, get_meter) = (Meter::new("put"), Meter::new("get"));
    let progress = Progress::start(name.to_owned(), vec![put_meter.clone(), get_meter.clone()]);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let readers: Vec<_> = (0..a.readers)
        .map(|r| {
            let (addr, dataset, meter, stop) =
                (server.addr().to_owned(), plan.dataset_of(r % plan.streams), get_meter.clone(), stop.clone());
            tokio::spawn(async move { scan_until(&addr, &dataset, &meter, &stop).await })
        })
        .collect();
    let puts = run_puts(server.addr(), &pool, &plan, &put_meter).await;
    let put_time = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for (i, r) in readers.into_iter().enumerate() {
        r.await?.with_context(|| format!("reader {i}"))?;
    }
    let get_time = t0.elapsed();
    puts?;
    drop(progress);
    report.write = Some(put_meter.stats(put_time));
    if a.readers > 0 {
        report.read = Some(get_meter.stats(get_time));
    }
    Ok(())
}

async fn snapshot(a: &SnapshotArgs, server: &Server, name: &str, report: &mut JobReport) -> anyhow::Result<()> {
    let pool = BatchPool::new(a.rows_per_batch, a.dim)?;
    let (_, ingested) =
        measured_fill(name, server, &pool, a.mib, a.streams, (a.dataset.clone(), false), "ingest").await?;
    report.write = Some(ingested.clone());

    let (before, during) = (Meter::new("side-before"), Meter::new("side-during"));
    let phase = Arc::new(AtomicU64::new(0));
    let side = {
        let (addr, dataset, meters, phase) = (
            server.addr().to_owned(),
            format!("{}-side", a.dataset),
            vec![before.clone(), during.clone()],
            phase.clone(),
        );
        let (rows, dim) = (a.side_rows, a.dim);
        tokio::spawn(async move { one_at_a_time(&addr, &dataset, rows, dim, &meters, &phase).await })
    };
    let progress = Progress::start(name.to_owned(), vec![before.clone(), during.clone()]);
    let baseline_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.baseline)).await;
    let baseline_time = baseline_t0.elapsed();
    eprintln!("{name}: force_snapshot {} ({:.1} MiB ingested)", a.dataset, ingested.io_bytes as f64 / MIB);
    phase.store(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let result = force_snapshot(server, &a.dataset).await;
    let snapshot_time = t0.elapsed();
    phase.store(2, Ordering::Relaxed);
    let side_result = side.await?;
    drop(progress);
    let result = result?;
    side_result.context("side stream")?;
    report.snapshot = Some(SnapshotFigures {
        seconds: snapshot_time.as_secs_f64(),
        arrow_bytes: ingested.io_bytes,
        mib_per_s: ingested.io_bytes as f64 / MIB / snapshot_time.as_secs_f64(),
        result,
        side_before: before.stats(baseline_time),
        side_during: during.stats(snapshot_time),
    });
    Ok(())
}

/// DoAction force_snapshot for one dataset; the server's answers, as JSON
/// where they parse.
async fn force_snapshot(server: &Server, dataset: &str) -> anyhow::Result<serde_json::Value> {
    let mut client = server.client().await?;
    let action = arrow_flight::Action { r#type: "force_snapshot".into(), body: dataset.to_owned().into() };
    let mut results = client.do_action(action).await.context("DoAction force_snapshot")?.into_inner();
    let mut answers = vec![];
    while let Some(r) = results.next().await {
        let body = r.context("DoAction force_snapshot")?.body;
        answers.push(
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())),
        );
    }
    Ok(serde_json::Value::Array(answers))
}

/// Puts `mib` MiB of the pool's batches through `streams` streams, as fast
/// as they are acknowledged (the fill before a measurement), with a
/// progress line. `dataset`: the name, and whether each stream gets its own.
async fn measured_fill(
    name: &str,
    server: &Server,
    pool: &Arc<BatchPool>,
    mib: f64,
    streams: usize,
    dataset: (String, bool),
    label: &'static str,
) -> anyhow::Result<(Arc<Meter>, crate::meter::Stats)> {
    let batches = ((mib * MIB) / pool.batch_bytes() as f64).ceil().max(1.0) as u64;
    let plan = PutPlan {
        streams: streams.max(1),
        window: 64,
        dataset: dataset.0,
        dataset_per_stream: dataset.1,
        deadline: None,
        rows_total: Some(batches * pool.rows_per_batch as u64),
        batches_per_s_per_stream: None,
    };
    announce(name, pool, &plan, server);
    let meter = Meter::new(label);
    let t0 = Instant::now();
    {
        let _progress = Progress::start(name.to_owned(), vec![meter.clone()]);
        run_puts(server.addr(), pool, &plan, &meter).await?;
    }
    let stats = meter.stats(t0.elapsed());
    Ok((meter, stats))
}

async fn recovery(a: &RecoveryArgs, server: &mut Server, name: &str, report: &mut JobReport) -> anyhow::Result<()> {
    let pool = BatchPool::new(1000, 128)?;
    let (meter, filled) =
        measured_fill(name, server, &pool, a.mib, a.streams, ("recovery".into(), true), "fill").await?;
    report.write = Some(filled);
    server.kill9().await?;
    let wal_bytes = walk_bytes(server.data_path().expect("recovery spawns its server"));
    eprintln!("{name}: killed (-9) with {:.1} MiB of WAL; restarting", wal_bytes as f64 / MIB);
    let t0 = Instant::now();
    let ready = server.restart().await?;
    let mut client = server.client().await?;
    let infos: Vec<_> = client.list_flights(arrow_flight::Criteria::default()).await?.into_inner().collect().await;
    let answered = t0.elapsed();
    let mut rows_after_restart = 0u64;
    for info in infos {
        rows_after_restart += u64::try_from(info?.total_records).unwrap_or(0);
    }
    let rows_acked = meter.rows();
    if rows_after_restart < rows_acked {
        eprintln!("{name}: WARNING: {rows_acked} rows were acknowledged but {rows_after_restart} came back");
    }
    report.recovery = Some(RecoveryFigures {
        restart_to_ready_s: ready.as_secs_f64(),
        restart_to_first_answer_s: answered.as_secs_f64(),
        wal_bytes,
        rows_acked,
        rows_after_restart,
    });
    Ok(())
}

fn walk_bytes(dir: &Path) -> u64 {
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
