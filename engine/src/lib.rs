//! The Longbow storage engine: named datasets of Arrow record batches, held
//! in memory by shards and made durable in a per-shard write-ahead log before
//! any write is acknowledged.
//!
//! # Layout
//! - [`engine`]: start here. `Engine::start` locks the data directory,
//!   spawns one glommio executor per shard and waits for WAL replay; its
//!   methods route each call to the shard that owns the dataset.
//! - [`shard`]: a shard's request loop and group-commit task
//!   (`shard/mod.rs`), the `Send + Clone` handle the gateway holds
//!   (`handle.rs`), and startup replay (`recovery.rs`).
//! - [`wal`]: the log of one shard (`mod.rs`: append, rotate, seal), the
//!   segment file's naming and creation (`segment.rs`), the group commit
//!   buffer and its write and sync (`commit.rs`), crash repair
//!   (`repair.rs`), torn-tail versus corruption detection (`replay.rs`),
//!   the frame format (`format.rs`, pure and property-tested), the Arrow
//!   IPC payload (`ipc.rs`) and preallocated and recycled segment files
//!   (`free.rs`: no commit extends a file).
//! - [`io`]: the storage seam, the only code that touches the WAL volume:
//!   the real file system (io_uring or plain syscalls) and a simulator that
//!   forgets what was not synced (`engine/tests/sim.rs` cuts its power).
//! - [`health`]: which shards serve; a watch channel the gateway's health
//!   service follows.
//! - [`snapshot`]: the cold tier, one Delta Lake table per dataset on an
//!   object store (local directory or `s3://`…): uploads, idempotent
//!   commits, compaction commits, VACUUM, drops, ranged read-back, and the
//!   migration of the pre-Delta layout; the shard's snapshot worker is
//!   `shard/snapshots.rs`.
//! - [`record`]: a write (`Schema | Batch | Drop`), one type from the
//!   gateway's request through the committer's queue to its WAL frame.
//! - [`dataset`]: in-memory batches, schemas and name rules; no I/O.
//! - [`layout`]: the data directory's lock, shard count and WAL generation.
//! - [`memory`]: the one memory budget all shards share (atomics).
//! - [`ids`]: the `Lsn`, `ShardId` and `SegmentId` newtypes.
//! - [`routing`], [`limits`], [`error`], [`metrics`]. Test-only fault
//!   injection is on the seams (`io::faulty`, behind the `fault-injection`
//!   feature; `io::sim` and `io::sim_object` in-process).
//!
//! Two choices that may surprise: shards share no state or locks but the
//! memory budget's atomics (a dataset lives on exactly one core, so its
//! writes need no synchronization), and a batch becomes visible to readers only after the
//! commit holding it is durable, so a read never returns data a crash could
//! take back.

pub mod dataset;
pub mod engine;
pub mod error;
pub mod health;
pub mod ids;
pub mod io;
pub mod layout;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod record;
pub mod routing;
pub mod shard;
pub mod snapshot;
pub mod wal;

pub use ids::{Lsn, SegmentId, ShardId};

pub use dataset::DatasetInfo;
pub use engine::{default_shards, Engine, EngineConfig, Owns, Scan};
pub use error::{Error, Result};
pub use metrics::EngineMetrics;
pub use shard::request::{Committed, ProducerSeq, PutStream};
pub use shard::ShardHandle;
pub use wal::replay::CorruptionPolicy;
pub use wal::IpcMessage;
