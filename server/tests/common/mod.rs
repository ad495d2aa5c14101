//! Starts the real `longbow` binary on loopback with a temporary data
//! directory, and talks to it with the Rust Flight client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor, PutResult, Ticket};
use futures::{StreamExt, TryStreamExt};

pub struct Server {
    pub child: Child,
    pub flight: String,
    pub metrics: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `longbow` on `data` with `shards` shards and waits until it
    /// serves. Panics with the server's log if it does not.
    pub fn start(data: &Path, shards: usize, extra: &[&str]) -> Server {
        Self::try_start(data, shards, extra).unwrap_or_else(|log| panic!("longbow did not start:\n{log}"))
    }

    /// Like `start`, but returns the server's log if it exits instead.
    pub fn try_start(data: &Path, shards: usize, extra: &[&str]) -> Result<Server, String> {
        Self::try_start_env(data, shards, extra, &[])
    }

    /// Like `try_start`, with extra environment variables.
    pub fn try_start_env(data: &Path, shards: usize, extra: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        // Beside the data directory, unless that is on a (full) test volume.
        let log = match data.parent().filter(|p| !p.join("filler").exists()) {
            Some(_) => data.with_extension(format!("log.{}", rand::random::<u32>())),
            None => std::env::temp_dir().join(format!("longbow-test-{}.log", rand::random::<u32>())),
        };
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_longbow"))
            .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false"])
            .arg("--data-path")
            .arg(data)
            .arg("--snapshot-path")
            .arg(data.with_file_name("snapshots"))
            .args(["--shards", &shards.to_string(), "--log-level", "info"])
            .args(extra)
            .env_remove("LONGBOW_LISTEN_ADDR")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn longbow");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("longbow ready") => {
                    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_owned();
                    let (flight, metrics) = (field("flight="), field("metrics="));
                    // Keep draining stdout so the server never blocks on it.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return Ok(Server { child, flight, metrics, data: data.to_owned(), log });
                }
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait().unwrap();
                    return Err(format!("exit {status}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
                }
            }
        }
    }

    pub async fn client(&self) -> FlightClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.flight))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        FlightClient::new(channel)
    }

    /// The grpc.health.v1 status of the overall server ("" service).
    pub async fn health(&self) -> tonic_health::pb::health_check_response::ServingStatus {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.flight))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status;
        tonic_health::pb::health_check_response::ServingStatus::try_from(status).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait: the exit status of a graceful shutdown.
    pub fn terminate(mut self) -> ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = wait_timeout(&mut self.child, Duration::from_secs(60));
        assert!(status.success(), "longbow exited with {status}:\n{}", self.log());
        status
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `/metrics` as a client sending no `Accept` gets it: Prometheus text
    /// 0.0.4 (the whole response, headers included).
    pub async fn metrics_text(&self) -> String {
        self.http_get("/metrics").await
    }

    /// `/metrics` as Prometheus asks for it: OpenMetrics text.
    pub async fn metrics_openmetrics(&self) -> String {
        self.http_get_with("/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n").await
    }

    /// The whole HTTP/1.1 response (status line, headers, body) of a GET on
    /// the metrics port.
    pub async fn http_get(&self, path: &str) -> String {
        self.http_get_with(path, "").await
    }

    /// As `http_get`, with more request headers (each ending in CRLF).
    pub async fn http_get_with(&self, path: &str, headers: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < limit, "longbow did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `id int32, vector fixed_size_list<float32>[dim]`, like the bench.
pub fn vector_schema(dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim),
            false,
        ),
    ]))
}

pub fn vector_batch(first_id: i32, rows: usize, dim: i32) -> RecordBatch {
    let ids = Int32Array::from_iter_values(first_id..first_id + rows as i32);
    let values = Float32Array::from_iter_values((0..rows * dim as usize).map(|i| (first_id as f32) + i as f32 * 0.5));
    let vectors =
        FixedSizeListArray::try_new(Arc::new(Field::new("item", DataType::Float32, true)), dim, Arc::new(values), None)
            .unwrap();
    RecordBatch::try_new(vector_schema(dim), vec![Arc::new(ids), Arc::new(vectors)]).unwrap()
}

/// `(writer int64, seq int64)`: one row per batch, to track exactly-once.
pub fn seq_batch(writer: i64, seq: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![writer])), Arc::new(Int64Array::from(vec![seq]))])
        .unwrap()
}

/// Puts `batches` into `dataset` in one DoPut stream; returns the PutResults.
pub async fn put(
    client: &mut FlightClient,
    dataset: &str,
    batches: Vec<RecordBatch>,
) -> Result<Vec<PutResult>, FlightError> {
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![dataset.to_owned()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    client.do_put(stream).await?.try_collect().await
}

/// Puts each batch in a stream of its own, waiting for its acknowledgement
/// (one commit each); returns the acknowledged batches and the errors of the
/// rest.
pub async fn put_each(
    client: &mut FlightClient,
    dataset: &str,
    batches: Vec<RecordBatch>,
) -> (Vec<RecordBatch>, Vec<FlightError>) {
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for b in batches {
        match put(client, dataset, vec![b.clone()]).await {
            Ok(_) => acked.push(b),
            Err(e) => failed.push(e),
        }
    }
    (acked, failed)
}

pub async fn get(client: &mut FlightClient, dataset: &str) -> Result<Vec<RecordBatch>, FlightError> {
    client.do_get(Ticket { ticket: dataset.to_owned().into() }).await?.try_collect().await
}

/// The batches as one (they share a schema).
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The gRPC code of a failed call.
pub fn code(e: &FlightError) -> tonic::Code {
    match e {
        FlightError::Tonic(s) => s.code(),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

pub fn lsn_of(r: &PutResult) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&r.app_metadata).unwrap();
    v["lsn"].as_u64().unwrap()
}

pub async fn count_stream<T>(s: futures::stream::BoxStream<'static, Result<T, FlightError>>) -> usize {
    s.filter(|r| futures::future::ready(r.is_ok())).count().await
}

/// The WAL segment files of a shard directory (`<20 digits>.wal`; not the
/// free files, `.free-<n>.wal`), oldest first.
pub fn wal_segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| longbow_engine::wal::parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    segs.sort();
    segs
}

/// The free files (preallocated or recycled) of a shard directory.
pub fn wal_free_files(shard_dir: &Path) -> Vec<PathBuf> {
    let mut free: Vec<_> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| longbow_engine::wal::free::parse_free_file_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    free.sort();
    free
}

/// One frame found in a segment file.
#[derive(Debug, Clone, Copy)]
pub struct FrameAt {
    pub offset: u64,
    /// Offset just past the frame (its padding to 8 bytes included).
    pub end: u64,
    pub kind: longbow_engine::wal::format::FrameKind,
    pub segment_id: u64,
    pub commit_start: u64,
    pub lsn: u64,
}

/// The segment's log as replay reads it: its frames from the header block
/// on, in order, up to the first place no frame of this segment starts (a
/// seal included). Segment files are preallocated, so their length says
/// nothing about where the log ends.
pub fn segment_frames(path: &Path) -> Vec<FrameAt> {
    use longbow_engine::wal::format::{decode_frame, SegmentHeader, FRAME_ALIGN};
    let bytes = std::fs::read(path).unwrap();
    let header = SegmentHeader::decode(&bytes).unwrap();
    let block = header.block_bytes as usize;
    let mut out = Vec::new();
    let mut at = block;
    while at < bytes.len() {
        match decode_frame(&bytes[at..]) {
            Ok(f) if f.header.segment_id == header.segment_id => {
                out.push(FrameAt {
                    offset: at as u64,
                    end: (at + f.len) as u64,
                    kind: f.header.kind,
                    segment_id: f.header.segment_id.0,
                    commit_start: f.header.commit_start,
                    lsn: f.header.lsn.get(),
                });
                if f.header.kind == longbow_engine::wal::format::FrameKind::Seal {
                    break;
                }
                at += f.len;
            }
            // Padding to the next block after a commit's last frame.
            _ if at % block != 0 && bytes[at..at.next_multiple_of(block).min(bytes.len())].iter().all(|b| *b == 0) => {
                at = at.next_multiple_of(block);
            }
            _ => break,
        }
        debug_assert_eq!(at % FRAME_ALIGN, 0);
    }
    out
}

/// Where each commit of a segment ends (the block after its last frame).
pub fn commit_ends(path: &Path) -> Vec<u64> {
    let block =
        longbow_engine::wal::format::SegmentHeader::decode(&std::fs::read(path).unwrap()).unwrap().block_bytes as u64;
    let frames = segment_frames(path);
    let mut ends = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let last_of_commit = frames.get(i + 1).is_none_or(|n| n.commit_start != f.commit_start);
        if last_of_commit && f.kind != longbow_engine::wal::format::FrameKind::Seal {
            ends.push(f.end.next_multiple_of(block));
        }
    }
    ends
}

/// Runs a `DoAction` and parses its one JSON result.
pub async fn action(client: &mut FlightClient, name: &str, body: &str) -> Result<serde_json::Value, FlightError> {
    let out: Vec<bytes::Bytes> =
        client.do_action(arrow_flight::Action::new(name, body.to_owned())).await?.try_collect().await?;
    Ok(serde_json::from_slice(&out[0]).unwrap())
}

/// A size-limited tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// `None` (the test is skipped, saying so) without root.
    pub fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { nix::libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a size-limited tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: could not mount a tmpfs");
            return None;
        }
        Some(Tmpfs(at))
    }

    pub fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Resident memory of a process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// A copy of `base/data` (its files and `shard-0/`) under `to`, to damage;
/// returns the copy's data directory.
pub fn copy_of(base: &Path, to: &Path) -> PathBuf {
    let data = to.join("data");
    let shard = data.join("shard-0");
    std::fs::create_dir_all(&shard).unwrap();
    for e in std::fs::read_dir(base.join("data")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(base.join("data/shard-0")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), shard.join(e.file_name())).unwrap();
    }
    data
}

/// Flips every bit of one byte: enough for a checksum, a length, a magic
/// number or a padding check to notice.
pub fn garble(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path, at: u64) {
    std::fs::File::options().write(true).open(path).unwrap().set_len(at).unwrap();
}

/// The active files of `dataset`'s Delta table under the local snapshot
/// root `root`, as the table's current version lists them (sorted).
pub fn table_files(root: &Path, dataset: &str) -> Vec<String> {
    use longbow_engine::snapshot::{Location, SnapshotStore, DEFAULT_RETENTION};
    let store =
        SnapshotStore::open(Location::Local(root.to_owned()), None, "test", DEFAULT_RETENTION, Default::default())
            .expect("open the snapshot store");
    let name = dataset.to_owned();
    let s = store.clone();
    let state = store.block_on(async move { s.load(&name, None).await }).expect("load the table");
    let mut names: Vec<String> =
        state.map(|t| t.manifest.files.into_iter().map(|f| f.name).collect()).unwrap_or_default();
    names.sort();
    names
}
