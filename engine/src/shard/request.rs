//! Messages from the gateway to a shard. Each carries a oneshot for its reply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::channel::oneshot;

use crate::dataset::DatasetInfo;
use crate::error::Result;
use crate::record::Op;
use crate::wal::Lsn;

pub type Reply<T> = oneshot::Sender<Result<T>>;

/// One DoPut stream as the shard sees it. Once any of its batches fails,
/// the stream is failed: none of its later batches is stored, wherever it
/// waits (inbox or committer queue). The gateway fails it too when the
/// client goes away, so unanswered batches are not stored behind its back.
#[derive(Debug, Clone, Default)]
pub struct PutStream {
    failed: Arc<AtomicBool>,
}

impl PutStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// A durable batch: its LSN, and when its commit became durable (the
/// gateway measures the acknowledgement's way back from there).
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub lsn: Lsn,
    pub durable_at: Instant,
    /// An idempotent producer's retry of a batch stored before: `lsn` is
    /// the original one and nothing was stored now.
    pub duplicate: bool,
}

pub use crate::record::ProducerSeq;

/// A write on its way to the WAL: its [`Op`], and what the shard needs to
/// answer it. The same value goes from the gateway's request through the
/// committer's queue, and the WAL frame is written from its `op`.
#[derive(Debug)]
pub struct Write {
    pub dataset: String,
    pub op: Op,
    /// The DoPut stream of a batch (a fresh one for other writes): not
    /// stored if it has failed before the write is committed.
    pub stream: PutStream,
    pub queued_at: Instant,
    /// Answered once the write is durable (a drop: once its snapshot files
    /// are gone too). A schema the dataset already had durably is answered
    /// at once with `duplicate: true` and the dataset's last LSN.
    pub reply: Reply<Committed>,
}

/// What a read sees: rows evicted from memory are read from `files` (in
/// order), then `batches`.
#[derive(Debug)]
pub struct DatasetRead {
    pub schema: SchemaRef,
    /// The snapshot files holding evicted rows, in order (read them with
    /// `snapshot::read_objects`): files a compaction replaces stay in
    /// storage for the retention period, so this read keeps them.
    pub files: Vec<crate::snapshot::SnapshotObject>,
    pub batches: Vec<RecordBatch>,
}

/// A consistent view of one dataset for queries and change feeds, taken on
/// the shard in one step: the snapshot files holding evicted rows (every
/// row with an LSN up to `evicted_lsn`) and the batches in memory (all
/// above it), each with its LSN. A file is named by its path under the
/// snapshot root (`<dataset>/<file>`), so a reader can open it through any
/// object store rooted there.
#[derive(Debug, Clone)]
pub struct ScanView {
    pub schema: SchemaRef,
    /// Files whose rows are not in memory and have LSNs above the scan's
    /// `after_lsn`, oldest first.
    pub files: Vec<ScanFile>,
    /// Batches in memory with LSNs above `after_lsn`, ascending; at most
    /// the scan's `max_batches`.
    pub batches: Vec<(Lsn, RecordBatch)>,
    pub evicted_lsn: Lsn,
    /// LSN of the dataset's newest durable record.
    pub last_lsn: Lsn,
}

/// One snapshot file of a [`ScanView`].
#[derive(Debug, Clone)]
pub struct ScanFile {
    /// Relative to the snapshot root: `<dataset>/<file name>`.
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
}

/// What [`Request::Scan`] asks for.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest {
    /// Only rows logged after this LSN (0: all).
    pub after_lsn: Lsn,
    /// At most this many in-memory batches.
    pub max_batches: usize,
    /// When nothing is newer than `after_lsn`, answer only once a batch of
    /// the dataset becomes durable (or it is dropped: `NotFound`).
    pub wait: bool,
}

/// A shard's figures for `get_stats` and the gateway's gauges.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    pub memory_bytes: u64,
    /// Every file in the WAL directory: segments and free files.
    pub wal_bytes: u64,
    pub wal_segments: u64,
    /// Rows logged and not yet in any snapshot file (all in memory), and
    /// their batches.
    pub unsnapshotted_rows: u64,
    pub unsnapshotted_batches: u64,
    /// The filesystems of the shard's WAL directory and of the snapshot
    /// root (`None` if `statvfs` failed).
    pub wal_volume: Option<VolumeUsage>,
    pub snapshot_volume: Option<VolumeUsage>,
    /// Free files (preallocated or recycled) waiting to become segments.
    pub wal_free_files: u64,
}

/// A filesystem's size and free space, from `statvfs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub size_bytes: u64,
    /// Free for an unprivileged process (`f_bavail`): what Longbow can use.
    pub available_bytes: u64,
    /// Used by anyone (size - `f_bfree`).
    pub used_bytes: u64,
}

impl VolumeUsage {
    pub fn of(path: &std::path::Path) -> Option<Self> {
        let s = nix::sys::statvfs::statvfs(path).ok()?;
        let block = s.fragment_size() as u64;
        let size_bytes = s.blocks() as u64 * block;
        Some(Self {
            size_bytes,
            available_bytes: s.blocks_available() as u64 * block,
            used_bytes: size_bytes.saturating_sub(s.blocks_free() as u64 * block),
        })
    }
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
    /// A schema, a batch or a drop (see [`Write`]).
    Write(Write),
    /// A dataset's schema and data, as of now.
    Get {
        dataset: String,
        reply: Reply<DatasetRead>,
    },
    /// A consistent view for queries and change feeds (see [`ScanView`]).
    Scan {
        dataset: String,
        scan: ScanRequest,
        reply: Reply<ScanView>,
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
    /// Snapshot what the table lacks of a dataset another node owns now,
    /// then forget it here; its table stays (see `snapshots::hand_over`).
    HandOver {
        dataset: String,
        reply: Reply<()>,
    },
    /// Forget a dataset another node owns now, durably, without handing it
    /// over: its owner dropped it (see `snapshots::forget`). `true` if this
    /// shard held it.
    Forget {
        dataset: String,
        reply: Reply<bool>,
    },
    /// Read a dataset's table again: another node handed rows over into it.
    Refresh {
        dataset: String,
        reply: Reply<()>,
    },
    /// A new snapshot interval; the shared memory budget has changed too.
    Configure {
        snapshot_interval: Duration,
    },
    Stats {
        reply: Reply<ShardStats>,
    },
    /// Finish pending writes, seal the WAL and stop.
    Shutdown {
        reply: Reply<()>,
    },
    /// Panic the shard's thread (tests of what a panic does).
    #[cfg(feature = "fault-injection")]
    Panic,
}
