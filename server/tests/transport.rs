//! The Flight port under abuse, through raw HTTP/2 (the `h2` crate, and
//! hand-made frames where a well-behaved client would not do the harm):
//! declared-but-unsent messages cost no memory, and the limits on streams,
//! connections, headers, idle and silent peers, and descriptors apply.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DIM: i32 = 8;
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";
const LIST_ACTIONS: &str = "/arrow.flight.protocol.FlightService/ListActions";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const GET_FLIGHT_INFO: &str = "/arrow.flight.protocol.FlightService/GetFlightInfo";

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// The value of an unlabelled metric in `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A gRPC message prefix: uncompressed, `len` bytes.
fn grpc_prefix(len: u32) -> Vec<u8> {
    let mut p = vec![0];
    p.extend_from_slice(&len.to_be_bytes());
    p
}

fn grpc_request(addr: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

type H2Connection = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// An HTTP/2 connection (its frames are driven by a task, which ends when
/// the connection does).
async fn h2_connect(addr: &str) -> (h2::client::SendRequest<Bytes>, H2Connection) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

/// Whether the connection task ends within `limit`.
async fn ends_within(task: &mut H2Connection, limit: Duration) -> bool {
    tokio::time::timeout(limit, task).await.is_ok()
}

/// A unary gRPC call with an empty request message; the HTTP status.
async fn empty_call(send: &h2::client::SendRequest<Bytes>, addr: &str, path: &str) -> Result<u16, h2::Error> {
    let mut send = send.clone().ready().await?;
    let (response, mut body) = send.send_request(grpc_request(addr, path), false)?;
    body.send_data(Bytes::from(grpc_prefix(0)), true)?;
    Ok(response.await?.status().as_u16())
}

/// A gRPC message: prefix and body.
fn grpc_message(body: &[u8]) -> Vec<u8> {
    [grpc_prefix(body.len() as u32), body.to_vec()].concat()
}

/// Sends `body` (gRPC messages) as a whole call; returns the final status:
/// (`grpc-status`, decoded `grpc-message`), from the response headers of a
/// trailers-only answer or else from the trailers.
async fn call_status(send: &h2::client::SendRequest<Bytes>, addr: &str, path: &str, body: Vec<u8>) -> (String, String) {
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut stream) = send.send_request(grpc_request(addr, path), false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    let status_of = |h: &http::HeaderMap| {
        let status = tonic::Status::from_header_map(h)?;
        Some((h["grpc-status"].to_str().unwrap().to_owned(), status.message().to_owned()))
    };
    if let Some(s) = status_of(response.headers()) {
        return s;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    status_of(&trailers).expect("a status in the trailers")
}

/// HTTP/2 written by hand, for what a well-behaved client library refuses
/// to do (ignore the server's SETTINGS).
struct RawH2 {
    tcp: TcpStream,
}

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;

impl RawH2 {
    /// Preface and empty SETTINGS; if `ack`, waits for the server's SETTINGS
    /// and acknowledges them (only then does the server apply its limits).
    async fn connect(addr: &str, ack: bool) -> RawH2 {
        let mut raw = RawH2 { tcp: TcpStream::connect(addr).await.unwrap() };
        raw.tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        raw.frame(FRAME_SETTINGS, 0, 0, &[]).await;
        if ack {
            loop {
                let (kind, flags, _, _) = raw.read_frame().await.expect("server SETTINGS");
                if kind == FRAME_SETTINGS && flags & FLAG_ACK == 0 {
                    break;
                }
            }
            raw.frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]).await;
        }
        raw
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.tcp.write_all(&f).await.unwrap();
    }

    /// (type, flags, stream, payload), or None at the end of the connection.
    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut h = [0u8; 9];
        self.tcp.read_exact(&mut h).await.ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some((h[3], h[4], stream, payload))
    }

    /// Opens `stream` with a POST to `path` (HPACK literals, no indexing).
    async fn open_stream(&mut self, stream: u32, path: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            block.push(0x00);
            for s in [name, value] {
                assert!(s.len() < 127);
                block.push(s.len() as u8);
                block.extend_from_slice(s.as_bytes());
            }
        }
        self.frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block).await;
    }

    /// The RST_STREAM frames (stream, error code) read within `window`.
    async fn resets_within(&mut self, window: Duration) -> Vec<(u32, u32)> {
        let deadline = tokio::time::Instant::now() + window;
        let mut resets = Vec::new();
        while let Ok(Some((kind, _, stream, payload))) = tokio::time::timeout_at(deadline, self.read_frame()).await {
            if kind == FRAME_RST_STREAM {
                resets.push((stream, u32::from_be_bytes(payload[..4].try_into().unwrap())));
            }
        }
        resets
    }
}

/// 4 connections × 100 streams, each declaring a message of just under the
/// 64 MiB limit and sending one byte of it (27 KiB of traffic in all). tonic
/// alone reserved the declared length per stream on reading the prefix
/// (65 -> 946 MiB of RSS, kept after the streams closed); now nothing is
/// reserved for bytes that have not arrived. The bound: 64 KiB per open
/// stream (h2 and tonic state, a handler waiting for its first message)
/// over the RSS before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_declaring_huge_messages_hold_no_memory() {
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 100; // the default LONGBOW_MAX_CONCURRENT_STREAMS
    const BOUND_PER_STREAM: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &[]);
    let pid = server.child.id();
    let mut client = server.client().await;
    put(&mut client, "warm", vec![vector_batch(0, 100, DIM)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pid);

    let mut held = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let (send, task) = h2_connect(&server.flight).await;
        for _ in 0..STREAMS {
            let mut ready = send.clone().ready().await.unwrap();
            let (response, mut body) = ready.send_request(grpc_request(&server.flight, DO_PUT), false).unwrap();
            let mut bytes = grpc_prefix((64 << 20) - 1);
            bytes.push(0x0a);
            body.send_data(Bytes::from(bytes), false).unwrap();
            held.push((response, body));
        }
        connections.push((send, task));
    }
    // Let the server read all of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, task) in &connections {
        assert!(!task.is_finished(), "the server keeps the connections");
    }
    let during = rss_bytes(pid);
    let bound = (CONNECTIONS * STREAMS) as u64 * BOUND_PER_STREAM;
    eprintln!(
        "RSS before {} MiB, with {} streams open {} MiB (+{} KiB per stream), bound +{} MiB",
        before >> 20,
        CONNECTIONS * STREAMS,
        during >> 20,
        (during.saturating_sub(before) / (CONNECTIONS * STREAMS) as u64) >> 10,
        bound >> 20
    );
    assert!(during < before + bound, "RSS {before} -> {during} with 400 streams declaring 64 MiB each");
    // The server still serves, on its other connections too.
    put(&mut client, "warm", vec![vector_batch(100, 100, DIM)]).await.unwrap();

    drop(held);
    drop(connections);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid);
    assert!(after < before + bound, "RSS {before} -> {after} after the streams closed");
    assert_eq!(rows(&get(&mut client, "warm").await.unwrap()), 200);
    server.terminate();
}

/// SETTINGS_MAX_CONCURRENT_STREAMS: a client that ignores it gets the
/// stream above the limit refused (RST_STREAM REFUSED_STREAM); one that
/// follows it (h2) queues its fifth call until one of four ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_the_per_connection_limit_are_refused_or_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &["--max-concurrent-streams", "4"]);

    let mut raw = RawH2::connect(&server.flight, true).await;
    for stream in [1, 3, 5, 7, 9] {
        raw.open_stream(stream, DO_PUT).await;
    }
    assert_eq!(raw.resets_within(Duration::from_millis(1500)).await, vec![(9, REFUSED_STREAM)]);

    let (send, _task) = h2_connect(&server.flight).await;
    let started = Instant::now();
    while send.current_max_send_streams() != 4 {
        assert!(started.elapsed() < Duration::from_secs(5), "the server advertises 4 streams");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut ready = send.clone().ready().await.unwrap();
        open.push(ready.send_request(grpc_request(&server.flight, DO_PUT), false).unwrap());
    }
    let fifth = tokio::spawn({
        let send = send.clone();
        let addr = server.flight.clone();
        async move { empty_call(&send, &addr, LIST_ACTIONS).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!fifth.is_finished(), "the fifth call waits while four streams are open");
    drop(open.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), fifth).await.expect("runs once one ends");
    assert_eq!(status.unwrap().unwrap(), 200);
    server.terminate();
}

/// LONGBOW_MAX_CONNECTIONS: the connection above it is closed on arrival,
/// logged and counted; once one closes, a new client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_limit_are_closed_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &["--max-connections", "2"]);
    let (first, first_task) = h2_connect(&server.flight).await;
    let (second, _second_task) = h2_connect(&server.flight).await;
    assert_eq!(empty_call(&first, &server.flight, HEALTH_CHECK).await.unwrap(), 200);
    assert_eq!(empty_call(&second, &server.flight, HEALTH_CHECK).await.unwrap(), 200);

    let (third, mut third_task) = h2_connect(&server.flight).await;
    assert!(ends_within(&mut third_task, Duration::from_secs(3)).await, "the third connection is closed");
    assert!(empty_call(&third, &server.flight, HEALTH_CHECK).await.is_err());
    let metrics = server.metrics_text().await;
    assert_eq!(metric(&metrics, "longbow_connections_refused_total"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "longbow_connections_open"), 2.0);
    assert_eq!(metric(&metrics, "longbow_connections_max"), 2.0);
    assert!(server.log().contains("connection limit reached"), "{}", server.log());

    drop(first);
    first_task.abort();
    let started = Instant::now();
    while metric(&server.metrics_text().await, "longbow_connections_open") != 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the closed connection frees its slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = server.client().await;
    put(&mut client, "x", vec![vector_batch(0, 3, DIM)]).await.unwrap();
    server.terminate();
}

/// LONGBOW_MAX_HEADER_SIZE: a request whose headers exceed it is refused
/// (HTTP 431 and REFUSED_STREAM); below it, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Server::try_start(&dir.path().join("bad"), 1, &["--max-header-size", "512B"]).err().unwrap();
    assert!(log.contains("between 1KiB and 16MiB"), "{log}");

    let server = Server::start(&dir.path().join("data"), 1, &["--max-header-size", "4KiB"]);
    let (send, _task) = h2_connect(&server.flight).await;
    let call = |size: usize| {
        let mut send = send.clone();
        let mut request = grpc_request(&server.flight, HEALTH_CHECK);
        request.headers_mut().insert("x-padding", "a".repeat(size).parse().unwrap());
        async move {
            send = send.ready().await?;
            let (response, mut body) = send.send_request(request, false)?;
            body.send_data(Bytes::from(grpc_prefix(0)), true)?;
            response.await.map(|r| r.status().as_u16())
        }
    };
    assert_eq!(call(2000).await.unwrap(), 200);
    match call(8000).await {
        Ok(status) => assert_eq!(status, 431),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
    }
    assert_eq!(call(2000).await.unwrap(), 200, "the connection goes on");
    server.terminate();
}

/// LONGBOW_IDLE_TIMEOUT: a connection without a stream is closed after it;
/// an open stream, however quiet, keeps its connection; clients reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_clients_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &["--idle-timeout", "1s"]);
    let (idle, mut idle_task) = h2_connect(&server.flight).await;
    assert_eq!(empty_call(&idle, &server.flight, HEALTH_CHECK).await.unwrap(), 200);
    let (busy, mut busy_task) = h2_connect(&server.flight).await;
    let mut ready = busy.clone().ready().await.unwrap();
    let stream = ready.send_request(grpc_request(&server.flight, DO_PUT), false).unwrap();

    assert!(ends_within(&mut idle_task, Duration::from_secs(3)).await, "closed after 1 s without a stream");
    assert!(!ends_within(&mut busy_task, Duration::from_millis(1500)).await, "an open stream keeps it");
    drop(stream);
    assert!(ends_within(&mut busy_task, Duration::from_secs(3)).await, "closed 1 s after its stream ended");
    let metrics = server.metrics_text().await;
    assert_eq!(metric(&metrics, "longbow_connections_idle_closed_total"), 2.0, "{metrics}");

    // The Flight client notices the close and reconnects on its next call.
    let mut client = server.client().await;
    put(&mut client, "x", vec![vector_batch(0, 3, DIM)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rows(&get(&mut client, "x").await.unwrap()), 3);
    server.terminate();
}

/// HTTP/2 keepalive: a peer that stops answering PINGs (its host died, the
/// network dropped it) is closed after interval + timeout; a live client,
/// idle, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_do_not_answer_pings_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--keepalive-interval", "1s", "--keepalive-timeout", "1s", "--idle-timeout", "off"];
    let server = Server::start(&dir.path().join("data"), 1, &args);
    let (live, mut live_task) = h2_connect(&server.flight).await;
    // Never answers: reads frames but writes nothing after its preface.
    let mut silent = RawH2::connect(&server.flight, false).await;
    let started = Instant::now();
    let mut pinged = false;
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some((kind, flags, _, _)) = silent.read_frame().await {
            pinged |= kind == FRAME_PING && flags & FLAG_ACK == 0;
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent peer is closed");
    assert!(pinged, "after a PING");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before interval + timeout");
    assert!(!ends_within(&mut live_task, Duration::from_millis(500)).await, "the live client stays");
    assert_eq!(empty_call(&live, &server.flight, HEALTH_CHECK).await.unwrap(), 200);
    server.terminate();
}

/// Starts the binary with RLIMIT_NOFILE set to (soft, hard) before exec.
fn start_with_nofile(data: &std::path::Path, soft: u64, hard: u64) -> Server {
    let log = data.with_extension("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_longbow"));
    command
        .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false"])
        .arg("--data-path")
        .arg(data)
        .arg("--snapshot-path")
        .arg(data.with_file_name("snapshots"))
        .args(["--shards", "1"])
        .env_remove("LONGBOW_LISTEN_ADDR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("longbow ready") => break l,
            Some(Ok(_)) => continue,
            _ => panic!("longbow did not start:\n{}", std::fs::read_to_string(&log).unwrap()),
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_owned();
    Server { child, flight: field("flight="), metrics: field("metrics="), data: data.to_owned(), log }
}

/// The log without its ANSI colour sequences.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// (soft, hard) "Max open files" of a process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (f[0], f[1])
}

/// The soft RLIMIT_NOFILE is raised to the hard limit at start, and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = nofile_of(std::process::id());
    let hard = hard.min(1 << 16);
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_nofile(&dir.path().join("data"), 256, hard);
    assert_eq!(nofile_of(server.child.id()), (hard, hard));
    let log = without_colours(&server.log());
    assert!(
        log.contains(&format!("RLIMIT_NOFILE (open descriptors: connections, files) soft={hard} hard={hard}")),
        "{log}"
    );
    server.terminate();
}

/// With descriptors exhausted (a hard limit of 128 the server cannot
/// raise), accept fails with EMFILE: the server warns at start that the
/// limit is below LONGBOW_MAX_CONNECTIONS, logs the failures (rate-limited)
/// and counts them, does not spin on the pending connections, and serves
/// again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_logged_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_nofile(&dir.path().join("data"), 128, 128);
    let pid = server.child.id();
    assert!(server.log().contains("RLIMIT_NOFILE leaves too few descriptors"), "{}", server.log());
    let mut sockets = Vec::new();
    for _ in 0..160 {
        sockets.push(TcpStream::connect(&server.flight).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_seconds(pid) - cpu;
    assert!(spent < 0.5, "{spent} s of CPU in 2 s while accept fails: spinning");
    let log = server.log();
    assert!(log.contains("cannot accept Flight connections"), "{log}");
    assert!(log.matches("cannot accept Flight connections").count() <= 2, "rate-limited:\n{log}");

    drop(sockets);
    let started = Instant::now();
    loop {
        let metrics = server.metrics_text().await;
        if metric(&metrics, "longbow_connections_open") == 0.0 {
            assert!(metric(&metrics, "longbow_accept_errors_total") > 0.0, "{metrics}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the connections close:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = server.client().await;
    put(&mut client, "x", vec![vector_batch(0, 3, DIM)]).await.unwrap();
    server.terminate();
}

/// Bytes the client got wrong that tonic refuses before any handler runs
/// are INVALID_ARGUMENT (pyarrow: ArrowInvalid), not tonic's INTERNAL
/// ("failed to decode Protobuf message", e.g. a descriptor path that is not
/// UTF-8) or OUT_OF_RANGE (a message over LONGBOW_MAX_MESSAGE_SIZE); in the
/// response headers (a call failing at once) and in trailers (a DoPut
/// failing after its first message) alike. Other statuses are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_messages_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &["--max-message-size", "1MiB"]);
    let addr = &server.flight;
    let (send, _task) = h2_connect(addr).await;
    // FlightDescriptor { type: PATH, path: [b"\xff\xfe"] }, and as a FlightData's descriptor.
    let bad_descriptor = [0x08, 0x01, 0x1a, 0x02, 0xff, 0xfe];
    let bad_data = [&[0x0a, bad_descriptor.len() as u8][..], &bad_descriptor].concat();
    let good_data = [0x0a, 0x06, 0x08, 0x01, 0x1a, 0x02, b'o', b'k'];

    let (grpc, message) = call_status(&send, addr, GET_FLIGHT_INFO, grpc_message(&bad_descriptor)).await;
    assert_eq!(grpc, "3", "{message}");
    assert!(message.contains("failed to decode Protobuf message") && message.contains("UTF-8"), "{message}");
    let (grpc, message) = call_status(&send, addr, DO_PUT, grpc_message(&bad_data)).await;
    assert_eq!(grpc, "3", "first DoPut message: {message}");
    let (grpc, message) =
        call_status(&send, addr, DO_PUT, [grpc_message(&good_data), grpc_message(&bad_data)].concat()).await;
    assert_eq!(grpc, "3", "a later DoPut message, in the trailers: {message}");
    let (grpc, message) = call_status(&send, addr, DO_PUT, grpc_prefix(2 << 20)).await;
    assert_eq!(grpc, "3", "declared over the limit: {message}");
    assert!(message.contains("too large"), "{message}");
    // Not one of tonic's: kept.
    let (grpc, _) = call_status(&send, addr, GET_FLIGHT_INFO, grpc_message(&[0x08, 0x01, 0x1a, 0x01, b'x'])).await;
    assert_eq!(grpc, "5", "NOT_FOUND stays");

    // Through the Flight client: a 1.4 MiB batch.
    let mut client = server.client().await;
    let e = put(&mut client, "big", vec![vector_batch(0, 40_000, DIM)]).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::InvalidArgument, "{e}");
    put(&mut client, "big", vec![vector_batch(0, 1000, DIM)]).await.unwrap();
    server.terminate();
}
