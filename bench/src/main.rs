//! `longbow-bench`: a fio-style load generator for Longbow's Arrow Flight
//! API, and a no-op reference sink.
//!
//! Workloads (`put`, `get`, `mixed`, `snapshot`, `recovery`) run from the
//! command line or, several at a time, from an INI job file. Each runs
//! against a server already up (`--target`) or one it starts itself
//! (`--spawn-server`), prints a progress line a second on stderr, and ends
//! with a summary per job, or one JSON document for the run
//! (`--output-format json`).
//!
//! # Layout
//! - `workloads.rs`: the workloads' options and what each one does; start here.
//! - `load.rs`: encoded batches, windowed/paced DoPut streams, DoGet scans.
//! - `meter.rs`: counters, HDR histograms, the progress line, [`meter::Stats`].
//! - `server.rs`: `--target` or `--spawn-server`: the one way every job gets a server.
//! - `jobfile.rs`: `[global]` + job sections turned into command lines.
//! - `report.rs`: the human summary and the JSON document.
//! - `null_sink.rs`: `null-server`, the protocol ceiling.

mod jobfile;
mod load;
mod meter;
mod null_sink;
mod report;
mod server;
mod workloads;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};

use crate::report::{Host, RunReport};
use crate::workloads::Workload;

const LONG_ABOUT: &str = "\
Load generator for Longbow's Arrow Flight API, modelled on fio (job files, \
per-job summaries, one JSON document per run) and on redis-benchmark / \
kafka-producer-perf-test (concurrent streams, batch size, target rate, \
latency percentiles).

Data: batches of `id int32, vector fixed_size_list<float32>[dim]` with \
random values, encoded before the clock starts. Bytes are Arrow IPC bytes \
(FlightData header + body). Latency comes from an HDR histogram \
(microseconds, 3 significant digits): per batch from send to its PutResult \
for puts, one whole scan for gets.

Every workload either uses a running server (--target URL, default \
http://127.0.0.1:3000) or starts `longbow` itself (--spawn-server, with \
--binary, --data-path, --snapshot-path, --shards, --server-env NAME=VALUE) \
on loopback with ephemeral ports, and stops it with SIGTERM afterwards.

While a job runs, a progress line a second goes to stderr: elapsed time, \
rows/s, MiB/s and the p99 of that second, per direction. At the end: a \
summary per job (rows/s, MiB/s, latency min/p50/p95/p99/p99.9/max) on \
stdout, or with --output-format json one document for the whole run \
(jobs[].write / jobs[].read: rows, batches, io_bytes, runtime_s, \
rows_per_s, bw_mib_s, lat_us {min, p50, p95, p99, p99.9, max, mean, \
samples}; jobs[].snapshot, jobs[].recovery) on stdout, the summaries then \
going to stderr.";

const AFTER_HELP: &str = "\
Examples:
  # 4 streams for 10 s against a running server
  longbow-bench put --target http://127.0.0.1:3000 --streams 4 --duration 10

  # start longbow (2 shards) for the job; exactly 1,000,000 rows, JSON out
  longbow-bench put --spawn-server --binary target/release/longbow --shards 2 \\
      --total-rows 1000000 --output-format json

  # ack latency at a fixed rate: 10-row batches, one at a time, 2,000 rows/s
  longbow-bench put --spawn-server --streams 1 --window 1 --rows-per-batch 10 --rate-rows 2000

  # puts while 2 readers scan the same datasets
  longbow-bench mixed --spawn-server --streams 2 --dataset-per-stream --readers 2 --duration 5

  # time force_snapshot of 256 MiB; side-stream ack latency before vs during
  longbow-bench snapshot --spawn-server --shards 1 --mib 256

  # kill -9 with 1 GiB of WAL, time the restart
  longbow-bench recovery --mib 1024 --shards 2

  # a secured server: bearer token (or LONGBOW_AUTH_TOKEN) and TLS with its CA
  longbow-bench put --target https://longbow.example:3000 --token \"$TOKEN\" --tls-ca ca.pem

  # several jobs from a file, one after another
  longbow-bench run bench/jobs/example.ini --output-format json > run.json

Job files (fio-style INI): a [global] section and one section per job, run
in file order, each with its own server when it spawns one. Keys are the
long flag names without the dashes (`rows-per-batch` or `rows_per_batch`),
plus `workload=` (put, get, mixed, snapshot, recovery). Flags take `=1` or
`=true`. A job's keys override [global]'s (server-env adds to them); global
keys a workload has no use for are skipped, and so are [global]'s server
options (binary, data-path, snapshot-path, shards, server-env) for a job that
uses target=. Values may use ${NAME} or ${NAME:-default} from the
environment, as in fio. The section name is the job name.

  [global]
  spawn-server=1
  shards=2
  duration=5

  [throughput]
  workload=put
  streams=4

  [latency]
  workload=put
  streams=1
  window=1
  rows-per-batch=10

See bench/jobs/example.ini and docs/benchmarks.md (scripts/bench.sh runs the
standard suite and writes its figures there).";

#[derive(Parser)]
#[command(name = "longbow-bench", version, about = "Load generator and reference sink for Longbow (fio-style)",
          long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// `human`: a summary per job on stdout. `json`: one fio-like document
    /// for the whole run on stdout (summaries go to stderr).
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub output_format: OutputFormat,
    /// Run the jobs of this file (the same as `longbow-bench run FILE`).
    #[arg(long, value_name = "FILE")]
    pub job_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per job")]
pub enum Command {
    #[command(flatten)]
    Workload(Workload),
    /// Run the jobs of a job file, one after another.
    Run {
        #[arg(value_name = "JOB_FILE")]
        file: PathBuf,
    },
    /// A Flight server that decodes and discards DoPut batches, answering like Longbow.
    NullServer {
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (jobs, job_file) = match (cli.job_file, cli.command) {
        (Some(_), Some(_)) => bail!("give either --job-file or a subcommand, not both"),
        (Some(file), None) | (None, Some(Command::Run { file })) => (jobfile::load(&file)?, Some(file)),
        (None, Some(Command::Workload(w))) => (vec![w], None),
        (None, Some(Command::NullServer { listen })) => return runtime.block_on(null_sink::null_server(listen)),
        (None, None) => {
            Cli::command().print_help()?;
            std::process::exit(2);
        }
    };
    runtime.block_on(run(jobs, job_file.as_deref(), cli.output_format))
}

/// Runs the jobs in order; prints each summary as it ends, and the JSON
/// document once all have.
async fn run(jobs: Vec<Workload>, job_file: Option<&Path>, format: OutputFormat) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now();
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        // IMPORTANT: on Ctrl-C the job is dropped, not abandoned: dropping
        // its server kills a spawned `longbow` and removes its temporary directories.
        let report = tokio::select! {
            r = job.run() => r.with_context(|| format!("job {} ({})", job.name(), job.kind()))?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted during job {}", job.name()),
        };
        match format {
            OutputFormat::Human => report.write_human(&mut std::io::stdout().lock())?,
            OutputFormat::Json => report.write_human(&mut std::io::stderr().lock())?,
        }
        reports.push(report);
    }
    if format == OutputFormat::Json {
        let doc = RunReport {
            version: env!("CARGO_PKG_VERSION"),
            time: humantime::format_rfc3339_seconds(started).to_string(),
            timestamp: started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            job_file: job_file.map(Path::to_path_buf),
            host: Host::current(),
            jobs: reports,
        };
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
