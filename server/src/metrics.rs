//! `GET /metrics` in OpenMetrics text, from one prometheus-client registry.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use longbow_engine::metrics::ShardLabel;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

/// Flight calls by method and gRPC code, and the time each took to answer
/// (for streams: to start answering; DoPut acknowledgements have their own
/// histogram).
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabel, Counter>,
    pub seconds: Family<MethodLabel, Histogram>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(50e-6, 2.0, 18))),
        }
    }
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("longbow_flight_requests", "Flight calls by method and gRPC code", self.requests.clone());
        registry.register(
            "longbow_flight_request_duration_seconds",
            "Time until a Flight call answered (or started streaming)",
            self.seconds.clone(),
        );
    }

    pub fn observe<T>(&self, method: &'static str, started: std::time::Instant, r: &Result<T, tonic::Status>) {
        let code = match r {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()).to_uppercase(),
        };
        self.requests.get_or_create(&RequestLabel { method, code }).inc();
        self.seconds.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
    }
}

/// Resident memory, CPU time and open descriptors of this process, read
/// from /proc when scraped.
#[derive(Clone, Default)]
pub struct ProcessMetrics {
    rss: Gauge,
    fds: Gauge,
    cpu: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("process_resident_memory_bytes", "Resident memory", self.rss.clone());
        registry.register("process_open_fds", "Open file descriptors", self.fds.clone());
        registry.register("process_cpu_seconds", "User and system CPU time used", self.cpu.clone());
    }

    fn refresh(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
                let kb: i64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                self.rss.set(kb * 1024);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(fds.count() as i64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields of the whole line.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // SAFETY: sysconf has no preconditions.
                let ticks = match unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } {
                    t if t > 0 => t as f64,
                    _ => 100.0,
                };
                let (u, s) =
                    (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok()));
                if let (Some(u), Some(s)) = (u, s) {
                    self.cpu.set((u + s) / ticks);
                }
            }
        }
    }
}

/// What `/healthz` reports.
#[derive(Clone)]
pub struct Health {
    pub shards_poisoned: Gauge,
    /// Per shard, 1 while its snapshots fail (`longbow_snapshot_failing`).
    pub snapshot_failing: Family<ShardLabel, Gauge>,
    pub shards: u32,
}

impl Health {
    fn failing_snapshot_shards(&self) -> Vec<u32> {
        (0..self.shards).filter(|&shard| self.snapshot_failing.get_or_create(&ShardLabel { shard }).get() > 0).collect()
    }
}

/// `/metrics`, and `/healthz`: 200 "ok"; 503 once a shard is poisoned (a
/// failed fsync: restart to recover); 200 "degraded: …" while snapshots
/// fail. That is no 503 on purpose: the chart's liveness probe would
/// restart the pod, which cannot fix a volume and replays a WAL that grows
/// while snapshots fail; writes are refused only once memory is full, and
/// reads go on. Alert on `longbow_snapshot_failing`. Plain HTTP, so that
/// probes work when the Flight port speaks TLS (the kubelet's gRPC probe
/// cannot).
pub fn router(registry: Arc<Registry>, process: ProcessMetrics, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                process.refresh();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => {
                            ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                                .into_response()
                        }
                        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let poisoned = health.shards_poisoned.get();
                let snapshots_failing = health.failing_snapshot_shards();
                async move {
                    if poisoned > 0 {
                        let body = format!("{poisoned} shard(s) poisoned after a failed fsync: restart required\n");
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response()
                    } else if !snapshots_failing.is_empty() {
                        format!(
                            "degraded: snapshots are failing on shard(s) {snapshots_failing:?} (see the log): the WAL \
                             is kept and grows, and under LONGBOW_MAX_MEMORY ingest stops once memory is full\n"
                        )
                        .into_response()
                    } else {
                        "ok\n".into_response()
                    }
                }
            }),
        )
}
