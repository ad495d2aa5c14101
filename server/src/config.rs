//! Server configuration: CLI flags, each with an environment variable of the
//! same meaning. Reads nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Parser, ValueEnum};
use longbow_engine::engine::Settings;
use longbow_engine::snapshot::SnapshotCompression;
use longbow_engine::{CorruptionPolicy, EngineConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnCorruption {
    /// Refuse to start, naming the damaged file and offset.
    Refuse,
    /// Keep what precedes the damage, drop the rest of that segment, start.
    Truncate,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "longbow",
    version,
    about = "Longbow: a durable, high-ingest Arrow Flight store",
    after_help = "Offline tools (read a stopped server's directories, or copies; change nothing):\n  \
                  longbow wal verify DIR    checksums, commits and the LSN chain; exit 0 clean or torn tail, 3 damage\n  \
                  longbow wal dump DIR [--dataset D] [--from-lsn N] [--json]\n  \
                  \x20                         segments, commits and frames\n  \
                  longbow snapshot ls DIR   datasets, files, rows and covered LSNs of the snapshot tables (Delta)\n\
                  DIR: the data directory or one shard-N in it; for snapshot ls, the snapshot directory. \
                  More: `longbow wal --help`, `longbow snapshot --help`."
)]
pub struct Config {
    /// Address of the Arrow Flight (gRPC) service.
    #[arg(long, env = "LONGBOW_LISTEN_ADDR", default_value = "0.0.0.0:3000")]
    pub listen_addr: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "LONGBOW_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Directory for WAL segments (put it on the fast volume).
    #[arg(long, env = "LONGBOW_DATA_PATH", default_value = "./data")]
    pub data_path: PathBuf,

    /// Number of shards, one pinned core each (default: the CPUs available).
    #[arg(long, env = "LONGBOW_SHARDS")]
    pub shards: Option<usize>,

    /// Where snapshots go: one Delta Lake table per dataset under it. A local
    /// directory (put it on the slow, large volume), or an object-store URL:
    /// `s3://bucket/prefix` (with AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP), `gs://`, `az://`.
    #[arg(long, env = "LONGBOW_SNAPSHOT_PATH", default_value = "./snapshots")]
    pub snapshot_path: PathBuf,

    /// How long snapshot files a compaction replaced stay for readers of
    /// older table versions before VACUUM deletes them (`30s`, `15m`).
    #[arg(long, env = "LONGBOW_SNAPSHOT_RETENTION", default_value = "15m", value_parser = parse_duration_or_zero)]
    pub snapshot_retention: Duration,

    /// Time between automatic snapshots (`30s`, `5m`, `1h`). Reloadable.
    #[arg(long, env = "LONGBOW_SNAPSHOT_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// Parquet compression of snapshot files.
    #[arg(long, env = "LONGBOW_SNAPSHOT_COMPRESSION", value_enum, default_value = "snappy")]
    pub snapshot_compression: Compression,

    /// This node's id: an integer, or a pod name such as `longbow-2` whose
    /// trailing ordinal is taken. It names the node in the snapshot
    /// tables' commits (app id `longbow-<id>-shard-<k>`), so nodes sharing
    /// an object store must have distinct ids.
    #[arg(long, env = "LONGBOW_NODE_ID", default_value = "0", value_parser = parse_node_id)]
    pub node_id: usize,

    /// Every node's Flight URL in index order, comma-separated
    /// (`grpc://longbow-0.longbow:3000,grpc://longbow-1.longbow:3000`).
    /// Each dataset has one owner among them (a rendezvous hash of its
    /// name); any node takes a call for any dataset and forwards it to the
    /// owner. Empty: one node.
    #[arg(long, env = "LONGBOW_PEERS", default_value = "")]
    pub peers: String,

    /// Arrow data held in memory across all shards (e.g. 8GiB; 0 = no limit).
    /// Above it, snapshotted data is evicted and read back from Parquet, and
    /// ingest is held back until snapshots free memory (refused with
    /// UNAVAILABLE only if they free nothing for LONGBOW_BACKPRESSURE_TIMEOUT).
    /// Shared by all shards. Reloadable.
    #[arg(long, env = "LONGBOW_MAX_MEMORY", default_value = "0")]
    pub max_memory: ByteSize,

    /// Memory all running SQL queries (Flight SQL, filtered DoGet tickets)
    /// may hold together in sorts, aggregations and joins (0 = no limit). A
    /// query that needs more fails with RESOURCE_EXHAUSTED; nothing spills
    /// to disk. Separate from LONGBOW_MAX_MEMORY (stored data).
    #[arg(long, env = "LONGBOW_QUERY_MEMORY", default_value = "1GiB")]
    pub query_memory: ByteSize,

    /// Under LONGBOW_MAX_MEMORY, how long a write is held back while
    /// snapshots free nothing at all before it is refused with UNAVAILABLE
    /// (`30s`, `2m`). A client waits at most twice this for an answer.
    #[arg(long, env = "LONGBOW_BACKPRESSURE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub backpressure_timeout: Duration,

    /// How long an idle shard keeps polling before it sleeps (`0s`,
    /// `200us`): a request arriving meanwhile skips a thread wake-up, which
    /// cuts small-batch acknowledgement latency, while each shard's core is
    /// kept busy that long after every burst.
    #[arg(long, env = "LONGBOW_SHARD_SPIN", default_value = "0s", value_parser = parse_duration_or_zero)]
    pub shard_spin: Duration,

    /// How the WAL reads and writes: `uring` (glommio's DMA files over
    /// io_uring for large commits and reads), `sync` (plain `pwrite`,
    /// `pread` and `fdatasync` on O_DIRECT descriptors), or `auto`:
    /// `uring` unless io_uring is refused. Small commits are plain
    /// syscalls either way.
    #[arg(long, env = "LONGBOW_IO_ENGINE", default_value = "auto")]
    pub io_engine: longbow_engine::io::IoEngine,

    /// Bytes of DoPut batches all streams together may hold between being
    /// read off the socket and acknowledged; beyond it, streams are not
    /// read (HTTP/2 flow control pushes back on clients). Default: 16 MiB
    /// per shard (two group commits each: one being written, one filling),
    /// which measured no slower than 256 MiB and keeps it out of the RSS
    /// bound's way.
    #[arg(long, env = "LONGBOW_MAX_INFLIGHT")]
    pub max_inflight: Option<ByteSize>,

    /// A file of `NAME=value` lines (e.g. a mounted ConfigMap) whose
    /// reloadable settings (LONGBOW_MAX_MEMORY, LONGBOW_SNAPSHOT_INTERVAL)
    /// override the environment, and are re-read on SIGHUP.
    #[arg(long, env = "LONGBOW_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// How often the LONGBOW_CONFIG file is checked for changes (`0s`: only
    /// on SIGHUP). Kubernetes swaps a mounted ConfigMap's files within about
    /// a minute of an edit; polling its content needs no inotify (which
    /// misses the symlink flip) and no signal.
    #[arg(long, env = "LONGBOW_CONFIG_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration_or_zero)]
    pub config_poll_interval: Duration,

    /// WAL segments rotate at this size (e.g. 128MiB); every segment file
    /// is preallocated to it.
    #[arg(long, env = "LONGBOW_MAX_WAL_SIZE", default_value = "128MiB")]
    pub max_wal_size: ByteSize,

    /// WAL segments that snapshots covered are kept, up to this many per
    /// shard, as free files that new segments reuse (0 = delete them all).
    #[arg(long, env = "LONGBOW_WAL_RECYCLE_SEGMENTS", default_value_t = longbow_engine::limits::WAL_RECYCLE_SEGMENTS_DEFAULT)]
    pub wal_recycle_segments: usize,

    /// Largest gRPC message accepted (one FlightData, i.e. one batch); at
    /// most 512MiB, so that a batch always fits in one WAL frame.
    #[arg(long, env = "LONGBOW_MAX_MESSAGE_SIZE", default_value = "64MiB", value_parser = parse_message_size)]
    pub max_message_size: ByteSize,

    /// Flight connections open at once; one more is closed on arrival
    /// (its client gets UNAVAILABLE). Each costs a descriptor and up to its
    /// HTTP/2 window (16 MiB) of buffered data; Flight clients multiplex
    /// their calls on one connection, so 1024 serves hundreds of producers.
    #[arg(long, env = "LONGBOW_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// HTTP/2 streams (calls) one connection may have open at once; the
    /// client queues more. 100 is what RFC 9113 asks servers to allow at
    /// least; each DoPut stream can hold a message being received.
    #[arg(long, env = "LONGBOW_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Interval of HTTP/2 PINGs on each connection (`off` to disable). A
    /// client whose host died or was cut off sends no FIN; without pings
    /// its streams hold their memory until TCP gives up (~15 min) or, if
    /// idle, for ever.
    // The full path keeps clap from treating the field as an optional flag:
    // the parser gives the Option (`off` is None).
    #[arg(long, env = "LONGBOW_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = parse_duration_or_off)]
    pub keepalive_interval: ::std::option::Option<Duration>,

    /// A connection whose PING is not answered within this is closed.
    #[arg(long, env = "LONGBOW_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// A connection without an open stream for this long is closed (`off`
    /// to keep them): it frees its descriptor and its connection slot;
    /// clients reconnect on their next call. Pings do not count as use.
    #[arg(long, env = "LONGBOW_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration_or_off)]
    pub idle_timeout: ::std::option::Option<Duration>,

    /// Largest HTTP/2 header list (all headers of a request, decoded)
    /// accepted, 1KiB..16MiB. hyper's default and gRPC's usual limit: a
    /// Flight call carries a few short headers and the bearer token.
    #[arg(long, env = "LONGBOW_MAX_HEADER_SIZE", default_value = "16KiB", value_parser = parse_header_size)]
    pub max_header_size: ByteSize,

    /// What to do with WAL damage that is not a torn tail.
    #[arg(long, env = "LONGBOW_ON_CORRUPTION", value_enum, default_value = "refuse")]
    pub on_corruption: OnCorruption,

    /// Pin each shard to its own CPU.
    #[arg(long, env = "LONGBOW_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_cores: bool,

    /// Seconds to wait for in-flight requests at shutdown before closing them.
    #[arg(long, env = "LONGBOW_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// When set, every Flight call needs `authorization: Bearer <token>`
    /// (the health service stays open for probes).
    #[arg(long, env = "LONGBOW_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// PEM certificate chain for the Flight port; with --tls-key, Flight
    /// (and health) are served over TLS only. Both or neither.
    #[arg(long, env = "LONGBOW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "LONGBOW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): with TLS on, clients must present a
    /// certificate signed by one of them (mutual TLS).
    #[arg(long, env = "LONGBOW_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA certificate(s) this node trusts for its peers' certificates
    /// when LONGBOW_PEERS names `grpc+tls://` URLs. Default:
    /// LONGBOW_TLS_CLIENT_CA, else this node's own certificate (nodes that
    /// share one). The node presents its own certificate to its peers.
    #[arg(long, env = "LONGBOW_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// Log filter (tracing `EnvFilter` syntax: `info`, `longbow=debug`, ...).
    #[arg(long, env = "LONGBOW_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Snappy,
    Zstd,
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 0s, 100us, 1ms)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    Ok(d)
}

/// The settings a running server can change (SIGHUP).
pub fn reloadable(config: &Config) -> Settings {
    Settings { snapshot_interval: config.snapshot_interval, max_memory: config.max_memory.as_u64() }
}

/// Reads `NAME=value` lines and applies the reloadable ones to `base`.
/// Unknown names are ignored with a warning; a bad value is an error.
pub fn apply_file(base: Settings, path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = base;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) =
            line.split_once('=').ok_or_else(|| format!("{}:{}: expected NAME=value", path.display(), n + 1))?;
        let value = value.trim().trim_matches('"');
        match name.trim() {
            "LONGBOW_MAX_MEMORY" => {
                out.max_memory = value
                    .parse::<ByteSize>()
                    .map_err(|e| format!("{}:{}: LONGBOW_MAX_MEMORY {value:?}: {e}", path.display(), n + 1))?
                    .as_u64()
            }
            "LONGBOW_SNAPSHOT_INTERVAL" => {
                out.snapshot_interval = parse_duration(value)
                    .map_err(|e| format!("{}:{}: LONGBOW_SNAPSHOT_INTERVAL {e}", path.display(), n + 1))?
            }
            other => {
                tracing::warn!(name = other, file = %path.display(), "setting in config file is not reloadable or unknown; ignored")
            }
        }
    }
    Ok(out)
}

impl Config {
    pub fn tls(&self) -> crate::tls::TlsPaths {
        crate::tls::TlsPaths {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            data_path: self.data_path.clone(),
            shards: self.shards.unwrap_or_else(longbow_engine::default_shards),
            segment_bytes_max: self.max_wal_size.as_u64(),
            wal_recycle_segments: self.wal_recycle_segments,
            corruption: match self.on_corruption {
                OnCorruption::Refuse => CorruptionPolicy::Refuse,
                OnCorruption::Truncate => CorruptionPolicy::Truncate,
            },
            pin_cores: self.pin_cores,
            snapshot_path: self.snapshot_path.clone(),
            snapshot_store: None,
            owns: None,
            snapshot_interval: self.snapshot_interval,
            snapshot_retention: self.snapshot_retention,
            node: self.node_id.to_string(),
            snapshot_compression: match self.snapshot_compression {
                Compression::None => SnapshotCompression::None,
                Compression::Snappy => SnapshotCompression::Snappy,
                Compression::Zstd => SnapshotCompression::Zstd,
            },
            max_memory: self.max_memory.as_u64(),
            backpressure_timeout: self.backpressure_timeout,
            shard_spin: self.shard_spin,
            storage: std::sync::Arc::new(longbow_engine::io::RealStorage::new(self.io_engine)),
            io_memory_bytes: longbow_engine::limits::SHARD_IO_MEMORY_BYTES,
        }
    }
}

/// A node id: an integer, or a name ending in one (a StatefulSet pod's).
fn parse_node_id(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(format!("node id {s:?}: expected an integer or a name ending in one (longbow-2)"));
    }
    s[s.len() - digits..].parse().map_err(|e| format!("node id {s:?}: {e}"))
}

/// A duration, or `off` (also `0`) for none.
fn parse_duration_or_off(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" | "0" => Ok(None),
        other => parse_duration(other).map(Some),
    }
}

fn parse_message_size(s: &str) -> Result<ByteSize, String> {
    let size: ByteSize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let max = longbow_engine::limits::FRAME_PAYLOAD_BYTES_MAX / 2;
    if !(1 << 10..=max).contains(&size.as_u64()) {
        return Err(format!(
            "{s:?}: the message size limit must be between 1KiB and {} (a batch must fit in one WAL frame with its schema)",
            ByteSize(max)
        ));
    }
    Ok(size)
}

fn parse_header_size(s: &str) -> Result<ByteSize, String> {
    let size: ByteSize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(1 << 10..=16 << 20).contains(&size.as_u64()) {
        return Err(format!("{s:?}: the header size limit must be between 1KiB and 16MiB"));
    }
    Ok(size)
}

impl Config {
    pub fn transport(&self) -> crate::transport::TransportConfig {
        crate::transport::TransportConfig {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            idle_timeout: self.idle_timeout,
            max_header_list_bytes: self.max_header_size.as_u64() as u32,
            max_message_bytes: self.max_message_size.as_u64() as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_size_limit_is_bounded_by_the_wal_frame() {
        assert_eq!(parse_message_size("64MiB").unwrap(), ByteSize::mib(64));
        assert_eq!(parse_message_size("512MiB").unwrap(), ByteSize::mib(512));
        let e = parse_message_size("2GiB").unwrap_err();
        assert!(e.contains("one WAL frame"), "{e}");
        assert!(parse_message_size("10").is_err(), "below 1KiB");
    }

    #[test]
    fn node_ids_are_integers_or_pod_ordinals() {
        assert_eq!(parse_node_id("2"), Ok(2));
        assert_eq!(parse_node_id("longbow-12"), Ok(12));
        assert!(parse_node_id("longbow").is_err());
    }
}
