//! Messages from the gateway to a shard. Each carries a oneshot for its reply.

use std::path::PathBuf;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::channel::oneshot;

use crate::dataset::DatasetInfo;
use crate::error::Result;
use crate::wal::{IpcMessage, Lsn};

pub type Reply<T> = oneshot::Sender<Result<T>>;

/// What a read sees: rows evicted from memory are read from `files` (in
/// order), then `batches`.
#[derive(Debug)]
pub struct DatasetRead {
    pub schema: SchemaRef,
    /// The snapshot files holding evicted rows, in order, opened when the
    /// read was served: a merge that deletes them meanwhile cannot take
    /// them away from this read.
    pub files: Vec<(PathBuf, std::fs::File)>,
    pub batches: Vec<RecordBatch>,
}

/// A shard's figures for `get_stats`.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    pub memory_bytes: u64,
    /// Every file in the WAL directory: segments and free files.
    pub wal_bytes: u64,
    pub wal_segments: u64,
    /// Free files (preallocated or recycled) waiting to become segments.
    pub wal_free_files: u64,
}

/// What one snapshot request did.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    pub datasets: u64,
    pub files_written: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub segments_deleted: u64,
    pub bytes_evicted: u64,
}

pub enum Request {
    /// Create the dataset with this schema if it is new (durably), or check
    /// that the schema matches.
    Open {
        dataset: String,
        schema: SchemaRef,
        reply: Reply<()>,
    },
    /// Log a batch; the reply comes once it is durable.
    Append {
        dataset: String,
        batch: RecordBatch,
        message: IpcMessage,
        reply: Reply<Lsn>,
    },
    /// A dataset's schema and data, as of now.
    Get {
        dataset: String,
        reply: Reply<DatasetRead>,
    },
    /// One dataset's summary, or every dataset's when `dataset` is `None`.
    Info {
        dataset: Option<String>,
        reply: Reply<Vec<DatasetInfo>>,
    },
    /// Snapshot one dataset, or all; the reply comes once files are durable.
    Snapshot {
        dataset: Option<String>,
        reply: Reply<SnapshotReport>,
    },
    /// Drop a dataset durably (WAL tombstone, memory, snapshot files).
    Drop {
        dataset: String,
        reply: Reply<()>,
    },
    /// New reloadable settings: snapshot interval and this shard's memory budget (0 = none).
    Configure {
        snapshot_interval: Duration,
        memory_budget: u64,
    },
    Stats {
        reply: Reply<ShardStats>,
    },
    /// Finish pending writes, seal the WAL and stop.
    Shutdown {
        reply: Reply<()>,
    },
}
