//! `GET /metrics` from one prometheus-client registry: OpenMetrics text when
//! the request's `Accept` prefers `application/openmetrics-text` (Prometheus
//! asks for it first), else the Prometheus text format 0.0.4, written from
//! the OpenMetrics text (prometheus-client writes only that).
//!
//! The gateway's own series are here: Flight calls ([`GatewayMetrics`],
//! streams measured until they end), storage gauges refreshed from the
//! shards' figures ([`GatewayMetrics::watch`]), the build and the process
//! ([`ProcessMetrics`]). The engine's are in `longbow_engine::metrics`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use longbow_engine::metrics::ShardLabel;
use longbow_engine::shard::request::{ShardStats, VolumeUsage};
use longbow_engine::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tonic::{Code, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    /// `wal` or `snapshots`.
    pub volume: &'static str,
}

/// The gRPC name of a status code, as the gRPC spec and other servers'
/// metrics spell it (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How often the storage gauges are refreshed from the shards' figures
/// (one `Stats` request per shard: a directory listing, two `statvfs`, a
/// pass over the batches not yet snapshotted).
pub const STORAGE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The methods whose response is a stream that lasts (their active streams
/// are shown from the start, at 0).
const STREAM_METHODS: [&str; 2] = ["DoGet", "DoPut"];

/// Flight calls by method and final gRPC code and how long each lasted
/// (streams until their response stream ended), DoAction by action, the
/// streams open now, what DoGet served, and the storage gauges.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabel, Counter>,
    pub seconds: Family<MethodLabel, Histogram>,
    pub action_seconds: Family<ActionLabel, Histogram>,
    pub active_streams: Family<MethodLabel, Gauge>,
    pub do_get_rows: Counter,
    pub do_get_bytes: Counter,
    /// Flight SQL queries sent whole to the one other node that owns every
    /// table they name.
    pub sql_queries_run_at_owner: Counter,
    /// Datasets this node holds for another node, not handed over yet.
    pub handovers_pending: Gauge,
    /// DoPut bytes this node stores, read off the socket and not yet
    /// acknowledged (LONGBOW_MAX_INFLIGHT bounds them).
    pub put_inflight_bytes: Gauge,
    /// DoPut bytes this node proxies to their owners, read and not yet
    /// acknowledged by the owner (a budget of the same size of their own).
    pub put_forwarded_inflight_bytes: Gauge,
    storage: StorageGauges,
}

/// Refreshed every [`STORAGE_REFRESH_INTERVAL`] by [`GatewayMetrics::watch`].
#[derive(Clone, Default)]
struct StorageGauges {
    wal_bytes: Family<ShardLabel, Gauge>,
    wal_segments: Family<ShardLabel, Gauge>,
    lag_rows: Family<ShardLabel, Gauge>,
    lag_batches: Family<ShardLabel, Gauge>,
    volume_size: Family<VolumeLabel, Gauge>,
    volume_available: Family<VolumeLabel, Gauge>,
    volume_used: Family<VolumeLabel, Gauge>,
    snapshot_interval: Gauge<f64, AtomicU64>,
}

/// 50 µs .. ~28 min: unary calls take microseconds, streams and
/// `force_snapshot` can take minutes.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 26))
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let active_streams = Family::<MethodLabel, Gauge>::default();
        for method in STREAM_METHODS {
            let _ = active_streams.get_or_create(&MethodLabel { method });
        }
        Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(call_buckets),
            action_seconds: Family::new_with_constructor(call_buckets),
            active_streams,
            do_get_rows: Counter::default(),
            do_get_bytes: Counter::default(),
            sql_queries_run_at_owner: Counter::default(),
            handovers_pending: Gauge::default(),
            put_inflight_bytes: Gauge::default(),
            put_forwarded_inflight_bytes: Gauge::default(),
            storage: StorageGauges::default(),
        }
    }
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "longbow_flight_requests",
            "Flight calls by method and final gRPC code (a stream's code is the one it ended with)",
            self.requests.clone(),
        );
        registry.register(
            "longbow_flight_request_duration_seconds",
            "Time of a Flight call; for DoGet and DoPut until the response stream ended",
            self.seconds.clone(),
        );
        registry.register(
            "longbow_flight_action_duration_seconds",
            "Time of a DoAction call by action",
            self.action_seconds.clone(),
        );
        registry.register(
            "longbow_flight_active_streams",
            "DoGet and DoPut calls whose response stream is open",
            self.active_streams.clone(),
        );
        registry.register("longbow_do_get_rows", "Rows DoGet sent", self.do_get_rows.clone());
        registry.register(
            "longbow_do_get_bytes",
            "Bytes of FlightData (header and body) DoGet sent",
            self.do_get_bytes.clone(),
        );
        registry.register(
            "longbow_sql_queries_run_at_owner",
            "Flight SQL queries this node sent whole to the one other node that owns every table they name",
            self.sql_queries_run_at_owner.clone(),
        );
        registry.register(
            "longbow_put_inflight_bytes",
            "DoPut bytes this node stores, read off the socket and not yet acknowledged (LONGBOW_MAX_INFLIGHT)",
            self.put_inflight_bytes.clone(),
        );
        registry.register(
            "longbow_put_forwarded_inflight_bytes",
            "DoPut bytes proxied to the dataset's owner and not yet acknowledged by it (a LONGBOW_MAX_INFLIGHT of their own)",
            self.put_forwarded_inflight_bytes.clone(),
        );
        registry.register(
            "longbow_handovers_pending",
            "Datasets this node holds that another node owns under LONGBOW_PEERS, not yet handed over to it",
            self.handovers_pending.clone(),
        );
        let s = &self.storage;
        registry.register("longbow_wal_disk_bytes", "Bytes of a shard's WAL segments on disk", s.wal_bytes.clone());
        registry.register("longbow_wal_segments", "A shard's WAL segment files on disk", s.wal_segments.clone());
        registry.register(
            "longbow_snapshot_lag_rows",
            "Rows of a shard logged and not yet in any snapshot file",
            s.lag_rows.clone(),
        );
        registry.register(
            "longbow_snapshot_lag_batches",
            "Batches of a shard logged and not yet in any snapshot file",
            s.lag_batches.clone(),
        );
        registry.register(
            "longbow_volume_size_bytes",
            "Size of the filesystem holding the WAL or the snapshots",
            s.volume_size.clone(),
        );
        registry.register(
            "longbow_volume_available_bytes",
            "Bytes Longbow can still write on the filesystem holding the WAL or the snapshots",
            s.volume_available.clone(),
        );
        registry.register(
            "longbow_volume_used_bytes",
            "Bytes used (by anyone) on the filesystem holding the WAL or the snapshots",
            s.volume_used.clone(),
        );
        registry.register(
            "longbow_snapshot_interval_seconds",
            "Configured time between automatic snapshots",
            s.snapshot_interval.clone(),
        );
        registry.register_collector(Box::new(BuildInfo));
    }

    /// A call answered at once (unary, or a stream that is only a list).
    pub fn observe<T>(&self, method: &'static str, started: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.record(method, code, started);
    }

    /// A DoAction call: also by action (one DoAction knows, or `unknown`,
    /// so that clients cannot grow the label set).
    pub fn observe_action<T>(&self, action: &'static str, started: Instant, r: &Result<T, Status>) {
        self.action_seconds.get_or_create(&ActionLabel { action }).observe(started.elapsed().as_secs_f64());
        self.observe("DoAction", started, r);
    }

    fn record(&self, method: &'static str, code: Code, started: Instant) {
        self.requests.get_or_create(&RequestLabel { method, code: code_name(code) }).inc();
        self.seconds.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
    }

    /// A streaming call starts: it counts as active until
    /// [`StreamCall::stream`]'s stream ends or is dropped, or the
    /// `StreamCall` is dropped.
    pub fn stream_call(&self, method: &'static str) -> StreamCall {
        self.active_streams.get_or_create(&MethodLabel { method }).inc();
        StreamCall { metrics: self.clone(), method, started: Instant::now(), code: None, finished: false }
    }

    /// Refreshes the storage gauges from the engine every
    /// [`STORAGE_REFRESH_INTERVAL`], until the engine shuts down. Needs a
    /// tokio runtime (does nothing without one).
    /// `inflight_bytes`: the bytes stored and the bytes proxied that wait
    /// for their acknowledgements.
    pub fn watch(&self, engine: Engine, inflight_bytes: impl Fn() -> (u64, u64) + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let gauges = self.storage.clone();
        let (inflight, forwarded) = (self.put_inflight_bytes.clone(), self.put_forwarded_inflight_bytes.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(STORAGE_REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (stored, proxied) = inflight_bytes();
                inflight.set(i64::try_from(stored).unwrap_or(i64::MAX));
                forwarded.set(i64::try_from(proxied).unwrap_or(i64::MAX));
                match engine.shard_stats().await {
                    Ok(shards) => gauges.update(engine.settings().snapshot_interval, &shards),
                    Err(longbow_engine::Error::ShuttingDown) => return,
                    Err(e) => tracing::debug!(error = %e, "refreshing the storage gauges"),
                }
            }
        });
    }
}

impl StorageGauges {
    fn update(&self, snapshot_interval: Duration, shards: &[ShardStats]) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (k, s) in shards.iter().enumerate() {
            let label = ShardLabel { shard: k as u32 };
            self.wal_bytes.get_or_create(&label).set(gauge(s.wal_bytes));
            self.wal_segments.get_or_create(&label).set(gauge(s.wal_segments));
            self.lag_rows.get_or_create(&label).set(gauge(s.unsnapshotted_rows));
            self.lag_batches.get_or_create(&label).set(gauge(s.unsnapshotted_batches));
        }
        // Every shard reports its WAL directory's filesystem (one volume
        // unless someone mounted shard directories apart) and the one
        // snapshot root's: the fullest is the one that matters.
        for (volume, of) in [
            ("wal", (|s: &ShardStats| s.wal_volume) as fn(&ShardStats) -> Option<VolumeUsage>),
            ("snapshots", |s: &ShardStats| s.snapshot_volume),
        ] {
            let Some(v) = shards.iter().filter_map(of).min_by_key(|v| v.available_bytes) else { continue };
            let label = VolumeLabel { volume };
            self.volume_size.get_or_create(&label).set(gauge(v.size_bytes));
            self.volume_available.get_or_create(&label).set(gauge(v.available_bytes));
            self.volume_used.get_or_create(&label).set(gauge(v.used_bytes));
        }
        self.snapshot_interval.set(snapshot_interval.as_secs_f64());
    }
}

/// One DoGet or DoPut call, from its start until its response stream ends
/// (or is dropped: the client went away, `CANCELLED`): active meanwhile,
/// then counted with the code it ended with and its whole duration.
pub struct StreamCall {
    metrics: GatewayMetrics,
    method: &'static str,
    started: Instant,
    /// The first error the stream carried, or `Ok` once it ended cleanly.
    code: Option<Code>,
    finished: bool,
}

impl StreamCall {
    /// The call failed before any response stream (recorded when dropped).
    pub fn failed(mut self, status: &Status) {
        self.code = Some(status.code());
    }

    /// `stream`, measured: its first error sets the call's code.
    pub fn stream<T: Send + 'static>(
        self,
        stream: BoxStream<'static, Result<T, Status>>,
    ) -> BoxStream<'static, Result<T, Status>> {
        Box::pin(Measured { inner: stream, call: self })
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.metrics.active_streams.get_or_create(&MethodLabel { method: self.method }).dec();
        self.metrics.record(self.method, self.code.unwrap_or(Code::Cancelled), self.started);
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Measured<T> {
    inner: BoxStream<'static, Result<T, Status>>,
    call: StreamCall,
}

impl<T> Stream for Measured<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = this.inner.poll_next_unpin(cx);
        match &item {
            Poll::Ready(Some(Err(s))) => {
                this.call.code.get_or_insert(s.code());
            }
            Poll::Ready(None) => {
                this.call.code.get_or_insert(Code::Ok);
                this.call.finish();
            }
            _ => {}
        }
        item
    }
}

/// `longbow_build_info{version, commit}` 1. The commit is the
/// `LONGBOW_GIT_COMMIT` of the build's environment (the Dockerfile's build
/// argument); without it the label is left out.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut labels = vec![("version", env!("CARGO_PKG_VERSION"))];
        if let Some(commit) = option_env!("LONGBOW_GIT_COMMIT").filter(|c| !c.is_empty()) {
            labels.push(("commit", commit));
        }
        let mut family = encoder.encode_descriptor(
            "longbow_build_info",
            "Always 1; the labels say which build this is.",
            None,
            ConstGauge::<i64>::TYPE,
        )?;
        let gauge = ConstGauge::new(1i64);
        gauge.encode(family.encode_family(&labels)?)
    }
}

/// This process as the Prometheus client libraries describe one
/// (`process_*`), read from /proc when scraped.
#[derive(Clone, Default)]
pub struct ProcessMetrics {
    sample: Arc<Mutex<ProcessSample>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProcessSample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: u64,
    virtual_memory_bytes: u64,
    resident_memory_bytes: u64,
    threads: u64,
}

impl ProcessMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessCollector(self.sample.clone())));
    }

    fn refresh(&self) {
        let sample = ProcessSample::read();
        *self.sample.lock().unwrap_or_else(|e| e.into_inner()) = sample;
    }
}

impl ProcessSample {
    fn read() -> Self {
        let mut s = Self::default();
        // SAFETY: sysconf has no preconditions.
        let ticks = match unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } {
            t if t > 0 => t as f64,
            _ => 100.0,
        };
        // SAFETY: as above.
        let page = match unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => 4096,
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name, which may hold
            // spaces: `f[i]` is field i + 3 of proc(5) (utime is field 14).
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                s.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
                s.threads = field(20);
                s.virtual_memory_bytes = field(23);
                s.resident_memory_bytes = field(24) * page;
                let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
                    t.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok())
                });
                if let Some(boot) = boot {
                    s.start_time_seconds = boot as f64 + field(22) as f64 / ticks;
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = fds.count() as u64;
        }
        if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            s.max_fds = soft;
        }
        s
    }
}

#[derive(Debug)]
struct ProcessCollector(Arc<Mutex<ProcessSample>>);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = ConstCounter::new(s.cpu_seconds);
        // Registered as `process_cpu_seconds`: counters get `_total`.
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            None,
            start.metric_type(),
        )?)?;
        let gauges: [(&str, &str, u64); 5] = [
            ("process_open_fds", "Number of open file descriptors.", s.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", s.max_fds),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", s.virtual_memory_bytes),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", s.resident_memory_bytes),
            ("process_threads", "Number of OS threads in the process.", s.threads),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/healthz` reports.
#[derive(Clone)]
pub struct Health {
    /// Which shards do not serve (poisoned, exited, panicked).
    pub shards: tokio::sync::watch::Receiver<longbow_engine::health::Health>,
    /// Per shard, 1 while its snapshots fail (`longbow_snapshot_failing`).
    pub snapshot_failing: Family<ShardLabel, Gauge>,
    pub shard_count: u32,
}

impl Health {
    fn failing_snapshot_shards(&self) -> Vec<u32> {
        (0..self.shard_count)
            .filter(|&shard| self.snapshot_failing.get_or_create(&ShardLabel { shard }).get() > 0)
            .collect()
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
            get(move |headers: HeaderMap| {
                let registry = registry.clone();
                process.refresh();
                async move { exposition(&registry, &headers) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let down = health.shards.borrow().down.clone();
                let snapshots_failing = health.failing_snapshot_shards();
                async move {
                    if !down.is_empty() {
                        let what: Vec<String> = down.iter().map(|(k, why)| format!("shard {k} {why}")).collect();
                        let body = format!("{}: restart required\n", what.join(", "));
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

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` response: OpenMetrics or Prometheus text as `headers`
/// ask.
fn exposition(registry: &Registry, headers: &HeaderMap) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if wants_openmetrics(accept) {
        ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response()
    } else {
        ([(CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)], prometheus_text(&body)).into_response()
    }
}

/// Whether an `Accept` header prefers OpenMetrics text: it names
/// `application/openmetrics-text` with a quality above 0 and at least that
/// of any range covering `text/plain`. No header: Prometheus text.
pub fn wants_openmetrics(accept: &str) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// Prometheus text 0.0.4 from prometheus-client's OpenMetrics text. The
/// samples are the same; what differs is around them: a counter family is
/// named with its `_total` (`# TYPE x_total counter`, where OpenMetrics
/// writes `# TYPE x counter` over `x_total` samples), `info` is a gauge
/// named `x_info` and `unknown` is `untyped`, and there are no `# UNIT`,
/// `_created` samples or `# EOF`. (No exemplars are registered; HELP texts
/// hold no backslash or line break, which prometheus-client would not
/// escape either.)
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE; its name depends on the type.
    let mut help: Option<(&str, &str)> = None;
    let mut family = String::new();
    let mut drop_created = false;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (om_name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{om_name}_total"), "counter"),
                "info" => (format!("{om_name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (om_name.to_owned(), kind),
                _ => (om_name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                if help_name == om_name {
                    out.push_str(&format!("# HELP {name} {}\n", text.replace("\\\"", "\"")));
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            drop_created = matches!(kind, "counter" | "histogram" | "summary");
            family = name;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue; // # UNIT, # EOF
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if drop_created && sample_name.ends_with("_created") && !family.ends_with("_created") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_preferred() {
        // Prometheus 2.x's scrape header.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(wants_openmetrics("application/openmetrics-text"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("text/plain, application/openmetrics-text;q=0.5"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(wants_openmetrics("text/plain;q=0.2, APPLICATION/OpenMetrics-Text; version=1.0.0; q=0.9"));
    }

    #[test]
    fn grpc_code_names() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    fn registry() -> (Registry, GatewayMetrics) {
        let mut registry = Registry::default();
        let gateway = GatewayMetrics::default();
        gateway.register(&mut registry);
        ProcessMetrics::default().register(&mut registry);
        let errors = Family::<RequestLabel, Counter>::default();
        errors.get_or_create(&RequestLabel { method: "DoPut", code: "UNAVAILABLE" }).inc_by(3);
        registry.register("longbow_test_errors", "Errors \"quoted\"", errors);
        let info = prometheus_client::metrics::info::Info::new(vec![("k", "v")]);
        registry.register("longbow_test", "An info", info);
        (registry, gateway)
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_has_no_eof() {
        let (registry, gateway) = registry();
        gateway.record("DoGet", Code::Ok, Instant::now());
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        assert!(om.contains("# TYPE longbow_flight_requests counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let text = prometheus_text(&om);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains(
            "# HELP longbow_flight_requests_total Flight calls by method and final gRPC code (a stream's code is the \
             one it ended with).\n# TYPE longbow_flight_requests_total counter\n\
             longbow_flight_requests_total{method=\"DoGet\",code=\"OK\"} 1\n"
        ));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "), "{text}");
        assert!(text.contains("# TYPE longbow_flight_request_duration_seconds histogram\n"));
        assert!(text.contains("longbow_test_errors_total{method=\"DoPut\",code=\"UNAVAILABLE\"} 3\n"));
        assert!(text.contains("# TYPE longbow_test_info gauge\nlongbow_test_info{k=\"v\"} 1\n"), "{text}");
        assert!(text.contains("longbow_build_info{version=\""), "{text}");
        // Every sample line follows a TYPE line of its family.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line:?} outside {family}");
            }
        }
    }

    #[test]
    fn streams_are_measured_until_they_end_with_their_code() {
        let gateway = GatewayMetrics::default();
        let active = || gateway.active_streams.get_or_create(&MethodLabel { method: "DoPut" }).get();
        let count = |code| gateway.requests.get_or_create(&RequestLabel { method: "DoPut", code }).get();
        let call = gateway.stream_call("DoPut");
        assert_eq!(active(), 1);
        let items: Vec<Result<u8, Status>> = vec![Ok(1), Err(Status::unavailable("full"))];
        let mut stream = call.stream(futures::stream::iter(items).boxed());
        assert_eq!(count("UNAVAILABLE"), 0, "not before the stream ends");
        futures::executor::block_on(async { while stream.next().await.is_some() {} });
        assert_eq!((active(), count("UNAVAILABLE")), (0, 1));
        drop(stream);
        assert_eq!(count("UNAVAILABLE"), 1, "counted once");

        // Dropped before its end: the client went away.
        let call = gateway.stream_call("DoPut");
        drop(call.stream(futures::stream::pending::<Result<u8, Status>>().boxed()));
        assert_eq!((active(), count("CANCELLED")), (0, 1));
        // Failed before it had a stream.
        gateway.stream_call("DoPut").failed(&Status::invalid_argument("bad"));
        assert_eq!((active(), count("INVALID_ARGUMENT")), (0, 1));
    }
}
