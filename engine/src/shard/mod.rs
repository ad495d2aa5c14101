//! A shard: one glommio executor pinned to a core, owning its datasets, its
//! WAL directory and their snapshots. Three tasks share the shard's state:
//!
//! - the request loop reads the inbox, answers reads at once, and queues
//!   writes for the committer;
//! - the committer takes everything queued (up to
//!   [`GROUP_COMMIT_BYTES_MAX`]), writes it as one commit, `fdatasync`s, and
//!   only then makes the batches visible and acknowledges them. Writes that
//!   arrive during a commit form the next one: group commit;
//! - the snapshot worker, on a low-share task queue, writes Parquet files on
//!   a timer, on request and under memory pressure, evicts snapshotted
//!   batches from memory and releases WAL segments the snapshots cover:
//!   recycled as free files for new segments, or deleted (`snapshots.rs`).

pub mod handle;
pub mod recovery;
pub mod request;
mod snapshots;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use crate::dataset::{Catalog, Dataset};
use crate::error::{Error, Result};
use crate::limits::{GROUP_COMMIT_BYTES_MAX, SHARD_PENDING_APPENDS_MAX};
use crate::metrics::{EngineMetrics, ShardLabel};
use crate::snapshot::SnapshotCompression;
use crate::wal::free::FreeFiles;
use crate::wal::{IpcMessage, Lsn, Record, SealedSegment, Wal};
use crate::ShardId;
pub use handle::ShardHandle;
use request::{DatasetRead, Reply, Request, ShardStats};
pub use snapshots::SnapJob;

/// How long a commit waits for snapshots to bring memory under the limit
/// before it refuses the batches in it.
const MEMORY_WAIT: Duration = Duration::from_secs(2);

/// A write waiting for the committer.
enum Pending {
    /// A new dataset's schema.
    Create {
        dataset: String,
        reply: Reply<()>,
    },
    Batch {
        dataset: String,
        batch: RecordBatch,
        message: IpcMessage,
        reply: Reply<Lsn>,
    },
    /// A tombstone.
    Drop {
        dataset: String,
        reply: Reply<()>,
    },
}

impl Pending {
    fn dataset(&self) -> &str {
        match self {
            Pending::Create { dataset, .. } | Pending::Batch { dataset, .. } | Pending::Drop { dataset, .. } => dataset,
        }
    }

    fn message(&self) -> Option<&IpcMessage> {
        match self {
            Pending::Batch { message, .. } => Some(message),
            _ => None,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Pending::Batch { message, .. } => message.encoded_len() as u64 + 64,
            _ => 512,
        }
    }

    fn fail(self, e: Error) {
        match self {
            Pending::Create { reply, .. } | Pending::Drop { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Pending::Batch { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Settings a shard starts with.
pub(crate) struct ShardSetup {
    pub id: ShardId,
    pub metrics: EngineMetrics,
    pub snapshot_root: PathBuf,
    pub compression: SnapshotCompression,
    pub snapshot_interval: Duration,
    /// Bytes of Arrow data this shard may hold (0 = no limit).
    pub memory_budget: u64,
    pub wal_dir: PathBuf,
}

/// State shared by a shard's tasks (one thread: `Rc`, `Cell`, `RefCell`).
pub(crate) struct State {
    pub id: ShardId,
    pub catalog: RefCell<Catalog>,
    pub metrics: EngineMetrics,
    pub snapshot_root: PathBuf,
    pub compression: SnapshotCompression,
    pub snapshot_interval: Cell<Duration>,
    pub memory_budget: Cell<u64>,
    /// Arrow bytes this shard holds in memory.
    pub memory: Cell<u64>,
    /// Serializes snapshot runs with the removal of dropped datasets' files.
    pub snapshot_lock: glommio::sync::Semaphore,
    /// Drops whose snapshot files are not yet removed: WAL segments must not
    /// be deleted meanwhile (they hold the tombstone).
    pub pending_drops: Cell<u32>,
    pub sealed: Rc<RefCell<Vec<SealedSegment>>>,
    /// The WAL's free files, to which covered segments are recycled.
    pub free: Rc<RefCell<FreeFiles>>,
    pub wal_dir: PathBuf,
    pub snap_tx: flume::Sender<SnapJob>,
    /// A memory-pressure snapshot is queued.
    pub pressure_queued: Cell<bool>,
}

impl State {
    fn over_budget(&self) -> bool {
        let budget = self.memory_budget.get();
        budget > 0 && self.memory.get() > budget
    }

    /// Asks for a snapshot (and eviction) if memory is above 3/4 of the budget.
    fn check_pressure(&self) {
        let budget = self.memory_budget.get();
        if budget > 0 && self.memory.get() > budget / 4 * 3 && !self.pressure_queued.get() {
            self.pressure_queued.set(true);
            let _ = self.snap_tx.try_send(SnapJob { dataset: None, reply: None });
        }
    }

    fn add_memory(&self, bytes: u64) {
        self.memory.set(self.memory.get() + bytes);
        self.metrics.memory_bytes.inc_by(bytes as i64);
    }

    fn sub_memory(&self, bytes: u64) {
        self.memory.set(self.memory.get().saturating_sub(bytes));
        self.metrics.memory_bytes.dec_by(bytes as i64);
    }

    /// Disk use of the WAL directory: every file in it counts (segments,
    /// free files, one being preallocated).
    fn stats(&self) -> ShardStats {
        let mut stats = ShardStats { memory_bytes: self.memory.get(), ..ShardStats::default() };
        if let Ok(entries) = std::fs::read_dir(&self.wal_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_str().unwrap_or_default();
                if crate::wal::parse_segment_file_name(name).is_some() {
                    stats.wal_segments += 1;
                } else if crate::wal::free::parse_free_file_name(name).is_some() {
                    stats.wal_free_files += 1;
                }
                stats.wal_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        stats
    }
}

/// Serves requests until shutdown. `wal` is positioned after recovery.
pub(crate) async fn serve(setup: ShardSetup, catalog: Catalog, wal: Wal, inbox: flume::Receiver<Request>) {
    let (snap_tx, snap_rx) = flume::unbounded();
    let memory: u64 = catalog.datasets.values().map(|d| d.bytes).sum();
    let state = Rc::new(State {
        id: setup.id,
        catalog: RefCell::new(catalog),
        metrics: setup.metrics,
        snapshot_root: setup.snapshot_root,
        compression: setup.compression,
        snapshot_interval: Cell::new(setup.snapshot_interval),
        memory_budget: Cell::new(setup.memory_budget),
        memory: Cell::new(memory),
        snapshot_lock: glommio::sync::Semaphore::new(1),
        pending_drops: Cell::new(0),
        sealed: wal.sealed_segments(),
        free: wal.free_files(),
        wal_dir: setup.wal_dir,
        snap_tx,
        pressure_queued: Cell::new(false),
    });
    let snapshotter = snapshots::spawn_worker(state.clone(), snap_rx);
    let (commit_tx, commit_rx) = flume::bounded::<Pending>(SHARD_PENDING_APPENDS_MAX);
    let committer = glommio::spawn_local(commit_loop(state.clone(), wal, commit_rx));
    let mut shutdown_reply = None;
    let queue_depth = state.metrics.shard_queue_depth.get_or_create(&ShardLabel { shard: state.id }).clone();
    while let Ok(req) = inbox.recv_async().await {
        queue_depth.set(inbox.len() as i64);
        match req {
            Request::Open { dataset, schema, reply } => {
                let opened = open(&mut state.catalog.borrow_mut(), &dataset, schema);
                match opened {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(Opened::Durable) => {
                        let _ = reply.send(Ok(()));
                    }
                    // Answered by the committer once the schema is durable.
                    Ok(Opened::Pending) => {
                        if commit_tx.send_async(Pending::Create { dataset, reply }).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Request::Append { dataset, batch, message, reply } => {
                let checked = match state.catalog.borrow().datasets.get(&dataset) {
                    None => Err(Error::NotFound(dataset.clone())),
                    Some(d) => d.check_schema(&dataset, &batch.schema()),
                };
                if let Err(e) = checked {
                    let _ = reply.send(Err(e));
                    continue;
                }
                // IMPORTANT: waits while the committer is behind; the inbox
                // then fills and callers are pushed back.
                if commit_tx.send_async(Pending::Batch { dataset, batch, message, reply }).await.is_err() {
                    break;
                }
            }
            Request::Drop { dataset, reply } => {
                tracing::debug!(dataset, "drop requested");
                if !state.catalog.borrow().datasets.get(&dataset).is_some_and(|d| d.durable) {
                    let _ = reply.send(Err(Error::NotFound(dataset)));
                    continue;
                }
                if commit_tx.send_async(Pending::Drop { dataset, reply }).await.is_err() {
                    break;
                }
            }
            Request::Get { dataset, reply } => {
                let cat = state.catalog.borrow();
                let r = match cat.datasets.get(&dataset).filter(|d| d.durable) {
                    Some(d) => read(&state.snapshot_root, &dataset, d),
                    None => Err(Error::NotFound(dataset)),
                };
                let _ = reply.send(r);
            }
            Request::Info { dataset, reply } => {
                let cat = state.catalog.borrow();
                let r = match dataset {
                    Some(name) => cat.info(&name, state.id).map(|i| vec![i]).ok_or(Error::NotFound(name)),
                    None => Ok(cat.datasets.keys().filter_map(|n| cat.info(n, state.id)).collect()),
                };
                let _ = reply.send(r);
            }
            Request::Snapshot { dataset, reply } => {
                if let Some(name) = &dataset {
                    if !state.catalog.borrow().datasets.get(name).is_some_and(|d| d.durable) {
                        let _ = reply.send(Err(Error::NotFound(name.clone())));
                        continue;
                    }
                }
                let _ = state.snap_tx.send(SnapJob { dataset, reply: Some(reply) });
            }
            Request::Configure { snapshot_interval, memory_budget } => {
                state.snapshot_interval.set(snapshot_interval);
                state.memory_budget.set(memory_budget);
                // Wake the worker so the new interval applies now.
                let _ = state.snap_tx.send(SnapJob { dataset: Some(String::new()), reply: None });
                state.check_pressure();
            }
            Request::Stats { reply } => {
                let _ = reply.send(Ok(state.stats()));
            }
            Request::Shutdown { reply } => {
                shutdown_reply = Some(reply);
                break;
            }
        }
    }
    drop(commit_tx);
    let closed = committer.await;
    snapshots::stop_worker(snapshotter).await;
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(closed);
    }
}

/// A consistent view for a read: evicted rows come from snapshot files,
/// opened now (a handful of `open`s on the shard thread), so that a merge
/// deleting them later cannot break the read.
fn read(root: &std::path::Path, name: &str, d: &Dataset) -> Result<DatasetRead> {
    let dir = crate::snapshot::dataset_dir(root, name);
    let mut files = Vec::new();
    for f in d.files.iter().filter(|f| f.max_lsn <= d.evicted_lsn) {
        let path = dir.join(&f.name);
        let file = std::fs::File::open(&path).map_err(Error::io("opening snapshot file", &path, 0))?;
        files.push((path, file));
    }
    Ok(DatasetRead { schema: d.schema.clone(), files, batches: d.batches.iter().map(|(_, b)| b.clone()).collect() })
}

enum Opened {
    Durable,
    Pending,
}

/// Checks an Open against the catalog. A new name is reserved at once, so a
/// concurrent Open with another schema is refused; it becomes visible when
/// its schema commit is durable.
fn open(cat: &mut Catalog, dataset: &str, schema: arrow::datatypes::SchemaRef) -> Result<Opened> {
    match cat.datasets.get(dataset) {
        Some(d) => {
            d.check_schema(dataset, &schema)?;
            Ok(if d.durable { Opened::Durable } else { Opened::Pending })
        }
        None => {
            crate::dataset::validate_schema(&schema)?;
            cat.datasets.insert(dataset.to_owned(), Dataset::new(schema));
            Ok(Opened::Pending)
        }
    }
}

/// Waits (bounded) for snapshots to bring memory under the budget. Returns
/// whether it is under.
async fn wait_for_memory(state: &State) -> bool {
    let started = Instant::now();
    while state.over_budget() {
        state.check_pressure();
        if started.elapsed() > MEMORY_WAIT {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn commit_loop(state: Rc<State>, mut wal: Wal, rx: flume::Receiver<Pending>) -> Result<()> {
    let shard = state.id;
    let metrics = state.metrics.clone();
    let mut poisoned = false;
    let mut group: Vec<Pending> = Vec::new();
    while let Ok(first) = rx.recv_async().await {
        let mut bytes = first.bytes();
        group.push(first);
        while bytes < GROUP_COMMIT_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        if poisoned {
            for p in group.drain(..) {
                p.fail(Error::Poisoned { shard });
            }
            continue;
        }
        if state.over_budget()
            && group.iter().any(|p| matches!(p, Pending::Batch { .. }))
            && !wait_for_memory(&state).await
        {
            let (batches, rest): (Vec<_>, Vec<_>) = group.drain(..).partition(|p| matches!(p, Pending::Batch { .. }));
            for p in batches {
                metrics.memory_refusals.inc();
                p.fail(Error::Overloaded {
                    shard,
                    reason: "the memory limit is reached and snapshots have not freed enough yet",
                });
            }
            group = rest;
            if group.is_empty() {
                continue;
            }
        }
        let schemas: Vec<Rc<[u8]>> = {
            let cat = state.catalog.borrow();
            let mut kept = Vec::with_capacity(group.len());
            let mut dropped_here = std::collections::HashSet::new();
            for p in group.drain(..) {
                let name = p.dataset().to_owned();
                // A write after a drop of the same dataset in this commit
                // would bring it back on replay.
                if !cat.datasets.contains_key(&name) || dropped_here.contains(&name) {
                    p.fail(Error::NotFound(name));
                    continue;
                }
                if matches!(p, Pending::Drop { .. }) {
                    dropped_here.insert(name);
                }
                kept.push(p);
            }
            group = kept;
            group.iter().map(|p| cat.datasets[p.dataset()].schema_message.clone()).collect()
        };
        if group.is_empty() {
            continue;
        }
        let records: Vec<Record<'_>> = group
            .iter()
            .zip(&schemas)
            .map(|(p, s)| Record {
                dataset: p.dataset(),
                schema_message: s,
                message: p.message(),
                drop: matches!(p, Pending::Drop { .. }),
            })
            .collect();
        let result = wal.append_synced(&records).await;
        drop(records);
        match result {
            Ok(first_lsn) => {
                metrics.wal_commit_batches.observe(group.len() as f64);
                for (i, p) in group.drain(..).enumerate() {
                    apply(&state, p, first_lsn + i as u64);
                }
                state.check_pressure();
            }
            Err(e) => {
                if wal.is_poisoned() {
                    tracing::error!(shard, error = %e, "fsync failed; shard stops accepting writes until restart");
                    poisoned = true;
                    metrics.shards_poisoned.inc();
                } else {
                    tracing::warn!(shard, error = %e, "WAL write failed; the writes in it were not acknowledged");
                }
                let message = e.to_string();
                let disk_full = e.is_disk_full();
                let mut cat = state.catalog.borrow_mut();
                for p in group.drain(..) {
                    if let Pending::Create { dataset, .. } = &p {
                        // Never made durable: forget the reservation.
                        if cat.datasets.get(dataset).is_some_and(|d| !d.durable) {
                            cat.datasets.remove(dataset);
                        }
                    }
                    let err = if poisoned {
                        Error::Poisoned { shard }
                    } else if disk_full {
                        Error::DiskFull { shard, message: message.clone() }
                    } else {
                        Error::WalWrite { shard, message: message.clone() }
                    };
                    p.fail(err);
                }
            }
        }
    }
    if poisoned {
        return Err(Error::Poisoned { shard });
    }
    wal.close().await
}

/// Makes a durable record visible and answers its writer.
fn apply(state: &Rc<State>, p: Pending, lsn: Lsn) {
    let metrics = &state.metrics;
    match p {
        Pending::Create { dataset, reply } => {
            let mut cat = state.catalog.borrow_mut();
            if let Some(d) = cat.datasets.get_mut(&dataset) {
                if !d.durable {
                    metrics.datasets.inc();
                }
                d.durable = true;
                d.last_lsn = d.last_lsn.max(lsn);
            }
            let _ = reply.send(Ok(()));
        }
        Pending::Batch { dataset, batch, reply, .. } => {
            let mut cat = state.catalog.borrow_mut();
            let d = cat.datasets.get_mut(&dataset).expect("dataset of a committed batch");
            let (rows, bytes) = d.push(lsn, batch);
            drop(cat);
            metrics.rows_ingested.inc_by(rows);
            metrics.batches_ingested.inc();
            metrics.records.inc_by(rows as i64);
            state.add_memory(bytes);
            let _ = reply.send(Ok(lsn));
        }
        Pending::Drop { dataset, reply } => {
            let removed = state.catalog.borrow_mut().datasets.remove(&dataset);
            if let Some(d) = removed {
                metrics.datasets.dec();
                metrics.records.dec_by(d.records as i64);
                state.sub_memory(d.bytes);
            }
            // The tombstone is durable; its snapshot files go next, and until
            // they are gone no WAL segment may be deleted.
            state.pending_drops.set(state.pending_drops.get() + 1);
            let state = state.clone();
            tracing::debug!(dataset, lsn, "drop: tombstone durable");
            glommio::spawn_local(async move {
                let _permit = state.snapshot_lock.acquire_permit(1).await;
                let r = crate::snapshot::remove_dataset_dir(&state.snapshot_root, &dataset).await;
                // On failure the count stays up: WAL segments (and the
                // tombstone) are kept until a restart removes the files.
                if r.is_ok() {
                    state.pending_drops.set(state.pending_drops.get() - 1);
                }
                let _ = reply.send(r);
            })
            .detach();
        }
    }
}
