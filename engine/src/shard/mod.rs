//! A shard: one glommio executor pinned to a core, owning its datasets, its
//! WAL directory and their snapshots. Three tasks share the shard's state:
//!
//! - the request loop reads the inbox, answers reads at once, and queues
//!   writes for the committer;
//! - the committer takes everything queued (up to
//!   [`GROUP_COMMIT_BYTES_MAX`]), writes it as one commit, `fdatasync`s, and
//!   only then makes the batches visible and acknowledges them. Writes that
//!   arrive during a commit form the next one: group commit. The next
//!   commit is written while the last one syncs, where that sync does not
//!   block the thread (at most two are not durable; see `Pending`);
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataset::{Catalog, Dataset, SeqCheck};
use crate::error::{Error, HeldBackCause, Result};
use crate::limits::{GROUP_COMMIT_BYTES_MAX, SHARD_PENDING_APPENDS_MAX};
use crate::memory::MemoryBudget;
use crate::metrics::{EngineMetrics, ShardLabel};
use crate::record::{Batch, Op};
use crate::wal::free::FreeFiles;
use crate::wal::{Lsn, Record, SealedSegment, Wal};
use crate::ShardId;
pub use handle::ShardHandle;
use request::{Committed, DatasetRead, Reply, Request, ScanFile, ScanRequest, ScanView, ShardStats, Write};
pub use snapshots::SnapJob;

/// A write waiting for the committer: its request as it came.
impl Write {
    fn is_batch(&self) -> bool {
        matches!(self.op, Op::Batch(_))
    }

    fn bytes(&self) -> u64 {
        match &self.op {
            Op::Batch(b) => b.message.encoded_len() as u64 + 64,
            _ => 512,
        }
    }

    /// Answers with `e`; a batch's stream fails with it, so none of its
    /// later batches is stored.
    fn fail(self, e: Error) {
        self.stream.fail();
        let _ = self.reply.send(Err(e));
    }

    /// A batch whose stream failed after it was queued.
    fn is_abandoned(&self) -> bool {
        self.is_batch() && self.stream.is_failed()
    }
}

/// A change-feed scan parked until its dataset's next durable batch.
pub(crate) type Follower = (ScanRequest, Reply<ScanView>);

/// Settings a shard starts with.
pub(crate) struct ShardSetup {
    pub id: ShardId,
    pub metrics: EngineMetrics,
    pub snapshot_root: PathBuf,
    pub store: Arc<crate::snapshot::SnapshotStore>,
    pub snapshot_interval: Duration,
    /// The memory budget all shards share.
    pub budget: Arc<MemoryBudget>,
    pub wal_dir: PathBuf,
    pub health: crate::health::HealthTx,
    /// Dropped datasets whose snapshot tables recovery could not remove.
    pub dropping: Vec<(String, Arc<Error>)>,
}

/// State shared by a shard's tasks (one thread: `Rc`, `Cell`, `RefCell`).
pub(crate) struct State {
    pub id: ShardId,
    pub catalog: RefCell<Catalog>,
    pub metrics: EngineMetrics,
    pub snapshot_root: PathBuf,
    pub store: Arc<crate::snapshot::SnapshotStore>,
    pub snapshot_interval: Cell<Duration>,
    /// Shared by all shards; this shard's part is `memory`.
    pub budget: Arc<MemoryBudget>,
    /// Arrow bytes this shard holds in memory.
    pub memory: Cell<u64>,
    /// Serializes snapshot runs with the removal of dropped datasets' files.
    pub snapshot_lock: glommio::sync::Semaphore,
    /// Dropped datasets whose snapshot tables are not removed yet, with why
    /// the last removal failed (`None`: one is under way). WAL segments
    /// must not be deleted meanwhile (they hold the tombstones), and the
    /// name cannot be created again: a new incarnation's snapshot would
    /// commit into the old table and bring its rows back.
    pub dropping: RefCell<std::collections::HashMap<String, Option<Arc<Error>>>>,
    pub sealed: Rc<RefCell<Vec<SealedSegment>>>,
    /// The WAL's free files, to which covered segments are recycled.
    pub free: Rc<RefCell<FreeFiles>>,
    pub wal_dir: PathBuf,
    pub snap_tx: flume::Sender<SnapJob>,
    /// A memory-pressure snapshot is queued.
    pub pressure_queued: Cell<bool>,
    pub health: crate::health::HealthTx,
    /// Change-feed scans waiting for a dataset's next durable batch (at
    /// most one per follower; ones whose caller went away are pruned).
    pub followers: RefCell<std::collections::HashMap<String, Vec<Follower>>>,
}

impl State {
    /// Asks for a snapshot (and eviction) if the shared budget is above 3/4
    /// and this shard holds something a snapshot can free.
    fn check_pressure(&self) {
        if self.budget.above_quarters(3) && self.memory.get() > 0 && !self.pressure_queued.get() {
            self.pressure_queued.set(true);
            let _ = self.snap_tx.try_send(SnapJob { dataset: None, reply: None });
        }
    }

    fn add_memory(&self, bytes: u64) {
        self.memory.set(self.memory.get() + bytes);
        self.budget.add(bytes);
        self.metrics.memory_bytes.inc_by(bytes as i64);
    }

    fn sub_memory(&self, bytes: u64) {
        let bytes = bytes.min(self.memory.get());
        self.memory.set(self.memory.get() - bytes);
        self.budget.sub(bytes);
        self.metrics.memory_bytes.dec_by(bytes as i64);
    }

    /// Removes a dataset from the catalog and from memory (a drop, or a
    /// handover: its table is another matter), and ends its change feeds.
    fn forget(&self, dataset: &str) -> Option<crate::dataset::Dataset> {
        let removed = self.catalog.borrow_mut().datasets.remove(dataset);
        if let Some(d) = &removed {
            if d.durable {
                self.metrics.datasets.dec();
            }
            self.metrics.records.dec_by(d.records as i64);
            self.sub_memory(d.bytes);
        }
        wake_followers(self, dataset);
        removed
    }

    /// Disk use of the WAL directory: every file in it counts (segments,
    /// free files, one being preallocated).
    fn stats(&self) -> ShardStats {
        let mut stats = ShardStats { memory_bytes: self.memory.get(), ..ShardStats::default() };
        let storage = self.free.borrow().storage().clone();
        for name in crate::io::list_or_empty(&*storage, &self.wal_dir).unwrap_or_default() {
            if crate::wal::parse_segment_file_name(&name).is_some() {
                stats.wal_segments += 1;
            } else if crate::wal::free::parse_free_file_name(&name).is_some() {
                stats.wal_free_files += 1;
            }
            stats.wal_bytes += storage.file_len(&self.wal_dir.join(&name)).unwrap_or(0);
        }
        // Batches are in LSN order: those after `covered_lsn` are a suffix.
        for d in self.catalog.borrow().datasets.values() {
            let first = d.batches.partition_point(|(lsn, _)| *lsn <= d.covered_lsn);
            stats.unsnapshotted_batches += (d.batches.len() - first) as u64;
            stats.unsnapshotted_rows += d.batches[first..].iter().map(|(_, b)| b.num_rows() as u64).sum::<u64>();
        }
        stats.wal_volume = request::VolumeUsage::of(&self.wal_dir);
        stats.snapshot_volume = request::VolumeUsage::of(&self.snapshot_root);
        stats
    }
}

/// Serves requests until shutdown. `wal` is positioned after recovery.
pub(crate) async fn serve(setup: ShardSetup, catalog: Catalog, wal: Wal, inbox: flume::Receiver<Request>) {
    let (snap_tx, snap_rx) = flume::unbounded();
    let memory: u64 = catalog.datasets.values().map(|d| d.bytes).sum();
    setup.budget.add(memory);
    let state = Rc::new(State {
        id: setup.id,
        catalog: RefCell::new(catalog),
        metrics: setup.metrics,
        snapshot_root: setup.snapshot_root,
        store: setup.store,
        snapshot_interval: Cell::new(setup.snapshot_interval),
        budget: setup.budget,
        memory: Cell::new(memory),
        snapshot_lock: glommio::sync::Semaphore::new(1),
        dropping: RefCell::new(setup.dropping.into_iter().map(|(name, e)| (name, Some(e))).collect()),
        sealed: wal.sealed_segments(),
        free: wal.free_files(),
        wal_dir: setup.wal_dir,
        health: setup.health,
        snap_tx,
        pressure_queued: Cell::new(false),
        followers: RefCell::new(std::collections::HashMap::new()),
    });
    let snapshotter = snapshots::spawn_worker(state.clone(), snap_rx);
    let (commit_tx, commit_rx) = flume::bounded::<Write>(SHARD_PENDING_APPENDS_MAX);
    let committer = glommio::spawn_local(commit_loop(state.clone(), wal, commit_rx));
    let mut shutdown_reply = None;
    let queue_depth = state.metrics.shard_queue_depth.get_or_create(&ShardLabel { shard: state.id.0 }).clone();
    while let Ok(req) = inbox.recv_async().await {
        queue_depth.set(inbox.len() as i64);
        match req {
            Request::Write(w) => {
                let checked = match &w.op {
                    Op::Schema(_) if state.dropping.borrow().contains_key(&w.dataset) => {
                        let cause = state.dropping.borrow()[&w.dataset].clone().unwrap_or_else(removal_under_way);
                        remove_table(&state, w.dataset.clone(), None);
                        Err(Error::DropPending { dataset: w.dataset.clone(), cause })
                    }
                    Op::Schema(schema) => match open(&mut state.catalog.borrow_mut(), &w.dataset, schema.clone()) {
                        Err(e) => Err(e),
                        Ok(Opened::Durable(lsn)) => {
                            let _ = w.reply.send(Ok(Committed { lsn, durable_at: Instant::now(), duplicate: true }));
                            continue;
                        }
                        // Answered by the committer once the schema is durable.
                        Ok(Opened::Pending) => Ok(()),
                    },
                    Op::Batch(b) => match state.catalog.borrow().datasets.get(&w.dataset) {
                        _ if w.stream.is_failed() => Err(not_stored()),
                        None => Err(Error::NotFound(w.dataset.clone())),
                        Some(d) => d.check_schema(&w.dataset, &b.batch.schema()),
                    },
                    Op::Drop => {
                        tracing::debug!(dataset = w.dataset, "drop requested");
                        match state.catalog.borrow().datasets.get(&w.dataset) {
                            Some(d) if d.durable => Ok(()),
                            _ => Err(Error::NotFound(w.dataset.clone())),
                        }
                    }
                    Op::Producers(_) => {
                        Err(Error::InvalidInput("a producers' state is logged by recovery only".into()))
                    }
                    Op::Forget => Err(Error::InvalidInput("a forget is logged by the shard's own tasks only".into())),
                };
                if let Err(e) = checked {
                    w.fail(e);
                    continue;
                }
                // IMPORTANT: waits while the committer is behind; the inbox
                // then fills and callers are pushed back.
                if commit_tx.send_async(w).await.is_err() {
                    break;
                }
            }
            Request::Get { dataset, reply } => {
                let cat = state.catalog.borrow();
                let r = match cat.datasets.get(&dataset).filter(|d| d.durable) {
                    Some(d) => Ok(read(&state.store, &dataset, d)),
                    None => Err(Error::NotFound(dataset)),
                };
                let _ = reply.send(r);
            }
            Request::Scan { dataset, scan: req, reply } => {
                let view = match state.catalog.borrow().datasets.get(&dataset).filter(|d| d.durable) {
                    Some(d) => Ok(scan(&dataset, d, req)),
                    None => Err(Error::NotFound(dataset.clone())),
                };
                match view {
                    Ok(v) if req.wait && v.files.is_empty() && v.batches.is_empty() => {
                        let mut followers = state.followers.borrow_mut();
                        let waiting = followers.entry(dataset).or_default();
                        waiting.retain(|(_, r)| !r.is_canceled());
                        waiting.push((req, reply));
                    }
                    v => {
                        let _ = reply.send(v);
                    }
                }
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
            Request::HandOver { dataset, reply } => snapshots::hand_over(&state, dataset, reply, commit_tx.clone()),
            Request::Forget { dataset, reply } => snapshots::forget(&state, dataset, reply, commit_tx.clone()),
            Request::Refresh { dataset, reply } => snapshots::refresh(&state, dataset, reply),
            Request::Configure { snapshot_interval } => {
                state.snapshot_interval.set(snapshot_interval);
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
            #[cfg(feature = "fault-injection")]
            Request::Panic => panic!("shard {} panics on request (fault injection)", state.id),
        }
    }
    drop(commit_tx);
    let closed = committer.await;
    snapshots::stop_worker(snapshotter).await;
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(closed);
    }
}

/// A consistent view for a read: evicted rows come from the table's files
/// as of now; a compaction replacing them later leaves them in storage for
/// the retention period (VACUUM), longer than any read.
fn read(store: &crate::snapshot::SnapshotStore, name: &str, d: &Dataset) -> DatasetRead {
    let files = d.files.iter().filter(|f| f.max_lsn <= d.evicted_lsn).map(|f| store.object(name, f)).collect();
    DatasetRead { schema: d.schema.clone(), files, batches: d.batches.iter().map(|(_, b)| b.clone()).collect() }
}

/// A query's or change feed's view of `d` (see [`ScanView`]).
fn scan(name: &str, d: &Dataset, req: ScanRequest) -> ScanView {
    let files = d
        .files
        .iter()
        .filter(|f| f.max_lsn <= d.evicted_lsn && f.max_lsn > req.after_lsn)
        .map(|f| ScanFile {
            path: format!("{name}/{}", f.name),
            bytes: f.bytes,
            rows: f.rows,
            min_lsn: f.min_lsn,
            max_lsn: f.max_lsn,
        })
        .collect();
    let from = d.batches.partition_point(|(l, _)| *l <= req.after_lsn);
    let batches = d.batches[from..].iter().take(req.max_batches).cloned().collect();
    ScanView { schema: d.schema.clone(), files, batches, evicted_lsn: d.evicted_lsn, last_lsn: d.last_lsn }
}

/// Answers the change feeds waiting on `dataset`: with what is new, or
/// `NotFound` once it is dropped.
fn wake_followers(state: &State, dataset: &str) {
    let Some(waiting) = state.followers.borrow_mut().remove(dataset) else { return };
    let cat = state.catalog.borrow();
    for (req, reply) in waiting {
        let _ = reply.send(match cat.datasets.get(dataset) {
            Some(d) => Ok(scan(dataset, d, req)),
            None => Err(Error::NotFound(dataset.to_owned())),
        });
    }
}

enum Opened {
    /// The dataset's schema is durable; its last LSN.
    Durable(Lsn),
    Pending,
}

/// Checks an Open against the catalog. A new name is reserved at once, so a
/// concurrent Open with another schema is refused; it becomes visible when
/// its schema commit is durable.
fn open(cat: &mut Catalog, dataset: &str, schema: arrow::datatypes::SchemaRef) -> Result<Opened> {
    match cat.datasets.get(dataset) {
        Some(d) => {
            d.check_schema(dataset, &schema)?;
            Ok(if d.durable { Opened::Durable(d.last_lsn) } else { Opened::Pending })
        }
        None => {
            crate::dataset::validate_schema(&schema)?;
            cat.datasets.insert(dataset.to_owned(), Dataset::new(schema));
            Ok(Opened::Pending)
        }
    }
}

fn not_stored() -> Error {
    Error::NotStored { reason: "an earlier batch of this DoPut stream failed or its client went away" }
}

/// Waits while the shared budget is spent and snapshots are freeing memory
/// (back-pressure: meanwhile the queues fill and the gateway stops reading
/// streams). Fails when nothing was freed for the back-pressure timeout, or
/// when snapshots are failing; the error says which.
async fn wait_for_memory(state: &State) -> std::result::Result<(), HeldBackCause> {
    let budget = &state.budget;
    if !budget.over() {
        return Ok(());
    }
    state.metrics.commits_throttled.inc();
    let mut freed = budget.freed();
    let mut progress_at = Instant::now();
    while budget.over() {
        state.check_pressure();
        if let Some(e) = budget.snapshot_failure() {
            return Err(HeldBackCause::SnapshotsFailing(e));
        }
        if budget.freed() != freed {
            freed = budget.freed();
            progress_at = Instant::now();
        } else if progress_at.elapsed() > budget.backpressure_timeout() {
            return Err(HeldBackCause::NoProgress(budget.backpressure_timeout()));
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn commit_loop(state: Rc<State>, mut wal: Wal, rx: flume::Receiver<Write>) -> Result<()> {
    let shard = state.id;
    let metrics = state.metrics.clone();
    let mut poisoned = false;
    let mut group: Vec<Write> = Vec::new();
    // The commit written and being synced, if any: the next one is written
    // meanwhile (see `Pending`).
    let mut pending: Option<Pending> = None;
    loop {
        // The next write, or the end of the commit being synced, whichever
        // comes first.
        let first = match pending.as_mut() {
            None => match rx.recv_async().await {
                Ok(w) => w,
                Err(_) => break,
            },
            Some(p) => {
                let next = rx.recv_async();
                futures::pin_mut!(next);
                // The sync first: a commit already durable is answered
                // before the next one is written.
                match futures::future::select(&mut p.sync, next).await {
                    futures::future::Either::Right((Ok(w), _)) => w,
                    futures::future::Either::Right((Err(_), _)) => break,
                    futures::future::Either::Left((synced, _)) => {
                        let p = pending.take().expect("a commit is being synced");
                        settle(&state, &mut wal, p.group, p.records_from, synced, &mut poisoned);
                        continue;
                    }
                }
            }
        };
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
            fail_poisoned(&mut group, shard);
            continue;
        }
        if group.iter().any(Write::is_batch) {
            if state.budget.over() {
                // What the commit being synced holds counts once it is
                // applied; the snapshots need to see it.
                if let Some(p) = pending.take() {
                    settle_pending(&state, &mut wal, p, &mut poisoned).await;
                }
                if poisoned {
                    fail_poisoned(&mut group, shard);
                    continue;
                }
            }
            if let Err(cause) = wait_for_memory(&state).await {
                tracing::warn!(%shard, %cause, "memory limit: refusing the batches of a commit");
                let (batches, rest): (Vec<_>, Vec<_>) = group.drain(..).partition(Write::is_batch);
                for p in batches {
                    metrics.memory_refusals.inc();
                    p.fail(Error::HeldBack { shard, cause: cause.clone() });
                }
                group = rest;
            }
        }
        // IMPORTANT: a batch whose stream failed after it was queued (an
        // earlier batch was refused, the client went away) is never written.
        let (abandoned, kept): (Vec<_>, Vec<_>) = group.drain(..).partition(Write::is_abandoned);
        group = kept;
        for p in abandoned {
            metrics.batches_not_stored.inc();
            p.fail(not_stored());
        }
        if group.is_empty() {
            continue;
        }
        let picked_at = Instant::now();
        for p in &group {
            if p.is_batch() {
                metrics.stage(crate::metrics::Stage::Queue).observe((picked_at - p.queued_at).as_secs_f64());
            }
        }
        let (own_dropped, own_taken);
        let schemas: Vec<Rc<[u8]>> = {
            let cat = state.catalog.borrow();
            let mut kept = Vec::with_capacity(group.len());
            // IMPORTANT: the commit being synced is not applied yet; its
            // drops and sequence numbers count as this commit's own.
            let mut dropped_here = pending.as_ref().map(|p| p.dropped.clone()).unwrap_or_default();
            // Sequence numbers taken by earlier batches of this commit.
            let mut taken = pending.as_ref().map(|p| p.taken.clone()).unwrap_or_default();
            for p in group.drain(..) {
                if p.is_abandoned() {
                    // An earlier batch of its stream failed in this commit.
                    metrics.batches_not_stored.inc();
                    p.fail(not_stored());
                    continue;
                }
                let name = p.dataset.clone();
                // A forget is logged after its dataset left the catalog (see
                // `snapshots::forget`).
                if matches!(p.op, Op::Forget) {
                    dropped_here.insert(name);
                    kept.push(p);
                    continue;
                }
                // A write after a drop of the same dataset in this commit
                // would bring it back on replay.
                if !cat.datasets.contains_key(&name) || dropped_here.contains(&name) {
                    p.fail(Error::NotFound(name));
                    continue;
                }
                if matches!(p.op, Op::Drop) {
                    dropped_here.insert(name);
                    kept.push(p);
                    continue;
                }
                let Some(ps) = p.op.batch().and_then(|b| b.producer.as_ref()) else {
                    kept.push(p);
                    continue;
                };
                // IMPORTANT: checked here, one commit at a time, so the state
                // is exact: every earlier commit's outcome is known.
                let key = (name.clone(), ps.id.clone());
                let (producer, seq) = (ps.id.to_string(), ps.seq);
                let check = match taken.get(&key) {
                    Some(&t) if seq == t + 1 => SeqCheck::Next,
                    Some(&t) if seq > t + 1 => SeqCheck::Gap { expected: t + 1 },
                    // Taken in this commit or the one being synced, unless
                    // a commit already applied holds it.
                    Some(_) => match cat.datasets[&name].producers.get(&producer).map(|s| s.check(seq)) {
                        Some(c @ (SeqCheck::Stored(_) | SeqCheck::TooOld { .. })) => c,
                        _ => {
                            p.fail(Error::NotStored {
                                reason: "another stream of this producer is committing the same sequence number \
                                         now; retry to get its acknowledgement",
                            });
                            continue;
                        }
                    },
                    None => cat.datasets[&name].producers.get(&producer).map_or(SeqCheck::Next, |s| s.check(seq)),
                };
                match check {
                    SeqCheck::Next => {
                        taken.insert(key, seq);
                        kept.push(p);
                    }
                    SeqCheck::Stored(lsn) => {
                        metrics.batches_deduplicated.inc();
                        let _ = p.reply.send(Ok(Committed { lsn, durable_at: Instant::now(), duplicate: true }));
                    }
                    SeqCheck::Gap { expected } => p.fail(Error::SequenceGap { dataset: name, producer, seq, expected }),
                    SeqCheck::TooOld { oldest } => {
                        p.fail(Error::SequenceTooOld { dataset: name, producer, seq, oldest })
                    }
                }
            }
            group = kept;
            own_dropped = dropped_here;
            own_taken = taken;
            // A drop or forget frame carries no schema.
            group
                .iter()
                .map(|p| cat.datasets.get(&p.dataset).map_or_else(|| Rc::from(&[][..]), |d| d.schema_message.clone()))
                .collect()
        };
        if group.is_empty() {
            continue;
        }
        let records: Vec<Record<'_>> =
            group.iter().zip(&schemas).map(|(p, s)| Record::new(&p.dataset, s, &p.op)).collect();
        // A commit that starts a segment waits for the one being synced:
        // the old segment is sealed and closed first.
        if pending.is_some() && wal.rotates_for(&records, true) {
            let p = pending.take().expect("checked");
            settle_pending(&state, &mut wal, p, &mut poisoned).await;
            if poisoned {
                drop(records);
                fail_poisoned(&mut group, shard);
                continue;
            }
        }
        let durable_through = pending.as_ref().map(|p| p.first_lsn.prev());
        let written = wal.append_written(&records, durable_through).await;
        drop(records);
        // This commit was written while the one before it synced; that one
        // is answered first, and only then is this one's sync started, so
        // at most two commits are ever not durable.
        if let Some(p) = pending.take() {
            settle_pending(&state, &mut wal, p, &mut poisoned).await;
        }
        match written {
            Ok(_) if poisoned => {
                // Written after a commit whose sync failed: never durable.
                fail_poisoned(&mut group, shard);
            }
            Ok(w) if w.syncs_inline() => {
                // A small commit's sync blocks the shard anyway: answered
                // at once, with no task and no wake-up in between.
                let records_from = w.records_from;
                let synced = w.sync().await;
                let group = std::mem::take(&mut group);
                settle(&state, &mut wal, group, records_from, synced, &mut poisoned);
            }
            Ok(w) => {
                let (records_from, first_lsn) = (w.records_from, w.first_lsn);
                let sync = glommio::spawn_local(w.sync());
                // Let the sync start (an io_uring submission) before the
                // next commit is gathered.
                glommio::executor().yield_now().await;
                pending = Some(Pending {
                    sync,
                    group: std::mem::take(&mut group),
                    records_from,
                    first_lsn,
                    taken: own_taken,
                    dropped: own_dropped,
                });
            }
            Err(e) => {
                let mut group = std::mem::take(&mut group);
                fail_commit(&state, &wal, &mut group, e, &mut poisoned);
            }
        }
    }
    if let Some(p) = pending.take() {
        settle_pending(&state, &mut wal, p, &mut poisoned).await;
    }
    if poisoned {
        return Err(Error::Poisoned { shard });
    }
    wal.close().await
}

/// A commit written and being synced. The shard writes the next commit
/// meanwhile (with a durable mark, `docs/wal-format.md`), then answers this
/// one, then syncs the next: at most two commits are not durable at once,
/// and writes are answered in LSN order.
struct Pending {
    sync: glommio::Task<Result<()>>,
    group: Vec<Write>,
    records_from: Lsn,
    /// The first LSN the commit takes: every LSN before it is durable.
    first_lsn: Lsn,
    /// Sequence numbers its batches take, and the datasets it drops: the
    /// next commit's checks count them as taken and dropped.
    taken: std::collections::HashMap<(String, Arc<str>), u64>,
    dropped: std::collections::HashSet<String>,
}

/// Waits for the commit being synced, then [`settle`]s it.
async fn settle_pending(state: &Rc<State>, wal: &mut Wal, p: Pending, poisoned: &mut bool) {
    let synced = p.sync.await;
    settle(state, wal, p.group, p.records_from, synced, poisoned);
}

/// Ends the commit that was being synced: applied and answered if the sync
/// succeeded, else failed, with the shard poisoned.
fn settle(
    state: &Rc<State>,
    wal: &mut Wal,
    mut group: Vec<Write>,
    records_from: Lsn,
    synced: Result<()>,
    poisoned: &mut bool,
) {
    match synced {
        Ok(()) => {
            state.metrics.wal_commit_batches.observe(group.len() as f64);
            let durable_at = Instant::now();
            for (i, w) in group.drain(..).enumerate() {
                apply(state, w, records_from + i as u64, durable_at);
            }
            state.check_pressure();
        }
        Err(e) => {
            wal.poison();
            fail_commit(state, wal, &mut group, e, poisoned);
        }
    }
}

/// Fails `group`'s writes: the shard is poisoned (a sync failed), and
/// nothing more is written until restart.
fn fail_poisoned(group: &mut Vec<Write>, shard: ShardId) {
    for p in group.drain(..) {
        p.fail(Error::Poisoned { shard });
    }
}

/// Answers the writes of a commit that failed (its write or its sync).
fn fail_commit(state: &Rc<State>, wal: &Wal, group: &mut Vec<Write>, e: Error, poisoned: &mut bool) {
    let shard = state.id;
    if wal.is_poisoned() {
        if !*poisoned {
            tracing::error!(%shard, error = %e, "fsync failed; shard stops accepting writes until restart");
            state.metrics.shards_poisoned.inc();
            state.health.down(shard, crate::health::ShardDown::Poisoned);
        }
        *poisoned = true;
    } else {
        tracing::warn!(%shard, error = %e, "WAL write failed; the writes in it were not acknowledged");
    }
    let disk_full = e.is_disk_full();
    let cause = Arc::new(e);
    let mut cat = state.catalog.borrow_mut();
    for p in group.drain(..) {
        if matches!(p.op, Op::Schema(_)) {
            // Never made durable: forget the reservation.
            if cat.datasets.get(&p.dataset).is_some_and(|d| !d.durable) {
                cat.datasets.remove(&p.dataset);
            }
        }
        let err = match &*cause {
            _ if *poisoned => Error::Poisoned { shard },
            Error::WalWriteInDoubt { source, seal, .. } => {
                Error::WalWriteInDoubt { shard, source: source.clone(), seal: seal.clone() }
            }
            _ if disk_full => Error::DiskFull { shard, source: cause.clone() },
            _ => Error::WalWrite { shard, source: cause.clone() },
        };
        p.fail(err);
    }
}

/// Why a dropped dataset's name is refused while its table's removal runs.
fn removal_under_way() -> Arc<Error> {
    Arc::new(Error::NotStored { reason: "the removal is under way" })
}

/// Removes a dropped dataset's snapshot table (unless a removal is under
/// way), then answers `reply`, if any, with `committed` or the failure.
/// Until it succeeds the name stays in `dropping`: retried by the snapshot
/// worker and by each attempt to create the name again.
pub(crate) fn remove_table(state: &Rc<State>, dataset: String, reply: Option<(Reply<Committed>, Committed)>) {
    if matches!(state.dropping.borrow().get(&dataset), Some(None)) {
        if let Some((reply, _)) = reply {
            let _ = reply.send(Err(Error::DropPending { dataset, cause: removal_under_way() }));
        }
        return;
    }
    state.dropping.borrow_mut().insert(dataset.clone(), None);
    let state = state.clone();
    glommio::spawn_local(async move {
        let _permit = state.snapshot_lock.acquire_permit(1).await;
        let r = match state.store.io(state.store.clone().drop_table(dataset.clone())).await {
            Ok(()) => {
                state.dropping.borrow_mut().remove(&dataset);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(shard = %state.id, dataset, error = %e, "removing a dropped dataset's snapshot table failed; retried");
                let cause = Arc::new(e);
                state.dropping.borrow_mut().insert(dataset.clone(), Some(cause.clone()));
                Err(Error::DropPending { dataset, cause })
            }
        };
        if let Some((reply, committed)) = reply {
            let _ = reply.send(r.map(|()| committed));
        }
    })
    .detach();
}

/// Makes a durable record visible and answers its writer.
fn apply(state: &Rc<State>, w: Write, lsn: Lsn, durable_at: Instant) {
    let metrics = &state.metrics;
    let Write { dataset, op, reply, .. } = w;
    let committed = Committed { lsn, durable_at, duplicate: false };
    match op {
        Op::Schema(_) => {
            let mut cat = state.catalog.borrow_mut();
            if let Some(d) = cat.datasets.get_mut(&dataset) {
                if !d.durable {
                    metrics.datasets.inc();
                }
                d.durable = true;
                d.last_lsn = d.last_lsn.max(lsn);
            }
            let _ = reply.send(Ok(committed));
        }
        Op::Batch(Batch { batch, producer, .. }) => {
            let mut cat = state.catalog.borrow_mut();
            let d = cat.datasets.get_mut(&dataset).expect("dataset of a committed batch");
            if let Some(p) = producer {
                d.producers.entry(p.id.to_string()).or_default().record(p.seq, lsn);
            }
            let (rows, bytes) = d.push(lsn, batch);
            drop(cat);
            metrics.rows_ingested.inc_by(rows);
            metrics.batches_ingested.inc();
            metrics.records.inc_by(rows as i64);
            state.add_memory(bytes);
            let _ = reply.send(Ok(committed));
            wake_followers(state, &dataset);
        }
        Op::Producers(_) => unreachable!("the request loop refuses a producers' state"),
        // The dataset left the catalog before its forget was logged.
        Op::Forget => {
            let _ = reply.send(Ok(committed));
        }
        Op::Drop => {
            state.forget(&dataset);
            // The tombstone is durable; its snapshot table goes next.
            tracing::debug!(dataset, %lsn, "drop: tombstone durable");
            remove_table(state, dataset, Some((reply, committed)));
        }
    }
}
