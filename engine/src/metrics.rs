//! Engine metrics, registered by the server into its Prometheus registry.
//! Every metric here is an atomic; shards update them without locks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u32,
}

/// A step of a DoPut batch's way from the socket back to its
/// acknowledgement: `longbow_put_stage_duration_seconds{stage}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// Gateway: FlightData checked and turned into a batch.
    Decode,
    /// From the gateway's hand-off until the committer takes the batch.
    Queue,
    /// The commit's write (per commit).
    CommitWrite,
    /// The commit's fdatasync (per commit).
    Fdatasync,
    /// From durable until the gateway holds the acknowledgement.
    Ack,
    /// From the acknowledgement until the transport takes the PutResult.
    Send,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Decode, Stage::Queue, Stage::CommitWrite, Stage::Fdatasync, Stage::Ack, Stage::Send];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Queue => "queue",
            Stage::CommitWrite => "commit_write",
            Stage::Fdatasync => "fdatasync",
            Stage::Ack => "ack",
            Stage::Send => "send",
        }
    }
}

/// The WAL's I/O engine (`uring`, `sync`, `sim`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabel {
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone)]
pub struct EngineMetrics(Arc<Inner>);

pub struct Inner {
    pub wal_writes: Family<StatusLabel, Counter>,
    /// Members of `wal_writes`, looked up once.
    pub wal_writes_ok: Counter,
    pub wal_writes_error: Counter,
    pub wal_bytes_written: Counter,
    /// Of those, record batch bodies written from the memory they arrived
    /// in (frame version 3: no copy into a commit buffer).
    pub wal_bytes_written_in_place: Counter,
    pub wal_commit_seconds: Histogram,
    pub wal_commit_batches: Histogram,
    pub put_ack_seconds: Histogram,
    pub snapshot_operations: Family<StatusLabel, Counter>,
    /// Snapshot runs without their compactions.
    pub snapshot_seconds: Histogram,
    /// Per shard: Unix time of its last run over all datasets that
    /// succeeded (absent until the first).
    pub snapshot_last_success: Family<ShardLabel, Gauge<f64, AtomicU64>>,
    pub compaction_seconds: Histogram,
    pub compaction_bytes_read: Counter,
    pub compaction_bytes_written: Counter,
    pub snapshot_bytes: Counter,
    pub snapshot_rows: Counter,
    /// Per shard: 1 while its last snapshot run (or the startup probe of a
    /// full volume) failed.
    pub snapshot_failing: Family<ShardLabel, Gauge>,
    /// 1 for the I/O engine the WAL uses.
    pub io_engine: Family<EngineLabel, Gauge>,
    pub evicted_bytes: Counter,
    pub memory_limit_bytes: Gauge,
    pub memory_refusals: Counter,
    pub wal_segments_deleted: Counter,
    pub snapshot_compactions: Counter,
    pub shards_poisoned: Gauge,
    pub wal_segments_created: Counter,
    pub wal_segments_recycled: Counter,
    pub wal_files_preallocated: Counter,
    pub wal_rotations_unprepared: Counter,
    pub wal_extending_writes: Counter,
    pub wal_commits_overlapped: Counter,
    pub wal_replay_seconds: Histogram,
    pub wal_replay_bytes: Counter,
    pub wal_torn_tails: Counter,
    pub rows_ingested: Counter,
    pub batches_ingested: Counter,
    pub datasets: Gauge,
    pub records: Gauge,
    pub memory_bytes: Gauge,
    pub shard_queue_depth: Family<ShardLabel, Gauge>,
    pub put_stage_seconds: Family<StageLabel, Histogram>,
    /// Members of `put_stage_seconds`, in `Stage::ALL` order, looked up once.
    stages: [Histogram; 6],
    pub commits_throttled: Counter,
    pub batches_not_stored: Counter,
    pub batches_deduplicated: Counter,
}

impl std::ops::Deref for EngineMetrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let wal_writes = Family::<StatusLabel, Counter>::default();
        let wal_writes_ok = wal_writes.get_or_create(&StatusLabel { status: "ok" }).clone();
        let wal_writes_error = wal_writes.get_or_create(&StatusLabel { status: "error" }).clone();
        // 5 µs .. ~5 s
        let put_stage_seconds = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(5e-6, 2.0, 20))
        });
        let stages = Stage::ALL.map(|s| put_stage_seconds.get_or_create(&StageLabel { stage: s.name() }).clone());
        // Both outcomes from the start, so that `increase(...{status="error"})`
        // sees the first failure.
        let snapshot_operations = Family::<StatusLabel, Counter>::default();
        for status in ["ok", "error"] {
            let _ = snapshot_operations.get_or_create(&StatusLabel { status });
        }
        Self(Arc::new(Inner {
            wal_writes,
            wal_writes_ok,
            wal_writes_error,
            wal_bytes_written: Counter::default(),
            wal_bytes_written_in_place: Counter::default(),
            // 20 µs .. ~2.6 s
            wal_commit_seconds: Histogram::new(exponential_buckets(20e-6, 2.0, 18)),
            wal_commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 20 µs .. ~2.6 s
            put_ack_seconds: Histogram::new(exponential_buckets(20e-6, 2.0, 18)),
            snapshot_operations,
            // 1 ms .. ~9 min
            snapshot_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 20)),
            snapshot_last_success: Family::default(),
            // 1 ms .. ~9 min
            compaction_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 20)),
            compaction_bytes_read: Counter::default(),
            compaction_bytes_written: Counter::default(),
            snapshot_bytes: Counter::default(),
            snapshot_rows: Counter::default(),
            snapshot_failing: Family::default(),
            io_engine: Family::default(),
            evicted_bytes: Counter::default(),
            memory_limit_bytes: Gauge::default(),
            memory_refusals: Counter::default(),
            wal_segments_deleted: Counter::default(),
            snapshot_compactions: Counter::default(),
            shards_poisoned: Gauge::default(),
            wal_segments_created: Counter::default(),
            wal_segments_recycled: Counter::default(),
            wal_files_preallocated: Counter::default(),
            wal_rotations_unprepared: Counter::default(),
            wal_extending_writes: Counter::default(),
            wal_commits_overlapped: Counter::default(),
            // 1 ms .. ~9 min
            wal_replay_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 20)),
            wal_replay_bytes: Counter::default(),
            wal_torn_tails: Counter::default(),
            rows_ingested: Counter::default(),
            batches_ingested: Counter::default(),
            datasets: Gauge::default(),
            records: Gauge::default(),
            memory_bytes: Gauge::default(),
            shard_queue_depth: Family::default(),
            put_stage_seconds,
            stages,
            commits_throttled: Counter::default(),
            batches_not_stored: Counter::default(),
            batches_deduplicated: Counter::default(),
        }))
    }
}

impl EngineMetrics {
    /// The histogram of one DoPut stage.
    pub fn stage(&self, stage: Stage) -> &Histogram {
        &self.stages[Stage::ALL.iter().position(|s| *s == stage).expect("every stage is in ALL")]
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("longbow");
        r.register("wal_writes", "WAL commits (write + fdatasync) by outcome", self.wal_writes.clone());
        r.register("wal_bytes_written", "Bytes written to WAL segments", self.wal_bytes_written.clone());
        r.register(
            "wal_bytes_written_in_place",
            "Bytes of record batch bodies written to WAL segments from the memory they arrived in, not copied into a commit buffer",
            self.wal_bytes_written_in_place.clone(),
        );
        r.register(
            "wal_commit_duration_seconds",
            "Time of one WAL group commit: write and fdatasync",
            self.wal_commit_seconds.clone(),
        );
        r.register(
            "put_ack_duration_seconds",
            "Gateway time from a decoded DoPut batch to its durable acknowledgement",
            self.put_ack_seconds.clone(),
        );
        r.register("snapshot_operations", "Dataset snapshots by outcome", self.snapshot_operations.clone());
        r.register(
            "snapshot_duration_seconds",
            "Time of one snapshot run of a shard, without the compactions it started",
            self.snapshot_seconds.clone(),
        );
        r.register(
            "snapshot_last_success_timestamp_seconds",
            "Unix time of a shard's last snapshot run over all its datasets that succeeded",
            self.snapshot_last_success.clone(),
        );
        r.register(
            "snapshot_compaction_duration_seconds",
            "Time of one compaction: merged file written, manifest replaced, old files deleted",
            self.compaction_seconds.clone(),
        );
        r.register(
            "snapshot_compaction_bytes_read",
            "Bytes of the snapshot files compactions merged",
            self.compaction_bytes_read.clone(),
        );
        r.register(
            "snapshot_compaction_bytes_written",
            "Bytes of the merged files compactions wrote",
            self.compaction_bytes_written.clone(),
        );
        r.register("snapshot_bytes_written", "Parquet bytes written by snapshots", self.snapshot_bytes.clone());
        r.register("snapshot_rows_written", "Rows written to Parquet by snapshots", self.snapshot_rows.clone());
        r.register(
            "snapshot_failing",
            "1 while a shard's last snapshot run failed (the WAL is kept and grows); 0 once one succeeds",
            self.snapshot_failing.clone(),
        );
        r.register(
            "io_engine",
            "1 for the I/O engine the WAL uses (LONGBOW_IO_ENGINE: uring or sync)",
            self.io_engine.clone(),
        );
        r.register(
            "evicted_bytes",
            "Arrow bytes dropped from memory after being snapshotted",
            self.evicted_bytes.clone(),
        );
        r.register("memory_limit_bytes", "Configured memory limit (0 = none)", self.memory_limit_bytes.clone());
        r.register(
            "memory_refusals",
            "Batches refused because the memory limit was reached",
            self.memory_refusals.clone(),
        );
        r.register(
            "wal_segments_deleted",
            "WAL segments released once snapshots covered them (deleted, or kept as free files: wal_segments_recycled)",
            self.wal_segments_deleted.clone(),
        );
        r.register(
            "wal_segments_recycled",
            "Covered WAL segments kept as free files for new segments instead of deleted",
            self.wal_segments_recycled.clone(),
        );
        r.register(
            "wal_files_preallocated",
            "Free WAL files made in the background by writing zeros over a new file",
            self.wal_files_preallocated.clone(),
        );
        r.register(
            "wal_rotations_unprepared",
            "Segment rotations that found no free file ready and waited for one (or made one)",
            self.wal_rotations_unprepared.clone(),
        );
        r.register(
            "wal_extending_writes",
            "WAL writes that extended their file (a commit larger than a segment, or a segment not preallocated)",
            self.wal_extending_writes.clone(),
        );
        r.register(
            "wal_commits_overlapped",
            "WAL commits written while the commit before them was being synced (they start with a durable mark)",
            self.wal_commits_overlapped.clone(),
        );
        r.register(
            "shards_poisoned",
            "Shards that stopped accepting writes after a failed fsync (restart required)",
            self.shards_poisoned.clone(),
        );
        r.register(
            "snapshot_compactions",
            "Runs of small snapshot files merged into one",
            self.snapshot_compactions.clone(),
        );
        r.register("wal_commit_batches", "Batches carried by one WAL group commit", self.wal_commit_batches.clone());
        r.register("wal_segments_created", "WAL segment files created", self.wal_segments_created.clone());
        r.register(
            "wal_replay_duration_seconds",
            "Time to replay one shard's WAL at startup",
            self.wal_replay_seconds.clone(),
        );
        r.register("wal_replay_bytes", "WAL bytes read during replay", self.wal_replay_bytes.clone());
        r.register("wal_torn_tails", "Torn WAL tails found and truncated at startup", self.wal_torn_tails.clone());
        r.register("rows_ingested", "Rows made durable", self.rows_ingested.clone());
        r.register("batches_ingested", "Record batches made durable", self.batches_ingested.clone());
        r.register("datasets", "Datasets held", self.datasets.clone());
        r.register("records", "Rows held in memory", self.records.clone());
        r.register("memory_bytes", "Bytes of Arrow data held in memory", self.memory_bytes.clone());
        r.register("shard_queue_depth", "Requests waiting in a shard's inbox", self.shard_queue_depth.clone());
        r.register(
            "put_stage_seconds",
            "Time a DoPut batch spends in each stage: decode, queue, commit_write, fdatasync (per commit), ack, send",
            self.put_stage_seconds.clone(),
        );
        r.register(
            "commits_throttled",
            "Group commits that waited for snapshots to free memory under the memory limit",
            self.commits_throttled.clone(),
        );
        r.register(
            "batches_not_stored",
            "Queued batches dropped unwritten because their DoPut stream had failed or its client had gone",
            self.batches_not_stored.clone(),
        );
        r.register(
            "batches_deduplicated",
            "Idempotent producers' retried batches acknowledged again with their original LSN, not stored twice",
            self.batches_deduplicated.clone(),
        );
    }
}
