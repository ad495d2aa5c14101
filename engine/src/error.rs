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
    HeldBack { shard: ShardId, cause: String },
    #[error("producer {producer:?} sent sequence number {seq} for dataset {dataset:?}, expected {expected}: a batch is missing; nothing after it was stored")]
    SequenceGap { dataset: String, producer: String, seq: u64, expected: u64 },
    #[error("producer {producer:?} resent sequence number {seq} for dataset {dataset:?}: stored long ago, older than the oldest this server remembers ({oldest})")]
    SequenceTooOld { dataset: String, producer: String, seq: u64, oldest: u64 },
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
    #[error("shard {shard}: snapshot failed, the WAL is kept: {message}")]
    Snapshot { shard: ShardId, message: String, disk_full: bool },
    /// The snapshot store (object store, Delta log) refused or failed.
    #[error("snapshot store: {0}")]
    Store(String),
    #[error("engine is shutting down")]
    ShuttingDown,
    #[error("WAL corrupt in {path:?} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("startup failed: {0}")]
    Startup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        match self {
            // glommio's errors arrive re-wrapped: the kind survives, the errno not.
            Error::Io { source, .. } => {
                source.raw_os_error() == Some(nix::libc::ENOSPC) || source.kind() == std::io::ErrorKind::StorageFull
            }
            Error::Snapshot { disk_full, .. } => *disk_full,
            Error::DiskFull { .. } => true,
            Error::WalWrite { source, .. } => source.is_disk_full(),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, offset: u64) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, offset, source }
    }

    pub(crate) fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
    ) -> impl FnOnce(glommio::GlommioError<()>) -> Error {
        let path = path.into();
        move |e| Error::Io { op, path, offset, source: e.into() }
    }
}
