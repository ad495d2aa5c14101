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
#[command(name = "longbow", version, about = "Longbow: a durable, high-ingest Arrow Flight store")]
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

    /// Directory for Parquet snapshots (put it on the slow, large volume).
    #[arg(long, env = "LONGBOW_SNAPSHOT_PATH", default_value = "./snapshots")]
    pub snapshot_path: PathBuf,

    /// Time between automatic snapshots (`30s`, `5m`, `1h`). Reloadable.
    #[arg(long, env = "LONGBOW_SNAPSHOT_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// Parquet compression of snapshot files.
    #[arg(long, env = "LONGBOW_SNAPSHOT_COMPRESSION", value_enum, default_value = "snappy")]
    pub snapshot_compression: Compression,

    /// Arrow data held in memory across all shards (e.g. 8GiB; 0 = no limit).
    /// Above it, snapshotted data is evicted and read back from Parquet, and
    /// ingest is slowed, then refused with UNAVAILABLE. Reloadable.
    #[arg(long, env = "LONGBOW_MAX_MEMORY", default_value = "0")]
    pub max_memory: ByteSize,

    /// A file of `NAME=value` lines (e.g. a mounted ConfigMap) whose
    /// reloadable settings (LONGBOW_MAX_MEMORY, LONGBOW_SNAPSHOT_INTERVAL)
    /// override the environment, and are re-read on SIGHUP.
    #[arg(long, env = "LONGBOW_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// WAL segments rotate at this size (e.g. 128MiB); every segment file
    /// is preallocated to it.
    #[arg(long, env = "LONGBOW_MAX_WAL_SIZE", default_value = "128MiB")]
    pub max_wal_size: ByteSize,

    /// WAL segments that snapshots covered are kept, up to this many per
    /// shard, as free files that new segments reuse (0 = delete them all).
    #[arg(long, env = "LONGBOW_WAL_RECYCLE_SEGMENTS", default_value_t = longbow_engine::limits::WAL_RECYCLE_SEGMENTS_DEFAULT)]
    pub wal_recycle_segments: usize,

    /// Largest gRPC message accepted (one FlightData, i.e. one batch).
    #[arg(long, env = "LONGBOW_MAX_MESSAGE_SIZE", default_value = "64MiB")]
    pub max_message_size: ByteSize,

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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("the snapshot interval must be above zero".into());
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
            snapshot_interval: self.snapshot_interval,
            snapshot_compression: match self.snapshot_compression {
                Compression::None => SnapshotCompression::None,
                Compression::Snappy => SnapshotCompression::Snappy,
                Compression::Zstd => SnapshotCompression::Zstd,
            },
            max_memory: self.max_memory.as_u64(),
        }
    }
}
