//! The engine's error type. The server maps each variant to a gRPC status in
//! one exhaustive match.

use std::path::PathBuf;
use std::sync::Arc;

use crate::ShardId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path:?} at offset {offset}: {source}")]
    Io { op: &'static str, path: PathBuf, offset: u64, source: std::io::Error },
    #[error("invalid dataset name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("dataset {0:?} not found")]
    NotFound(String),
    #[error("schema mismatch for dataset {dataset:?}: it holds {existing}, the batch has {offered}")]
    SchemaMismatch { dataset: String, existing: String, offered: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("shard {shard} is overloaded: {reason}; retry later")]
    Overloaded { shard: ShardId, reason: &'static str },
    #[error("shard {shard} held this write back under the memory limit and gave up: {cause}; nothing in it was stored, retry later")]
    HeldBack {
        shard: ShardId,
        #[source]
        cause: HeldBackCause,
    },
    #[error("producer {producer:?} sent sequence number {seq} for dataset {dataset:?}, expected {expected}: a batch is missing; nothing after it was stored")]
    SequenceGap { dataset: String, producer: String, seq: u64, expected: u64 },
    #[error("producer {producer:?} resent sequence number {seq} for dataset {dataset:?}: stored long ago, older than the oldest this server remembers ({oldest})")]
    SequenceTooOld { dataset: String, producer: String, seq: u64, oldest: u64 },
    #[error("dataset {dataset:?} was dropped and its snapshot table is not removed yet ({cause}); it cannot be created again until it is, retry later")]
    DropPending { dataset: String, cause: Arc<Error> },
    #[error("not stored: {reason}")]
    NotStored { reason: &'static str },
    #[error("shard {shard} poisoned after a failed fsync; restart required")]
    Poisoned { shard: ShardId },
    /// A failed commit's error, shared by every write in the commit.
    #[error("shard {shard} could not write its WAL: {source}")]
    WalWrite { shard: ShardId, source: Arc<Error> },
    /// A failed WAL write that could not be sealed over: what reached the
    /// disk of it may be replayed, so the write may have been stored.
    #[error("shard {shard} could not write its WAL ({source}), nor seal over the failed write ({seal}); the write may have been stored, check before resending (an idempotent producer's resend is safe)")]
    WalWriteInDoubt { shard: ShardId, source: Arc<Error>, seal: Arc<Error> },
    #[error(
        "shard {shard}: the WAL volume is full ({source}); nothing in this write was stored, retry once space is freed"
    )]
    DiskFull { shard: ShardId, source: Arc<Error> },
    #[error("shard {shard}: snapshot failed, the WAL is kept: {source}")]
    Snapshot { shard: ShardId, source: Arc<Error> },
    /// The snapshot store (object store, Delta log) refused or failed.
    #[error("snapshot store: {op}: {source}")]
    Store { op: String, source: BoxError },
    #[error("engine is shutting down")]
    ShuttingDown,
    #[error("WAL corrupt in {path:?} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("startup failed: {0}")]
    Startup(String),
    /// A setting or a resource the start needs was refused.
    #[error("startup failed: {what}: {source}")]
    StartupFailed { what: String, source: BoxError },
    /// A blocking task (an fsync off the executor) panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The cause an error carries from a crate whose error type it keeps as is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a write held back under the memory limit was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HeldBackCause {
    #[error("snapshots are failing, so memory cannot be freed: {0}")]
    SnapshotsFailing(#[source] Arc<Error>),
    #[error("snapshots freed no memory for {0:?} (LONGBOW_BACKPRESSURE_TIMEOUT)")]
    NoProgress(std::time::Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an error from another crate (object_store, deltalake, parquet)
/// says the volume is full: an `io::Error` with ENOSPC or EDQUOT somewhere
/// in its chain of sources, or, where a layer kept its cause only as text
/// (Delta's kernel), that text.
fn chain_is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(nix::libc::ENOSPC | nix::libc::EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
            {
                return true;
            }
        }
        cur = e.source();
    }
    let text = e.to_string();
    ["No space left on device", "Disk quota exceeded"].iter().any(|m| text.contains(m))
}

impl Error {
    /// Whether this is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        match self {
            // glommio's errors arrive re-wrapped: the kind survives, the errno not.
            Error::Io { source, .. } => {
                source.raw_os_error() == Some(nix::libc::ENOSPC) || source.kind() == std::io::ErrorKind::StorageFull
            }
            Error::Snapshot { source, .. } | Error::WalWrite { source, .. } => source.is_disk_full(),
            Error::DiskFull { .. } => true,
            Error::Store { source, .. } => chain_is_disk_full(source.as_ref()),
            _ => false,
        }
    }

    /// A snapshot store failure, its cause kept.
    pub(crate) fn store(op: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Store { op: op.into(), source: source.into() }
    }

    /// A start that cannot go on, its cause kept.
    pub(crate) fn startup(what: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::StartupFailed { what: what.into(), source: source.into() }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, offset: u64) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, offset, source }
    }
}
