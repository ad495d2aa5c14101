//! The write-ahead log of one shard: numbered segment files written with
//! O_DIRECT through glommio, one group commit per write, one `fdatasync` per
//! commit ([`Wal::append_written`], then [`Written::sync`]).
//!
//! Invariants the recovery code relies on:
//! - at most two commits are not durable at a time: the shard writes the
//!   next commit while the last one syncs, and starts its sync only once
//!   the last one's returned. A commit written so starts with a durable
//!   mark (the LSN through which the log was durable), so replay can tell
//!   a torn commit followed by the one written while it synced (neither
//!   acknowledged: a torn tail) from damage to an acknowledged commit;
//! - every segment but the newest ends with a seal frame, written and synced
//!   before the next segment is created, and nothing is written after a seal;
//! - a commit whose write failed is sealed over at once (its bytes may be
//!   partly on disk), so no later commit or replay can pick up its frames;
//! - LSNs are contiguous within a shard, and every frame records the offset
//!   of the commit that holds it;
//! - no commit extends its file: every segment file is preallocated to
//!   [`free::segment_file_bytes`] (zeros written, or a recycled segment of
//!   that length) and a commit that would not fit with the seal after it
//!   goes to the next segment, which a background task has ready
//!   (`free.rs`). Segment ids and LSNs only grow in a directory, so the
//!   frames a recycled file still holds never pass for new ones.

pub mod body_pool;
mod commit;
pub mod format;
pub mod free;
pub mod ipc;
mod repair;
pub mod replay;
mod segment;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::{Latency, Shares};

use crate::error::{Error, Result};
use crate::io::{Storage, StorageRef};
use crate::metrics::EngineMetrics;
pub use commit::Record;
use commit::{write_seal, SyncError};
use free::FreeFiles;
pub use ipc::IpcMessage;
use repair::reopen_after_crash;
pub use repair::{seal_after_crash, Resume};
use segment::{close, create_segment, ActiveSegment};
pub use segment::{is_segment_tmp_name, parse_segment_file_name, segment_file_name};

/// Share of the shard's CPU the task preallocating segment files gets
/// against the default queue's 1000 (it mostly waits for the disk).
const PREPARE_SHARES: usize = 50;

use crate::ids::ShardId;
pub use crate::ids::{Lsn, SegmentId};

/// A finished segment: every record in it has an LSN up to `last_lsn`.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub id: SegmentId,
    pub path: PathBuf,
    pub last_lsn: Lsn,
}

/// The names in `dir` on `storage`; none if it does not exist. `op` names
/// the listing in errors.
pub(crate) fn list_names(storage: &dyn Storage, dir: &Path, op: &'static str) -> Result<Vec<String>> {
    crate::io::list_or_empty(storage, dir).map_err(Error::io(op, dir, 0))
}

/// The entries of `dir`; none if it does not exist. `op` names the listing
/// in errors.
pub(crate) fn list_dir(dir: &Path, op: &'static str) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map_err(Error::io(op, dir, 0))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(op, dir, 0)(e)),
    }
}

/// fsync a directory, so that creates, renames and deletes in it are durable.
pub async fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    // IMPORTANT: without this, a new segment's directory entry can vanish on power loss.
    storage.sync_dir(dir).await.map_err(Error::io("fsyncing directory", dir, 0))
}

pub struct Wal {
    storage: StorageRef,
    dir: PathBuf,
    shard: ShardId,
    generation: u64,
    /// Length of every new segment file; a commit goes to the next segment
    /// unless it and a seal after it fit in it.
    file_bytes: u64,
    next_lsn: Lsn,
    /// `None` until a segment could be created (the volume was full at
    /// start).
    active: Option<ActiveSegment>,
    /// The id the next new segment gets: above every segment in the
    /// directory and every id a free file's header names.
    next_segment_id: SegmentId,
    metrics: EngineMetrics,
    /// Set when an fdatasync failed: the kernel may have dropped the dirty
    /// pages, so retrying could report success for lost data.
    poisoned: bool,
    /// Finished segments, oldest first; shared with the snapshot task, which
    /// deletes (or recycles) those wholly covered by snapshots.
    sealed: Rc<RefCell<Vec<SealedSegment>>>,
    /// Files ready to become segments; shared with the snapshot task, which
    /// adds recycled ones.
    free: Rc<RefCell<FreeFiles>>,
    /// The background task preallocating the next free file, if one was started.
    preparing: Option<Preparing>,
    prepare_queue: glommio::TaskQueueHandle,
}

/// A commit written by [`Wal::append_written`], not yet durable.
pub struct Written {
    /// The LSN of its first record (after its durable mark, if it has one).
    pub records_from: Lsn,
    /// The first LSN it takes (its durable mark's, if it has one).
    pub first_lsn: Lsn,
    unsynced: commit::Unsynced,
}

impl Written {
    /// Whether its sync is a plain syscall on the calling thread (a small
    /// commit): it then blocks the shard, and nothing is gained by writing
    /// the next commit meanwhile.
    pub fn syncs_inline(&self) -> bool {
        self.unsynced.syncs_inline()
    }

    /// Makes the commit durable (and every commit written before it). On an
    /// error, call [`Wal::poison`]: nothing more may be written.
    pub async fn sync(self) -> Result<()> {
        self.unsynced.sync().await.map_err(SyncError::into_inner)
    }
}

struct Preparing {
    task: glommio::Task<()>,
    /// Cleared when the task ends, whatever its outcome.
    running: Rc<Cell<bool>>,
    /// Where it writes until the file is complete.
    tmp: PathBuf,
}

impl Wal {
    /// Opens the log of a shard that logs from `next_lsn`: in the crashed
    /// segment `resume`, or else in a new segment `segment_id` (made from a
    /// file of `free` if there is one). Neither needs free space: the
    /// crashed segment is sealed in place (an overwrite of a preallocated
    /// block; a file too short for that is cut and sealed with the next
    /// commit or at shutdown), and if the new segment cannot be created
    /// because the volume is full, the shard starts without one, serves
    /// reads, and each commit tries again. Then the next segment's file is
    /// preallocated in the background, unless `free` has one.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        storage: StorageRef,
        dir: &Path,
        shard: ShardId,
        generation: u64,
        segment_id: SegmentId,
        next_lsn: Lsn,
        metrics: EngineMetrics,
        sealed: Vec<SealedSegment>,
        resume: Option<Resume>,
        mut free: FreeFiles,
    ) -> Result<Self> {
        let file_bytes = free.file_bytes();
        let mut next_segment_id = segment_id;
        let active = match &resume {
            Some(r) => {
                assert_eq!(r.next_lsn, next_lsn, "a resumed segment goes on from its own last LSN");
                Some(reopen_after_crash(&*storage, r).await?)
            }
            None => {
                let reuse = free.take();
                match create_segment(&*storage, dir, shard, generation, segment_id, next_lsn, reuse, file_bytes).await {
                    Ok(a) => {
                        next_segment_id = next_segment_id.next();
                        Some(a)
                    }
                    Err(e) if e.is_disk_full() => {
                        tracing::warn!(%shard, error = %e, "the WAL volume is full: starting without a segment; writes are refused until there is room");
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let prepare_queue = glommio::executor().create_task_queue(
            Shares::Static(PREPARE_SHARES),
            Latency::NotImportant,
            &format!("wal-prepare-{shard}"),
        );
        let mut wal = Self {
            storage,
            dir: dir.to_owned(),
            shard,
            generation,
            file_bytes,
            next_lsn,
            active,
            next_segment_id,
            metrics,
            poisoned: false,
            sealed: Rc::new(RefCell::new(sealed)),
            free: Rc::new(RefCell::new(free)),
            preparing: None,
            prepare_queue,
        };
        if resume.is_some() && wal.active.as_ref().is_some_and(|a| a.pos + a.block <= a.file_len.get()) {
            // IMPORTANT: sealed now, so that a crash before the next commit
            // finds this end again and not the torn (or, after
            // `--on-corruption truncate`, damaged) bytes after it, which
            // stay in the file: it keeps its preallocated length.
            if let Err(e) = wal.seal().await {
                if wal.poisoned {
                    return Err(e);
                }
                tracing::warn!(%shard, error = %e, "sealing the segment a crash left failed; retried before the next commit");
            }
        }
        wal.start_preparing();
        Ok(wal)
    }

    /// The finished segments, oldest first.
    pub fn sealed_segments(&self) -> Rc<RefCell<Vec<SealedSegment>>> {
        self.sealed.clone()
    }

    /// The free files new segments are made from.
    pub fn free_files(&self) -> Rc<RefCell<FreeFiles>> {
        self.free.clone()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Starts preallocating a free file in the background, unless one is
    /// free already or being made.
    fn start_preparing(&mut self) {
        if !self.free.borrow().is_empty() || self.preparing.as_ref().is_some_and(|p| p.running.get()) {
            return;
        }
        let (tmp, path) = self.free.borrow_mut().new_names();
        let running = Rc::new(Cell::new(true));
        let work = {
            let (storage, dir, free, metrics, running, tmp) = (
                self.storage.clone(),
                self.dir.clone(),
                self.free.clone(),
                self.metrics.clone(),
                running.clone(),
                tmp.clone(),
            );
            let (shard, bytes) = (self.shard, self.file_bytes);
            async move {
                match free::preallocate(&*storage, &dir, &tmp, &path, bytes).await {
                    Ok(()) => {
                        metrics.wal_files_preallocated.inc();
                        free.borrow_mut().add(path);
                    }
                    Err(e) => {
                        tracing::warn!(%shard, error = %e, "preallocating the next WAL segment file failed; the rotation that needs it makes one itself")
                    }
                }
                running.set(false);
            }
        };
        match glommio::spawn_local_into(work, self.prepare_queue) {
            Ok(task) => self.preparing = Some(Preparing { task, running, tmp }),
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, "cannot start preallocating the next WAL segment file")
            }
        }
    }

    /// A free file for the next segment: a ready one, else the one being
    /// preallocated, waited for (it is partly written already). `None` if
    /// neither: the new segment is then preallocated on the spot.
    async fn next_free_file(&mut self) -> Option<PathBuf> {
        let ready = self.free.borrow_mut().take();
        if ready.is_some() {
            return ready;
        }
        self.metrics.wal_rotations_unprepared.inc();
        if let Some(p) = self.preparing.take().filter(|p| p.running.get()) {
            p.task.await;
        }
        self.free.borrow_mut().take()
    }

    /// Writes `records` as one commit and makes it durable
    /// (`Durability::Synced`: write, then `fdatasync`). Returns the LSN of
    /// the first record; the rest follow contiguously.
    pub async fn append_synced(&mut self, records: &[Record<'_>]) -> Result<Lsn> {
        let written = self.append_written(records, None).await?;
        let first = written.records_from;
        let synced = written.sync().await;
        if synced.is_err() {
            self.poison();
        }
        synced.map(|()| first)
    }

    /// Whether a commit of `records` (with a durable mark if `marked`)
    /// would start a new segment: the commit being synced, if any, must be
    /// settled first (the old segment is sealed and closed).
    pub fn rotates_for(&self, records: &[Record<'_>], marked: bool) -> bool {
        match &self.active {
            None => true,
            Some(a) => {
                a.sealed || a.tail_suspect || {
                    let p = commit::plan(a, records, marked.then_some(Lsn::ZERO));
                    a.pos + p.len + a.block > self.file_bytes && a.pos > a.block
                }
            }
        }
    }

    /// Writes one commit of `records` and returns it unsynced: nothing in
    /// it may be acknowledged before [`Written::sync`] returns Ok. With
    /// `durable_through` (the LSN through which the log is durable, when
    /// the commit before this one is still being synced) the commit starts
    /// with a durable mark, so that replay can tell it from a commit
    /// written after the one before was acknowledged. At most one commit
    /// may be unsynced when this is called, and not when
    /// [`Wal::rotates_for`] says the commit starts a new segment.
    pub async fn append_written(&mut self, records: &[Record<'_>], durable_through: Option<Lsn>) -> Result<Written> {
        assert!(!records.is_empty());
        assert!(!self.poisoned, "no WAL write after a failed fsync");
        // Nothing goes after a seal (one may precede a failed rotation),
        // after a failed write or into a crashed segment (both sealed
        // first): a new segment. Nor a commit that, with the seal after
        // it, would extend the file (unless the segment is empty: a commit
        // larger than a segment extends its own).
        if self.rotates_for(records, durable_through.is_some()) {
            assert!(durable_through.is_none(), "a rotation waits for the commit being synced");
            self.rotate().await?;
        }
        let seg = self.active.as_mut().expect("a rotation leaves an active segment");
        let plan = commit::plan(seg, records, durable_through);
        let (len, lsns) = (plan.len, plan.lsns());
        let commit_start = seg.pos;
        let first_lsn = self.next_lsn;
        let chunks = commit::encode(seg, records, first_lsn, commit_start, &plan);
        match commit::write_commit(seg, chunks, commit_start, &self.metrics).await {
            Ok(unsynced) => {
                // IMPORTANT: the next commit goes after this one whatever
                // its sync's outcome: a failed sync poisons the shard.
                seg.pos += len;
                self.next_lsn += lsns;
                if durable_through.is_some() {
                    self.metrics.wal_commits_overlapped.inc();
                }
                Ok(Written { records_from: first_lsn + (lsns - records.len() as u64), first_lsn, unsynced })
            }
            Err(e) => {
                // The commit never became durable: its schemas may be missing
                // from the file, so write them again next time.
                seg.schemas_written.retain(|d| !records.iter().any(|r| r.dataset == d));
                Err(self.after_failed_write(e).await)
            }
        }
    }

    /// Marks the log failed after a commit's sync failed: the kernel may
    /// have dropped the dirty pages, so no later sync can vouch for them.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    async fn after_failed_write(&mut self, e: SyncError) -> Error {
        let e = match e {
            SyncError::Fsync(e) => {
                self.poisoned = true;
                return e;
            }
            SyncError::Write(e) => e,
        };
        let seg = self.active.as_mut().expect("a failed write was to the active segment");
        seg.tail_suspect = true;
        // IMPORTANT: part of the failed commit may be on disk from
        // `commit_start` on, with valid checksums and the LSNs the next
        // commit will reuse. A seal frame written over its start ends the
        // segment there, so neither replay nor a shorter next commit can
        // take those frames for acknowledged ones.
        if let Err(seal) = self.seal().await {
            // IMPORTANT: the failed commit's intact frames stay replayable
            // until a seal covers them (the next commit retries it first),
            // and a crash before that would bring them back: their outcome
            // is unknown, and the error says so.
            tracing::warn!(shard = %self.shard, error = %seal, "sealing over a failed WAL write failed too; retried before the next commit");
            if !self.poisoned {
                return Error::WalWriteInDoubt {
                    shard: self.shard,
                    source: std::sync::Arc::new(e),
                    seal: std::sync::Arc::new(seal),
                };
            }
        }
        e
    }

    /// Seals the active segment (unless it is already) and starts the next
    /// one. If the new file cannot be created the active segment stays
    /// sealed and the next commit tries again.
    async fn rotate(&mut self) -> Result<()> {
        self.seal().await?;
        let id = self.next_segment_id;
        let reuse = self.next_free_file().await;
        let created = create_segment(
            &*self.storage,
            &self.dir,
            self.shard,
            self.generation,
            id,
            self.next_lsn,
            reuse,
            self.file_bytes,
        )
        .await;
        self.start_preparing();
        let next = created?;
        self.next_segment_id = id.next();
        if let Some(old) = self.active.replace(next) {
            self.sealed.borrow_mut().push(SealedSegment {
                id: old.id,
                path: old.path.clone(),
                last_lsn: self.next_lsn.prev(),
            });
            close(old).await;
        }
        self.metrics.wal_segments_created.inc();
        Ok(())
    }

    /// Writes the seal frame that marks the active segment complete; a
    /// no-op if it is sealed already. The seal takes an LSN only once it is
    /// durable, so a retried seal carries the same one.
    pub async fn seal(&mut self) -> Result<()> {
        let Some(active) = self.active.as_mut().filter(|a| !a.sealed) else { return Ok(()) };
        let lsn = self.next_lsn;
        match write_seal(active, lsn, &self.metrics).await {
            Ok(()) => {
                self.next_lsn += 1;
                active.sealed = true;
                Ok(())
            }
            Err(SyncError::Fsync(e)) => {
                self.poisoned = true;
                Err(e)
            }
            Err(SyncError::Write(e)) => Err(e),
        }
    }

    /// Seals the active segment and closes it (clean shutdown). A free file
    /// still being preallocated is abandoned and removed.
    pub async fn close(mut self) -> Result<()> {
        if let Some(p) = self.preparing.take().filter(|p| p.running.get()) {
            p.task.cancel().await;
            let _ = self.storage.remove_file(&p.tmp);
        }
        self.seal().await?;
        if let Some(active) = self.active {
            close(active).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::format;
    use super::replay::{list_segments, replay_segment, CorruptionPolicy, SegmentEnd};
    use super::*;
    use crate::io::OpenMode;
    use crate::record::{Op, ProducerSeq};

    const FILE_BYTES: u64 = 1024 * 1024;

    /// A commit of `n` tombstones (48 bytes each).
    fn drops(n: usize) -> Vec<Record<'static>> {
        (0..n).map(|_| Record::new("d", &[], &Op::Drop)).collect()
    }

    /// Commits of 200 tombstones until the WAL rotates; returns their LSNs.
    async fn fill_segment(wal: &mut Wal) -> Vec<Lsn> {
        let sealed = wal.sealed_segments().borrow().len();
        let mut lsns = Vec::new();
        let records = drops(200);
        while wal.sealed_segments().borrow().len() == sealed {
            let first = wal.append_synced(&records).await.unwrap();
            lsns.extend((0..records.len() as u64).map(|i| first + i));
        }
        lsns
    }

    /// A new WAL of shard 0 in `dir`, its first segment 1 and LSN 1.
    async fn new_wal(fs: &StorageRef, dir: &Path, metrics: &EngineMetrics, free: FreeFiles) -> Wal {
        Wal::open(fs.clone(), dir, ShardId(0), 0, SegmentId(1), Lsn(1), metrics.clone(), Vec::new(), None, free)
            .await
            .unwrap()
    }

    async fn wait_for_a_free_file(wal: &Wal) {
        for _ in 0..2000 {
            if !wal.free_files().borrow().is_empty() {
                return;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("no free file was preallocated");
    }

    /// An intact frame of another, older segment somewhere after `from`.
    fn old_frame_after(path: &Path, id: SegmentId, from: u64) -> bool {
        let bytes = std::fs::read(path).unwrap();
        (from as usize..bytes.len()).step_by(8).any(|at| {
            format::decode_frame(&bytes[at..])
                .is_ok_and(|f| f.header.segment_id < id && f.header.commit_start == at as u64)
        })
    }

    fn ids(first: i64, rows: usize) -> arrow::array::RecordBatch {
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Int64,
            false,
        )]));
        let ids = arrow::array::Int64Array::from_iter_values(first..first + rows as i64);
        arrow::array::RecordBatch::try_new(schema, vec![std::sync::Arc::new(ids)]).unwrap()
    }

    /// Two commits not durable at once, as the shard writes them (the
    /// second while the first syncs, with a durable mark), then power lost
    /// with any part of each on the disk: replay never refuses, keeps every
    /// synced commit, and keeps the second commit only with all of the first.
    #[test]
    fn a_commit_written_while_the_one_before_syncs_replays_only_after_all_of_it() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..300u64 {
            let root = Path::new("/sim");
            let sim = crate::io::sim::SimStorage::new(seed, root);
            let fs: StorageRef = std::sync::Arc::new(sim.clone());
            let d = root.join("wal");
            crate::io::create_dir_durably(&*fs, &d).unwrap();
            let synced_first = seed % 3 == 0;
            let (durable, first, second) = glommio::LocalExecutorBuilder::default()
                .spawn({
                    let (fs, d) = (fs.clone(), d.clone());
                    move || async move {
                        let metrics = EngineMetrics::default();
                        let (free, _) = FreeFiles::open(fs.clone(), &d, FILE_BYTES, 0).await.unwrap();
                        let mut wal = new_wal(&fs, &d, &metrics, free).await;
                        let mut durable = Vec::new();
                        for n in [3, 40, 7] {
                            let at = wal.append_synced(&drops(n)).await.unwrap();
                            durable.extend((0..n as u64).map(|i| at + i));
                        }
                        let a = wal.append_written(&drops(20 + (seed % 11) as usize), None).await.unwrap();
                        let first: Vec<Lsn> = (a.records_from.get()..wal.next_lsn().get()).map(Lsn).collect();
                        let sync_a = glommio::spawn_local(a.sync());
                        glommio::executor().yield_now().await;
                        let mark = first[0].prev();
                        let b = wal.append_written(&drops(5 + (seed % 7) as usize), Some(mark)).await.unwrap();
                        let second: Vec<Lsn> = (b.records_from.get()..wal.next_lsn().get()).map(Lsn).collect();
                        if synced_first {
                            sync_a.await.unwrap();
                        } else {
                            drop(sync_a);
                        }
                        std::mem::forget(b);
                        std::mem::forget(wal);
                        (durable, first, second)
                    }
                })
                .unwrap()
                .join()
                .unwrap();
            let after = sim.crash(true);
            let fs: StorageRef = std::sync::Arc::new(after);
            let (got, end) = glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let mut got = Vec::new();
                    let mut end = None;
                    let segments = list_segments(&*fs, &d).unwrap();
                    let last = segments.len() - 1;
                    for (i, s) in segments.iter().enumerate() {
                        let r = replay_segment(&*fs, s, None, i == last, CorruptionPolicy::Refuse, |f, _| {
                            got.push(f.header.lsn);
                            Ok(())
                        })
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: replay refused: {e}"));
                        end = Some(r.end);
                    }
                    (got, end)
                })
                .unwrap()
                .join()
                .unwrap();
            let has = |lsns: &[Lsn]| lsns.iter().filter(|l| got.contains(l)).count();
            assert_eq!(has(&durable), durable.len(), "seed {seed}: a synced commit was lost");
            if synced_first {
                assert_eq!(has(&first), first.len(), "seed {seed}: the first commit was synced");
            }
            if has(&second) > 0 {
                assert_eq!(has(&first), first.len(), "seed {seed}: the second commit without all of the first");
            }
            let kept = got.len() - durable.len();
            outcomes.insert((
                kept == 0,
                has(&first) == first.len(),
                has(&second) > 0,
                matches!(end, Some(SegmentEnd::Torn { .. })),
            ));
        }
        // The power cut left each of: nothing, part of the first, all of
        // the first, and the second too; and torn tails.
        assert!(outcomes.iter().any(|o| o.0), "{outcomes:?}");
        assert!(outcomes.iter().any(|o| o.1 && !o.2), "{outcomes:?}");
        assert!(outcomes.iter().any(|o| o.2), "{outcomes:?}");
        assert!(outcomes.iter().any(|o| !o.1 && o.3), "{outcomes:?}");
    }

    #[test]
    fn aligned_bodies_are_written_in_place_and_replay_with_packed_frames_in_any_mix() {
        for engine in [crate::io::IoEngine::Uring, crate::io::IoEngine::Sync] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_owned();
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    std::fs::write(d.join("probe"), [1u8; 4096]).unwrap();
                    let fs: StorageRef = std::sync::Arc::new(crate::io::RealStorage::new(engine));
                    fs.open(&d.join("probe"), OpenMode::Read).await.unwrap().close().await.unwrap();
                    let metrics = EngineMetrics::default();
                    let (free, _) = FreeFiles::open(fs.clone(), &d, 4 * FILE_BYTES, 2).await.unwrap();
                    let mut wal = new_wal(&fs, &d, &metrics, free).await;
                    let schema = ipc::schema_message(&ids(0, 1).schema());
                    // Commits of small (packed) and large (aligned) bodies,
                    // with and without a producer, two datasets with names
                    // of lengths that do and do not pad, a drop between.
                    let mut expected: Vec<(String, i64, usize, Option<u64>)> = Vec::new();
                    let mut next = 0i64;
                    let mut seq = 0u64;
                    for commit in 0..12usize {
                        let mut batches = Vec::new();
                        for k in 0..=(commit % 4) {
                            let rows = if (commit + k) % 2 == 0 { 9_000 + commit * 37 } else { 3 + k };
                            let ds = if k % 2 == 0 { "d" } else { "dataset8" };
                            let producer = (commit + k) % 3 == 0;
                            let batch = ids(next, rows);
                            let m = IpcMessage::from_batch(&batch).unwrap();
                            let m =
                                if rows > 1000 { IpcMessage::with_aligned_body(m.header.clone(), &m.body) } else { m };
                            batches.push((
                                ds,
                                batch,
                                m,
                                producer.then(|| {
                                    seq += 1;
                                    seq
                                }),
                            ));
                            expected.push((ds.to_owned(), next, rows, producer.then_some(seq)));
                            next += rows as i64;
                        }
                        let ops: Vec<(&str, Op)> = batches
                            .into_iter()
                            .map(|(ds, batch, message, seq)| {
                                let producer = seq.map(|seq| ProducerSeq { id: "producer-7".into(), seq });
                                (ds, Op::Batch(crate::record::Batch { batch, message, producer }))
                            })
                            .collect();
                        let records: Vec<Record<'_>> =
                            ops.iter().map(|(ds, op)| Record::new(ds, &schema, op)).collect();
                        wal.append_synced(&records).await.unwrap();
                        if commit == 6 {
                            wal.append_synced(&[Record::new("dataset8", &[], &Op::Drop)]).await.unwrap();
                            expected.retain(|e| e.0 != "dataset8");
                        }
                    }
                    assert!(metrics.wal_bytes_written_in_place.get() > 0, "large bodies were written in place");
                    assert!(metrics.wal_bytes_written_in_place.get() < metrics.wal_bytes_written.get());
                    drop(wal);

                    let mut got: Vec<(String, i64, usize, Option<u64>)> = Vec::new();
                    let mut versions = std::collections::BTreeSet::new();
                    let mut known: std::collections::HashMap<String, arrow::datatypes::SchemaRef> = Default::default();
                    for s in list_segments(&*fs, &d).unwrap() {
                        replay_segment(&*fs, &s, None, true, CorruptionPolicy::Refuse, |f, _| {
                            let ds = String::from_utf8(f.dataset.to_vec()).unwrap();
                            if f.header.kind == format::FrameKind::Drop {
                                got.retain(|g| g.0 != ds);
                                known.remove(&ds);
                                return Ok(());
                            }
                            versions.insert(f.version);
                            let payload = arrow::buffer::Buffer::from_slice_ref(f.payload);
                            let mut producer = None;
                            let mut batch = None;
                            ipc::decode_payload(&payload, f.payload_layout(), known.get(&ds).cloned(), |m| match m {
                                ipc::Decoded::Schema(s) => {
                                    known.insert(ds.clone(), s);
                                }
                                ipc::Decoded::Batch(b) => batch = Some(b),
                                ipc::Decoded::Producer { id, seq } => {
                                    assert_eq!(id, "producer-7");
                                    producer = Some(seq);
                                }
                            })
                            .unwrap();
                            let b = batch.expect("a data frame holds a batch");
                            let col = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
                            let first = col.value(0);
                            assert!(col.values().iter().copied().eq(first..first + b.num_rows() as i64));
                            got.push((ds, first, b.num_rows(), producer));
                            Ok(())
                        })
                        .await
                        .unwrap();
                    }
                    assert_eq!(got, expected);
                    assert_eq!(
                        versions.into_iter().collect::<Vec<_>>(),
                        vec![format::FORMAT_VERSION, format::FORMAT_VERSION_PRODUCER, format::FORMAT_VERSION_ALIGNED]
                    );
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }

    #[test]
    fn commits_overwrite_preallocated_and_recycled_files_and_replay_skips_what_those_held() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                // glommio probes a device's iopoll support with a read at
                // offset 0 of the first file it opens there; on an empty
                // file that read succeeds, and every later read then fails
                // (EOPNOTSUPP) where the device has no poll queues. Recovery
                // reads existing segments first; here a non-empty file is.
                std::fs::write(d.join("probe"), [1u8; 4096]).unwrap();
                let fs: StorageRef = std::sync::Arc::new(crate::io::RealStorage::new(crate::io::IoEngine::Uring));
                fs.open(&d.join("probe"), OpenMode::Read).await.unwrap().close().await.unwrap();
                let metrics = EngineMetrics::default();
                let (free, _) = FreeFiles::open(fs.clone(), &d, FILE_BYTES, 2).await.unwrap();
                let mut wal = new_wal(&fs, &d, &metrics, free).await;
                let mut logged = Vec::new();
                for _ in 0..3 {
                    wait_for_a_free_file(&wal).await;
                    logged.extend(fill_segment(&mut wal).await);
                }
                for s in list_segments(&*fs, &d).unwrap() {
                    assert_eq!(std::fs::metadata(&s.path).unwrap().len(), FILE_BYTES, "{s:?} is preallocated");
                }
                assert!(metrics.wal_files_preallocated.get() >= 3);
                assert_eq!(metrics.wal_rotations_unprepared.get(), 0, "the next file was always ready");

                // Snapshots covered the sealed segments: keep what the
                // pool has room for, as the snapshot worker does.
                let covered: Vec<SealedSegment> = wal.sealed_segments().borrow_mut().drain(..).collect();
                let free = wal.free_files();
                let mut recycled = Vec::new();
                for s in &covered {
                    match free::recycle_name(&free, &s.path, recycled.len()).await.unwrap() {
                        Some(to) => {
                            std::fs::rename(&s.path, &to).unwrap();
                            recycled.push(to);
                        }
                        None => std::fs::remove_file(&s.path).unwrap(),
                    }
                }
                assert!(!recycled.is_empty());
                sync_dir(&*fs, &d).await.unwrap();
                recycled.into_iter().for_each(|f| free.borrow_mut().add(f));

                // Two more segments, made from those files, and a few small
                // commits into a third; then a crash (no seal).
                for _ in 0..2 {
                    logged.extend(fill_segment(&mut wal).await);
                }
                for _ in 0..3 {
                    let lsn = wal.append_synced(&drops(1)).await.unwrap();
                    logged.push(lsn);
                }
                assert_eq!(metrics.wal_extending_writes.get(), 0, "no write extended a file");
                let newest = wal.active.as_ref().unwrap();
                let (newest_id, newest_path, end) = (newest.id, newest.path.clone(), newest.pos);
                drop(wal);
                assert!(
                    old_frame_after(&newest_path, newest_id, end),
                    "the newest segment is a recycled file with older frames beyond its last commit"
                );

                // Replay: exactly what was logged into the remaining
                // segments, in order; the newest ends cleanly.
                let segments = list_segments(&*fs, &d).unwrap();
                assert_eq!(segments.last().unwrap().id, newest_id);
                let mut seen = Vec::new();
                let mut expected = None;
                for (i, s) in segments.iter().enumerate() {
                    let newest = i + 1 == segments.len();
                    let r = replay_segment(&*fs, s, expected, newest, CorruptionPolicy::Refuse, |f, _| {
                        seen.push(f.header.lsn);
                        Ok(())
                    })
                    .await
                    .unwrap();
                    assert_eq!(r.end, if newest { SegmentEnd::Clean } else { SegmentEnd::Sealed }, "{s:?}");
                    expected = r.last_lsn.map(|l| l + 1);
                }
                let from = seen[0];
                assert_eq!(seen, logged.into_iter().filter(|l| *l >= from).collect::<Vec<_>>());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
