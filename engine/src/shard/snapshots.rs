//! The snapshot worker of a shard: runs on a low-share task queue so that
//! commits and acknowledgements go first.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use glommio::{Latency, Shares};

use super::request::{Reply, SnapshotReport, Write};
use super::State;
use crate::error::{Error, Result};
use crate::ids::Lsn;
use crate::metrics::{ShardLabel, StatusLabel};
use crate::snapshot::{self, CompactionWrite, SnapshotWrite};

/// Share of the shard's CPU the snapshot queue gets against the default
/// queue's 1000 when both have work.
const SNAPSHOT_SHARES: usize = 50;

/// After a failed run the worker waits this long before the next, so that a
/// failing snapshot volume is not hammered (memory pressure asks again
/// every few milliseconds).
const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A request for a snapshot: `dataset` `None` means all; `Some("")` only
/// wakes the worker (new settings).
pub struct SnapJob {
    pub dataset: Option<String>,
    pub reply: Option<Reply<SnapshotReport>>,
}

pub(super) fn spawn_worker(state: Rc<State>, rx: flume::Receiver<SnapJob>) -> glommio::task::JoinHandle<()> {
    let tq = glommio::executor().create_task_queue(
        Shares::Static(SNAPSHOT_SHARES),
        Latency::NotImportant,
        &format!("snapshots-{}", state.id),
    );
    glommio::spawn_local_into(worker(state, rx), tq).expect("snapshot task queue").detach()
}

/// The worker would end when its channel closes, but the senders live in
/// the shard state it shares, so it is cancelled instead; a snapshot in
/// progress leaves only a temporary file, which the next start deletes.
pub(super) async fn stop_worker(handle: glommio::task::JoinHandle<()>) {
    handle.cancel();
}

async fn worker(state: Rc<State>, rx: flume::Receiver<SnapJob>) {
    let mut last_run = Instant::now();
    loop {
        let interval = state.snapshot_interval.get();
        let due = interval.saturating_sub(last_run.elapsed());
        let job = futures::select! {
            j = rx.recv_async().fuse() => match j {
                Ok(j) => Some(j),
                Err(_) => return,
            },
            _ = glommio::timer::sleep(due).fuse() => None,
        };
        let mut jobs: Vec<SnapJob> = job.into_iter().collect();
        jobs.extend(rx.try_iter());
        let timer = jobs.is_empty();
        jobs.retain(|j| j.dataset.as_deref() != Some("") || j.reply.is_some());
        if !timer && jobs.is_empty() {
            continue; // settings changed: recompute the deadline
        }
        // One run serves every queued request: all datasets if any asks for
        // all (or the timer fired), else the named ones.
        let all = timer || jobs.iter().any(|j| j.dataset.is_none());
        let names: Option<Vec<String>> = (!all).then(|| jobs.iter().filter_map(|j| j.dataset.clone()).collect());
        state.pressure_queued.set(false);
        let mut due = Vec::new();
        let r = run(&state, names, &mut due).await;
        if all {
            last_run = Instant::now();
        }
        let r = r.map_err(Arc::new);
        state.metrics.snapshot_failing.get_or_create(&ShardLabel { shard: state.id.0 }).set(r.is_err() as i64);
        match &r {
            Ok(_) => state.budget.snapshot_succeeded(),
            Err(e) => state.budget.snapshot_failed(e.clone()),
        }
        if let Err(e) = &r {
            tracing::warn!(
                shard = %state.id,
                error = %e,
                "snapshot failed, the WAL is kept; next try in {RETRY_BACKOFF:?} at the earliest"
            );
        }
        for j in jobs {
            if let Some(reply) = j.reply {
                let _ = reply.send(r.clone().map_err(|source| Error::Snapshot { shard: state.id, source }));
            }
        }
        // After the answers: `force_snapshot` returns once the snapshot is
        // durable, not after merges (40 s under load, measured).
        compact_due(&state, due).await;
        if r.is_err() {
            glommio::timer::sleep(RETRY_BACKOFF).await;
        }
    }
}

/// Snapshots the named datasets (or all), evicts snapshotted batches if
/// memory is tight, and releases WAL segments every snapshot covers.
async fn run(
    state: &Rc<State>,
    names: Option<Vec<String>>,
    due: &mut Vec<(String, Compaction)>,
) -> Result<SnapshotReport> {
    let started = Instant::now();
    let all = names.is_none();
    // Dropped datasets' tables whose removal failed: tried again each run.
    let failed: Vec<String> =
        state.dropping.borrow().iter().filter(|(_, e)| e.is_some()).map(|(n, _)| n.clone()).collect();
    for name in failed {
        super::remove_table(state, name, None);
    }
    let permit = state.snapshot_lock.acquire_permit(1).await;
    let names = match names {
        Some(n) => n,
        None => state.catalog.borrow().datasets.iter().filter(|(_, d)| d.durable).map(|(n, _)| n.clone()).collect(),
    };
    let mut report = SnapshotReport::default();
    let mut first_error = None;
    for name in names {
        let done = match snapshot_dataset(state, &name, &mut report).await {
            Ok(Some(c)) => {
                due.push((name.clone(), c));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                state.metrics.snapshot_operations.get_or_create(&StatusLabel { status: "ok" }).inc();
            }
            Err(e) => {
                state.metrics.snapshot_operations.get_or_create(&StatusLabel { status: "error" }).inc();
                tracing::warn!(shard = %state.id, dataset = name, error = %e, "snapshot of dataset failed");
                first_error.get_or_insert(e);
            }
        }
    }
    // Under the shared budget's half, evicted rows would only cost reads.
    if state.budget.above_quarters(2) {
        report.bytes_evicted = evict(state);
    }
    if state.dropping.borrow().is_empty() {
        report.segments_deleted = truncate_wal(state).await?;
    }
    drop(permit);
    state.metrics.snapshot_seconds.observe(started.elapsed().as_secs_f64());
    match first_error {
        Some(e) => Err(e),
        None => {
            if all {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                state
                    .metrics
                    .snapshot_last_success
                    .get_or_create(&ShardLabel { shard: state.id.0 })
                    .set(now.as_secs_f64());
            }
            Ok(report)
        }
    }
}

/// Hands `dataset` over to the node that owns it now: commits what its
/// table lacks (a snapshot, idempotent by the shard's `txn`), forgets the
/// dataset here, then logs a forget record, so that a restart before its
/// segments are released does not replay the rows and hand them over
/// again (into a table the owner may have dropped, or dropped and made
/// again, meanwhile). The gateway routes the dataset's calls to its owner
/// meanwhile, so no write arrives here.
pub(super) fn hand_over(state: &Rc<State>, dataset: String, reply: Reply<()>, commits: flume::Sender<Write>) {
    let state = state.clone();
    glommio::spawn_local(async move {
        let permit = state.snapshot_lock.acquire_permit(1).await;
        let r = async {
            let Some(ours) = state.catalog.borrow().datasets.get(&dataset).map(|d| d.schema.clone()) else {
                return Ok(None);
            };
            // A table of another schema is another dataset of that name:
            // the owner dropped this one, which drops these rows too (they
            // were written before the node list changed, so before the
            // drop), and made a new one. Committing them would put files of
            // two schemas in one table.
            let store = state.store.clone();
            let (name, shard) = (dataset.clone(), state.id);
            if let Some(t) = state.store.io(async move { store.load(&name, Some(shard)).await }).await? {
                let theirs = t.manifest.schema().map_err(|reason| {
                    Error::store(format!("reading the schema of {dataset:?}'s table"), reason)
                })?;
                if theirs.fields() != ours.fields() {
                    let rows: usize = state.catalog.borrow().datasets.get(&dataset).map_or(0, |d| {
                        d.unsnapshotted().map(|(_, b)| b.num_rows()).sum()
                    });
                    tracing::warn!(shard = %state.id, dataset, rows, "not handed over: the owner's table has another schema (the dataset was dropped and made again there); these rows were dropped with it");
                    state.forget(&dataset);
                    return Ok(Some(0));
                }
            }
            let mut report = SnapshotReport::default();
            snapshot_dataset(&state, &dataset, &mut report).await?;
            let done = state.catalog.borrow().datasets.get(&dataset).is_some_and(|d| !d.durable || d.all_snapshotted());
            if !done {
                return Err(Error::NotStored { reason: "rows were written during the handover; it is retried" });
            }
            state.forget(&dataset);
            Ok(Some(report.rows_written))
        }
        .await;
        drop(permit);
        // Not held (any more): a record still goes to the WAL, in case the
        // last attempt forgot the dataset and failed to log its own.
        let r = match r {
            Ok(Some(rows)) => log_forget(&commits, &dataset).await.map(|()| {
                tracing::info!(shard = %state.id, dataset, rows, "handed over to its owner");
            }),
            Ok(None) => log_forget(&commits, &dataset).await.and(Err(Error::NotFound(dataset.clone()))),
            Err(e) => Err(e),
        };
        let _ = reply.send(r);
    })
    .detach();
}

/// Forgets `dataset` here without handing it over: its owner is dropping
/// it, and these rows were written before the drop (before the node list
/// changed). Under the snapshot lock, so a handover or snapshot of it that
/// is under way ends first: nothing of it reaches the table after the owner
/// has been told it is forgotten. The forget record is logged whether or
/// not the dataset is held: a retry after a failed one, or a restart that
/// replayed the rows again, must leave one in the WAL too.
pub(super) fn forget(state: &Rc<State>, dataset: String, reply: Reply<bool>, commits: flume::Sender<Write>) {
    let state = state.clone();
    glommio::spawn_local(async move {
        let permit = state.snapshot_lock.acquire_permit(1).await;
        let held = state.catalog.borrow().datasets.get(&dataset).map(|d| d.durable);
        let r = match held {
            // An Open under way here would be a write this node should not
            // take (another node owns the dataset).
            Some(false) => Err(Error::NotStored { reason: "the dataset is being created here; the forget is retried" }),
            Some(true) => {
                let rows: usize = state
                    .catalog
                    .borrow()
                    .datasets
                    .get(&dataset)
                    .map_or(0, |d| d.unsnapshotted().map(|(_, b)| b.num_rows()).sum());
                state.forget(&dataset);
                tracing::info!(shard = %state.id, dataset, rows, "forgotten: its owner drops it");
                Ok(true)
            }
            None => Ok(false),
        };
        // IMPORTANT: not held while the record is logged. A commit that
        // waits for memory waits for snapshots, which need the lock.
        drop(permit);
        let r = match r {
            Ok(held) => log_forget(&commits, &dataset).await.map(|()| held),
            Err(e) => Err(e),
        };
        let _ = reply.send(r);
    })
    .detach();
}

/// Logs a forget record for `dataset`, gone from the catalog, and waits
/// until it is durable.
async fn log_forget(commits: &flume::Sender<Write>, dataset: &str) -> Result<()> {
    let (reply, rx) = futures::channel::oneshot::channel();
    let w = Write {
        dataset: dataset.to_owned(),
        op: crate::record::Op::Forget,
        stream: super::request::PutStream::new(),
        queued_at: Instant::now(),
        reply,
    };
    commits.send_async(w).await.map_err(|_| Error::ShuttingDown)?;
    rx.await.map_err(|_| Error::ShuttingDown)?.map(drop)
}

/// Reads `dataset`'s table again after another node handed rows over into
/// it. Files this shard knows keep their LSNs; the others are another
/// node's and count as evicted rows (LSN 0, see `SnapshotStore::load`).
/// Under the snapshot lock: no snapshot or merge of this shard is between
/// reading its file list and writing it back.
pub(super) fn refresh(state: &Rc<State>, dataset: String, reply: Reply<()>) {
    let state = state.clone();
    glommio::spawn_local(async move {
        let _permit = state.snapshot_lock.acquire_permit(1).await;
        let store = state.store.clone();
        let (name, shard) = (dataset.clone(), state.id);
        let r = match state.store.io(async move { store.load(&name, Some(shard)).await }).await {
            Err(e) => Err(e),
            Ok(None) => Ok(()),
            Ok(Some(_)) if state.dropping.borrow().contains_key(&dataset) => Ok(()),
            Ok(Some(t)) => {
                let m = t.manifest;
                let mut cat = state.catalog.borrow_mut();
                match cat.datasets.get_mut(&dataset) {
                    // An Open under way: its commit makes it durable.
                    Some(d) if !d.durable => Ok(()),
                    Some(d) => {
                        let known: std::collections::HashMap<&str, &crate::dataset::SnapshotFile> =
                            d.files.iter().map(|f| (f.name.as_str(), f)).collect();
                        let mut files: Vec<_> = m
                            .files
                            .into_iter()
                            .map(|f| match known.get(f.name.as_str()) {
                                Some(k) => (*k).clone(),
                                None => crate::dataset::SnapshotFile { min_lsn: Lsn::ZERO, max_lsn: Lsn::ZERO, ..f },
                            })
                            .collect();
                        files.sort_by_key(|f| (f.max_lsn, f.min_lsn));
                        d.files = files;
                        super::recovery::merge_producers(&mut d.producers, &m.producers);
                        Ok(())
                    }
                    None => super::recovery::dataset_of(&m).map(|d| {
                        cat.datasets.insert(dataset.clone(), d);
                        state.metrics.datasets.inc();
                    }),
                }
            }
        };
        if r.is_ok() {
            tracing::info!(shard = %state.id, dataset, "read the table again: rows handed over are served");
        }
        let _ = reply.send(r);
    })
    .detach();
}

/// Runs the merges the last snapshot run found due (their own histogram;
/// `snapshot_seconds` leaves them out). A failed merge is logged and
/// counted; its files stay as they are.
async fn compact_due(state: &Rc<State>, due: Vec<(String, Compaction)>) {
    for (name, c) in due {
        let _permit = state.snapshot_lock.acquire_permit(1).await;
        if let Err(e) = compact(state, &name, c.schema, c.covered).await {
            state.metrics.snapshot_operations.get_or_create(&StatusLabel { status: "error" }).inc();
            tracing::warn!(shard = %state.id, dataset = name, error = %e, "merging snapshot files failed; they stay as they are");
        }
        // Files replaced more than the retention period ago.
        match state.store.io(state.store.clone().vacuum(name.clone())).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(shard = %state.id, dataset = name, files = n, "vacuum deleted replaced files"),
            Err(e) => tracing::warn!(shard = %state.id, dataset = name, error = %e, "vacuum failed; retried later"),
        }
    }
}

/// What `compact` needs after a dataset's snapshot.
struct Compaction {
    schema: arrow::datatypes::SchemaRef,
    covered: Lsn,
}

/// Writes the dataset's new rows and its manifest; then a compaction may
/// be due (the caller runs it, timed apart).
async fn snapshot_dataset(state: &Rc<State>, name: &str, report: &mut SnapshotReport) -> Result<Option<Compaction>> {
    let (schema, batches, min_lsn, covered, mut files, producers) = {
        let cat = state.catalog.borrow();
        let Some(d) = cat.datasets.get(name).filter(|d| d.durable) else { return Ok(None) };
        if d.all_snapshotted() {
            return Ok(None); // nothing new since the last snapshot
        }
        let pending: Vec<_> = d.unsnapshotted().cloned().collect();
        let min_lsn = pending.first().map_or(d.last_lsn, |(l, _)| *l);
        (
            d.schema.clone(),
            pending,
            min_lsn,
            d.last_lsn,
            d.files.clone(),
            // As of `covered`: a batch and its sequence number are recorded together.
            d.producers.clone(),
        )
    };
    let write = SnapshotWrite {
        dataset: name.to_owned(),
        schema: schema.clone(),
        batches,
        min_lsn,
        covered_lsn: covered,
        producers,
    };
    // IMPORTANT: the commit is what makes the file count; only after it is
    // durable may the WAL records it covers go.
    let outcome = state.store.io(state.store.clone().snapshot(state.id, write)).await?;
    if let Some(file) = &outcome.file {
        report.files_written += 1;
        report.rows_written += outcome.rows;
        report.bytes_written += file.bytes;
        state.metrics.snapshot_bytes.inc_by(file.bytes);
        state.metrics.snapshot_rows.inc_by(outcome.rows);
    }
    if outcome.table_ahead {
        // An earlier try's commit had landed unanswered: the table lists
        // files this shard does not. Until they are known, eviction and
        // reads cannot rely on the list, so this snapshot counts only once
        // they are (a failure here is retried like any snapshot's).
        let store = state.store.clone();
        let (owned, shard) = (name.to_owned(), state.id);
        match state.store.io(async move { store.load(&owned, Some(shard)).await }).await? {
            Some(t) => files = t.manifest.files,
            None => return Err(Error::NotFound(name.to_owned())),
        }
    } else if let Some(file) = outcome.file {
        files.push(file);
    }
    {
        let mut cat = state.catalog.borrow_mut();
        let Some(d) = cat.datasets.get_mut(name) else { return Ok(None) };
        // Same incarnation (not dropped and created again meanwhile).
        if !(Arc::ptr_eq(&d.schema, &schema) && d.last_lsn >= covered) {
            return Ok(None);
        }
        d.files = files;
        d.covered_lsn = covered;
        d.has_manifest = true;
        report.datasets += 1;
    }
    Ok(Some(Compaction { schema, covered }))
}

/// Merges a run of small snapshot files into one, so that a dataset
/// snapshotted often does not pile up files. The run never straddles the
/// eviction boundary (reads pick files by it). The merge is one Delta
/// rewrite commit (add the merged file, remove the run, `dataChange:
/// false`): a reader sees the old files or the new one, never both, and
/// the old ones stay in storage for the retention period.
async fn compact(state: &Rc<State>, name: &str, schema: arrow::datatypes::SchemaRef, covered: Lsn) -> Result<()> {
    let (run, evicted) = {
        let cat = state.catalog.borrow();
        let Some(d) = cat.datasets.get(name) else { return Ok(()) };
        (snapshot::compaction_run(&d.files, d.evicted_lsn), d.evicted_lsn)
    };
    let Some(run) = run else { return Ok(()) };
    let started = Instant::now();
    let (old, producers) = {
        let cat = state.catalog.borrow();
        let d = &cat.datasets[name];
        (d.files[run.clone()].to_vec(), d.producers.clone())
    };
    let write = CompactionWrite {
        dataset: name.to_owned(),
        schema: schema.clone(),
        sources: old.clone(),
        covered_lsn: covered,
        producers,
    };
    let merged = state.store.io(state.store.clone().compact(write)).await?;
    let bytes = merged.bytes;
    {
        let mut cat = state.catalog.borrow_mut();
        let Some(d) = cat.datasets.get_mut(name) else { return Ok(()) };
        let unchanged = d.evicted_lsn == evicted && d.files.get(run.clone()).is_some_and(|f| f == &old[..]);
        if unchanged {
            d.files.splice(run, [merged]);
        } else if let Some(start) = d.files.iter().position(|f| f == &old[0]) {
            // Only the catalog moved on (a snapshot appended files): the
            // commit replaced exactly `old`.
            if d.files.get(start..start + old.len()).is_some_and(|f| f == &old[..]) {
                d.files.splice(start..start + old.len(), [merged]);
            }
        }
    }
    state.metrics.snapshot_compactions.inc();
    state.metrics.compaction_bytes_read.inc_by(old.iter().map(|f| f.bytes).sum());
    state.metrics.compaction_bytes_written.inc_by(bytes);
    state.metrics.compaction_seconds.observe(started.elapsed().as_secs_f64());
    Ok(())
}

/// Drops every snapshotted batch from memory.
fn evict(state: &State) -> u64 {
    let mut freed = 0;
    for d in state.catalog.borrow_mut().datasets.values_mut() {
        let rows_before = d.records;
        freed += d.evict();
        state.metrics.records.dec_by((rows_before - d.records) as i64);
    }
    state.sub_memory(freed);
    state.metrics.evicted_bytes.inc_by(freed);
    freed
}

/// Releases the sealed WAL segments whose every record is in snapshot
/// files: up to the configured number become free files for new segments
/// (renamed, see `wal/free.rs`), the rest are deleted.
async fn truncate_wal(state: &State) -> Result<u64> {
    let needed_from =
        state.catalog.borrow().datasets.values().filter(|d| d.durable).filter_map(|d| d.wal_needed_from()).min();
    let doomed: Vec<_> = {
        let mut sealed = state.sealed.borrow_mut();
        let keep = sealed.partition_point(|s| needed_from.is_none_or(|n| s.last_lsn < n));
        sealed.drain(..keep).collect()
    };
    let storage = state.free.borrow().storage().clone();
    let mut recycled = Vec::new();
    for (i, seg) in doomed.iter().enumerate() {
        let released = async {
            match crate::wal::free::recycle_name(&state.free, &seg.path, recycled.len()).await? {
                Some(name) => {
                    storage.rename(&seg.path, &name).map_err(Error::io(
                        "recycling covered WAL segment",
                        &seg.path,
                        0,
                    ))?;
                    recycled.push(name);
                    state.metrics.wal_segments_recycled.inc();
                }
                None => {
                    storage.remove_file(&seg.path).map_err(Error::io("deleting covered WAL segment", &seg.path, 0))?;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = released {
            // IMPORTANT: the segments not released go back to the front of
            // the list, oldest first, so the next run retries them in order.
            // Released out of order, a segment left behind (its delete
            // failed) would sit before a gap in the LSNs at the next start,
            // which refuses that as corruption.
            state.sealed.borrow_mut().splice(0..0, doomed[i..].iter().cloned());
            return Err(e);
        }
        state.metrics.wal_segments_deleted.inc();
    }
    if !doomed.is_empty() {
        crate::wal::sync_dir(&*storage, &state.wal_dir).await?;
        tracing::debug!(
            shard = %state.id,
            segments = doomed.len(),
            recycled = recycled.len(),
            "released WAL segments covered by snapshots"
        );
    }
    // IMPORTANT: a free file becomes a segment only once its free name is
    // durable; else a crash could bring the old name back over a file whose
    // header the new segment already rewrote.
    let mut free = state.free.borrow_mut();
    for name in recycled {
        free.add(name);
    }
    Ok(doomed.len() as u64)
}
