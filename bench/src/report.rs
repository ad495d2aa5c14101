//! What a run reports: one [`JobReport`] per job, as a human summary or,
//! for the whole run, one fio-like JSON document ([`RunReport`]).

use std::io::Write;

use serde::Serialize;

use crate::meter::{Stats, MIB};

#[derive(Serialize, Debug)]
pub struct JobReport {
    pub jobname: String,
    pub workload: &'static str,
    /// Every option of the job, defaults included.
    pub options: serde_json::Value,
    pub server: serde_json::Value,
    /// Wall time of the whole job (fill and phases included).
    pub runtime_s: f64,
    /// DoPut figures (latency: per-batch acknowledgement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Stats>,
    /// DoGet figures (latency: one whole scan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryFigures>,
}

#[derive(Serialize, Debug)]
pub struct SnapshotFigures {
    /// force_snapshot, request to answer.
    pub seconds: f64,
    /// Arrow IPC bytes ingested into the dataset before the snapshot.
    pub arrow_bytes: u64,
    pub mib_per_s: f64,
    /// What the server answered.
    pub result: serde_json::Value,
    /// Side stream (small batches, one at a time) before the snapshot …
    pub side_before: Stats,
    /// … and while it ran.
    pub side_during: Stats,
}

#[derive(Serialize, Debug)]
pub struct RecoveryFigures {
    pub restart_to_ready_s: f64,
    pub restart_to_first_answer_s: f64,
    pub wal_bytes: u64,
    pub rows_acked: u64,
    pub rows_after_restart: u64,
}

impl JobReport {
    pub fn new(jobname: String, workload: &'static str, options: serde_json::Value, server: serde_json::Value) -> Self {
        Self {
            jobname,
            workload,
            options,
            server,
            runtime_s: 0.0,
            write: None,
            read: None,
            snapshot: None,
            recovery: None,
        }
    }

    /// The fio-like summary, a few lines per job.
    pub fn write_human(&self, out: &mut impl Write) -> std::io::Result<()> {
        let spawned = if self.server["spawned"] == true { " (spawned)" } else { "" };
        writeln!(
            out,
            "{}: workload={} server={}{} runtime={:.2}s",
            self.jobname,
            self.workload,
            self.server["target"].as_str().unwrap_or("?"),
            spawned,
            self.runtime_s
        )?;
        if let Some(s) = &self.write {
            stats_lines(out, "put", "ack latency", s)?;
        }
        if let Some(s) = &self.read {
            stats_lines(out, "get", "scan latency", s)?;
        }
        if let Some(s) = &self.snapshot {
            writeln!(
                out,
                "  snapshot: force_snapshot of {:.1} MiB took {:.3}s = {:.1} MiB/s",
                s.arrow_bytes as f64 / MIB,
                s.seconds,
                s.mib_per_s
            )?;
            for (label, st) in [("before", &s.side_before), ("during", &s.side_during)] {
                match &st.lat_us {
                    Some(l) => writeln!(out, "    side acks {label} (us): {}", l.human())?,
                    None => writeln!(out, "    side acks {label}: none completed")?,
                }
            }
        }
        if let Some(r) = &self.recovery {
            writeln!(
                out,
                "  recovery: {:.1} MiB of WAL; restart to ready {:.3}s, to first ListFlights answer {:.3}s; rows acked {} / after restart {}",
                r.wal_bytes as f64 / MIB,
                r.restart_to_ready_s,
                r.restart_to_first_answer_s,
                r.rows_acked,
                r.rows_after_restart
            )?;
        }
        Ok(())
    }
}

fn stats_lines(out: &mut impl Write, label: &str, latency: &str, s: &Stats) -> std::io::Result<()> {
    writeln!(
        out,
        "  {label}: rows={} batches={} io={:.1}MiB in {:.2}s: {:.0} rows/s, {:.1} MiB/s",
        s.rows,
        s.batches,
        s.io_bytes as f64 / MIB,
        s.runtime_s,
        s.rows_per_s,
        s.bw_mib_s
    )?;
    if let Some(l) = &s.lat_us {
        writeln!(out, "    {latency} (us): {}", l.human())?;
    }
    Ok(())
}

/// The whole run, as `--output-format json` prints it.
#[derive(Serialize, Debug)]
pub struct RunReport {
    #[serde(rename = "longbow-bench version")]
    pub version: &'static str,
    /// RFC 3339, UTC, when the run started.
    pub time: String,
    pub timestamp: u64,
    pub job_file: Option<std::path::PathBuf>,
    pub host: Host,
    pub jobs: Vec<JobReport>,
}

#[derive(Serialize, Debug)]
pub struct Host {
    pub hostname: String,
    pub cpus: usize,
}

impl Host {
    pub fn current() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Self { hostname, cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }
}
