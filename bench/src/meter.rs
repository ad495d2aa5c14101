//! What a job measured: counters and HDR histograms shared by the tasks of
//! one direction (put or get), the once-a-second progress line, and the
//! figures a report prints ([`Stats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds: an hour, enough for a whole-dataset scan.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
pub const MIB: f64 = (1u64 << 20) as f64;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant bounds are valid")
}

/// Counts acknowledged work of one kind. Every task of the job records into
/// the same meter; the lock is taken once per acknowledged batch or scan.
pub struct Meter {
    pub label: &'static str,
    rows: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    /// (since the last progress line, whole job).
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Meter {
    pub fn new(label: &'static str) -> Arc<Self> {
        Arc::new(Self {
            label,
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latency: Mutex::new((histogram(), histogram())),
        })
    }

    pub fn add(&self, rows: u64, batches: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.batches.fetch_add(batches, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut h = self.latency.lock().expect("meter lock");
        h.0.saturating_record(us);
        h.1.saturating_record(us);
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Totals so far and the p99 since the previous call (None: no samples).
    fn interval(&self) -> (u64, u64, Option<u64>) {
        let p99 = {
            let mut h = self.latency.lock().expect("meter lock");
            let p99 = (!h.0.is_empty()).then(|| h.0.value_at_quantile(0.99));
            h.0.reset();
            p99
        };
        (self.rows.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed), p99)
    }

    /// The job's figures over `runtime`.
    pub fn stats(&self, runtime: Duration) -> Stats {
        let secs = runtime.as_secs_f64().max(1e-9);
        let rows = self.rows.load(Ordering::Relaxed);
        let batches = self.batches.load(Ordering::Relaxed);
        let io_bytes = self.bytes.load(Ordering::Relaxed);
        let h = self.latency.lock().expect("meter lock");
        Stats {
            rows,
            batches,
            io_bytes,
            runtime_s: secs,
            rows_per_s: rows as f64 / secs,
            batches_per_s: batches as f64 / secs,
            bw_mib_s: io_bytes as f64 / MIB / secs,
            lat_us: Latency::of(&h.1),
        }
    }
}

/// One direction's figures, fio-like (`io_bytes`, `bw`, `runtime`, `lat`).
#[derive(Serialize, Debug, Clone)]
pub struct Stats {
    pub rows: u64,
    pub batches: u64,
    /// Arrow IPC bytes (FlightData header + body) acknowledged or received.
    pub io_bytes: u64,
    pub runtime_s: f64,
    pub rows_per_s: f64,
    pub batches_per_s: f64,
    pub bw_mib_s: f64,
    /// Microseconds; `null` when nothing was timed.
    pub lat_us: Option<Latency>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Latency {
    pub min: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
    pub samples: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            samples: h.len(),
        })
    }

    pub fn human(&self) -> String {
        format!(
            "min {} p50 {} p95 {} p99 {} p99.9 {} max {} (n={})",
            self.min, self.p50, self.p95, self.p99, self.p99_9, self.max, self.samples
        )
    }
}

/// Prints one line a second on stderr until dropped:
/// `[  3.0s] put 51234 rows/s 25.1 MiB/s p99 850us (153702 rows) | get …`.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(job: String, meters: Vec<Arc<Meter>>) -> Self {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last: Vec<(u64, u64)> = vec![(0, 0); meters.len()];
            let mut last_at = Instant::now();
            loop {
                tick.tick().await;
                let secs = last_at.elapsed().as_secs_f64().max(1e-3);
                last_at = Instant::now();
                let parts: Vec<String> = meters
                    .iter()
                    .zip(last.iter_mut())
                    .map(|(m, last)| {
                        let (rows, bytes, p99) = m.interval();
                        let p99 = p99.map_or_else(|| "-".to_owned(), |us| format!("{us}us"));
                        let line = format!(
                            "{} {:.0} rows/s {:.1} MiB/s p99 {p99} ({rows} rows)",
                            m.label,
                            (rows - last.0) as f64 / secs,
                            (bytes - last.1) as f64 / MIB / secs,
                        );
                        *last = (rows, bytes);
                        line
                    })
                    .collect();
                eprintln!("{job} [{:>6.1}s] {}", started.elapsed().as_secs_f64(), parts.join(" | "));
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_ordered_and_counted() {
        let m = Meter::new("put");
        for us in 1..=1000u64 {
            m.add(10, 1, 100);
            m.latency(Duration::from_micros(us));
        }
        let s = m.stats(Duration::from_secs(2));
        assert_eq!((s.rows, s.batches, s.io_bytes), (10_000, 1000, 100_000));
        assert!((s.rows_per_s - 5000.0).abs() < 1e-6);
        let l = s.lat_us.expect("latency recorded");
        assert!(l.min <= l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max);
        assert_eq!(l.samples, 1000);
        assert!(Meter::new("get").stats(Duration::from_secs(1)).lat_us.is_none());
    }
}
