//! The server a job talks to: one already running (`--target`) or a
//! `longbow` this process starts (`--spawn-server`) and stops when the job
//! ends. Every workload goes through [`Server::open`]; `recovery` also uses
//! [`Server::kill9`] and [`Server::restart`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow_flight::flight_service_client::FlightServiceClient;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;

/// HTTP/2 flow-control window, as Longbow's gateway uses.
pub const WINDOW_BYTES: u32 = 16 << 20;
/// How long a spawned server may take to print its ready line (WAL replay included).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a spawned server may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the spawned server's stderr kept to explain a failure.
const LOG_TAIL_LINES: usize = 40;
const DEFAULT_TARGET: &str = "http://127.0.0.1:3000";

pub type Client = FlightServiceClient<InterceptedService<tonic::transport::Channel, BearerAuth>>;

/// How clients reach the server of the job running now (jobs run one after
/// another; [`Server::open`] sets it).
static ACCESS: Mutex<Access> = Mutex::new(Access { token: None, tls_ca: None });

#[derive(Clone)]
struct Access {
    token: Option<String>,
    tls_ca: Option<PathBuf>,
}

/// Sends `authorization: Bearer <token>` on every call when a token is set.
#[derive(Clone)]
pub struct BearerAuth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[derive(clap::Args, Clone, Debug, Default, Serialize)]
#[command(next_help_heading = "Server (a running one, or one this process starts)")]
pub struct ServerArgs {
    /// Flight address of a running server [default: http://127.0.0.1:3000].
    #[arg(long, visible_alias = "addr", value_name = "URL", conflicts_with = "spawn_server")]
    pub target: Option<String>,
    /// Start `longbow` for this job (loopback, ephemeral ports) and stop it afterwards.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub spawn_server: bool,
    /// The `longbow` binary to start [default: `longbow` beside this executable].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// WAL directory of the spawned server, used as it is [default: a fresh
    /// temporary directory under $TMPDIR, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub data_path: Option<PathBuf>,
    /// Snapshot directory of the spawned server [default: beside the data directory].
    #[arg(long, value_name = "DIR")]
    pub snapshot_path: Option<PathBuf>,
    /// Shards of the spawned server [default: the server's, one per CPU].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Extra environment for the spawned server, e.g. LONGBOW_PIN_CORES=false
    /// or LONGBOW_SNAPSHOT_COMPRESSION=none (repeat it for several).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_env)]
    pub server_env: Vec<String>,
    /// Bearer token for a server started with LONGBOW_AUTH_TOKEN (a spawned
    /// server gets it too). Never printed.
    #[arg(long, env = "LONGBOW_AUTH_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    #[serde(skip)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// target, a server with
    /// LONGBOW_TLS_CERT.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// A server a job uses. A spawned one is stopped (SIGTERM) by [`Server::stop`]
/// and killed if dropped while running.
pub struct Server {
    addr: String,
    spawned: Option<Spawned>,
}

struct Spawned {
    binary: PathBuf,
    data_path: PathBuf,
    snapshot_path: PathBuf,
    shards: Option<usize>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Removed on drop, after the child is gone.
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Connects to `--target`, or starts a server when `--spawn-server` is
    /// given or `spawn` is true (workloads that must own the server).
    pub async fn open(args: &ServerArgs, spawn: bool) -> anyhow::Result<Self> {
        *ACCESS.lock().expect("access lock") = Access { token: args.token.clone(), tls_ca: args.tls_ca.clone() };
        if !(args.spawn_server || spawn) {
            let spawn_only = [
                ("--binary", args.binary.is_some()),
                ("--data-path", args.data_path.is_some()),
                ("--snapshot-path", args.snapshot_path.is_some()),
                ("--shards", args.shards.is_some()),
                ("--server-env", !args.server_env.is_empty()),
            ];
            if let Some((flag, _)) = spawn_only.iter().find(|(_, set)| *set) {
                bail!("{flag} applies to a spawned server: add --spawn-server");
            }
            let target = args.target.as_deref().unwrap_or(DEFAULT_TARGET);
            let addr = if target.contains("://") { target.to_owned() } else { format!("http://{target}") };
            return Ok(Self { addr, spawned: None });
        }
        if let Some(target) = &args.target {
            bail!("this workload starts its own server; --target {target} cannot be used with it");
        }
        let binary = match &args.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("longbow"),
        };
        let (tmp, data_path) = match &args.data_path {
            Some(p) => (None, p.clone()),
            None => {
                let tmp = tempfile::Builder::new().prefix("longbow-bench-").tempdir()?;
                let data = tmp.path().join("data");
                (Some(tmp), data)
            }
        };
        let snapshot_path = args.snapshot_path.clone().unwrap_or_else(|| sibling(&data_path, "snapshots"));
        let mut spawned = Spawned {
            binary,
            data_path,
            snapshot_path,
            shards: args.shards,
            env: args
                .server_env
                .iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain(args.token.iter().map(|t| ("LONGBOW_AUTH_TOKEN".to_owned(), t.clone())))
                .collect(),
            child: None,
            stderr_tail: Arc::default(),
            _tmp: tmp,
        };
        let addr = spawned.start().await?;
        Ok(Self { addr, spawned: Some(spawned) })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn data_path(&self) -> Option<&Path> {
        self.spawned.as_ref().map(|s| s.data_path.as_path())
    }

    /// What the report says about the server.
    pub fn describe(&self) -> serde_json::Value {
        match &self.spawned {
            None => serde_json::json!({ "target": self.addr, "spawned": false }),
            Some(s) => serde_json::json!({
                "target": self.addr, "spawned": true, "binary": s.binary, "shards": s.shards,
                "data_path": s.data_path, "snapshot_path": s.snapshot_path,
                "env": s.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            }),
        }
    }

    /// The last lines the spawned server wrote on stderr (empty for `--target`).
    pub fn log_tail(&self) -> String {
        self.spawned.as_ref().map(|s| s.tail()).unwrap_or_default()
    }

    /// SIGKILL the spawned server and wait for it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let s = self.spawned.as_mut().context("kill -9 needs a spawned server")?;
        let mut child = s.child.take().context("server not running")?;
        child.kill().await?;
        Ok(())
    }

    /// Starts the spawned server again on the same directories; returns how
    /// long it took to print its ready line.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let s = self.spawned.as_mut().context("restart needs a spawned server")?;
        if s.child.is_some() {
            bail!("server still running");
        }
        let t0 = Instant::now();
        self.addr = s.start().await?;
        Ok(t0.elapsed())
    }

    /// SIGTERM the spawned server and wait for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(s) = self.spawned.as_mut() else { return Ok(()) };
        let Some(mut child) = s.child.take() else { return Ok(()) };
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) if status.as_ref().is_ok_and(|s| s.success()) => Ok(()),
            Ok(status) => bail!("server exited with {:?} after SIGTERM:\n{}", status, s.tail()),
            Err(_) => {
                child.kill().await?;
                bail!("server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed")
            }
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.addr).await
    }
}

fn sibling(path: &Path, name: &str) -> PathBuf {
    path.parent().map_or_else(|| PathBuf::from(name), |p| p.join(name))
}

impl Spawned {
    /// Starts the binary and waits for `longbow ready flight=<addr> …`.
    async fn start(&mut self) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .arg("--data-path")
            .arg(&self.data_path)
            .arg("--snapshot-path")
            .arg(&self.snapshot_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = self.shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.binary.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = self.stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut t = tail.lock().expect("log lock");
                if t.len() == LOG_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("longbow ready flight=") {
                    return Ok(Some(rest.split_whitespace().next().unwrap_or_default().to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let addr = match ready {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await?;
                // The stderr reader may still be copying the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!("{} exited ({status}) before it was ready:\n{}", self.binary.display(), self.tail())
            }
            Err(_) => bail!("{} not ready after {READY_TIMEOUT:?}:\n{}", self.binary.display(), self.tail()),
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(format!("http://{addr}"))
    }

    fn tail(&self) -> String {
        let t = self.stderr_tail.lock().expect("log lock");
        t.iter().map(|l| format!("  | {l}\n")).collect()
    }
}

/// A Flight client with the transport settings Longbow's gateway uses.
/// With `--token`, every call carries it; an https:// address needs
/// `--tls-ca`.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let access = ACCESS.lock().expect("access lock").clone();
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES);
    if addr.starts_with("https://") {
        let Some(ca) = &access.tls_ca else { bail!("{addr} speaks TLS: give the CA certificate with --tls-ca") };
        let pem = std::fs::read(ca).with_context(|| format!("reading --tls-ca {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
    let auth = match &access.token {
        Some(t) => Some(format!("Bearer {t}").parse().context("--token must be printable ASCII")?),
        None => None,
    };
    Ok(FlightServiceClient::with_interceptor(channel, BearerAuth(auth))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}
