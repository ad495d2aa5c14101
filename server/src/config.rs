//! Server configuration: CLI flags, each with an environment variable of the
//! same meaning. Reads nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Parser, ValueEnum};
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

    /// WAL segments rotate at this size (e.g. 128MiB).
    #[arg(long, env = "LONGBOW_MAX_WAL_SIZE", default_value = "128MiB")]
    pub max_wal_size: ByteSize,

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

    /// Log filter (tracing `EnvFilter` syntax: `info`, `longbow=debug`, ...).
    #[arg(long, env = "LONGBOW_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Config {
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            data_path: self.data_path.clone(),
            shards: self.shards.unwrap_or_else(longbow_engine::default_shards),
            segment_bytes_max: self.max_wal_size.as_u64(),
            corruption: match self.on_corruption {
                OnCorruption::Refuse => CorruptionPolicy::Refuse,
                OnCorruption::Truncate => CorruptionPolicy::Truncate,
            },
            pin_cores: self.pin_cores,
        }
    }
}
