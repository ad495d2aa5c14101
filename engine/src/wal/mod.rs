//! The write-ahead log of one shard: numbered segment files written with
//! O_DIRECT through glommio, one group commit per write, one `fdatasync` per
//! commit.
//!
//! Invariants the recovery code relies on:
//! - one commit is in flight at a time, so only the last commit can be torn;
//! - every segment but the newest ends with a seal frame, written and synced
//!   before the next segment is created, and nothing is written after a seal;
//! - a commit whose write failed is sealed over at once (its bytes may be
//!   partly on disk), so no later commit or replay can pick up its frames;
//! - LSNs are contiguous within a shard, and every frame records the offset
//!   of the commit that holds it.

pub mod format;
pub mod ipc;
pub mod replay;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Error, Result};
use crate::faults::Fault;
use crate::limits::INLINE_COMMIT_BYTES_MAX;
use crate::metrics::{EngineMetrics, Stage};
use format::{FrameHeader, FrameKind, SegmentHeader, FRAME_HEADER_BYTES};
pub use ipc::IpcMessage;

/// Log sequence number: per shard, contiguous, starting at 1.
pub type Lsn = u64;

/// One record to log.
pub struct Record<'a> {
    pub dataset: &'a str,
    /// The dataset's encapsulated schema message, written before its first
    /// record in each segment.
    pub schema_message: &'a [u8],
    /// `None` logs only the schema (a dataset created with no rows yet).
    pub message: Option<&'a IpcMessage>,
    /// A tombstone: the dataset was dropped (no schema, no message).
    pub drop: bool,
    /// The idempotent producer and sequence number of `message`, logged in
    /// the same frame (version 2) so both are durable together.
    pub producer: Option<(&'a str, u64)>,
    /// The dataset's producers' state as JSON, alone in a `Producers`
    /// frame (no schema, no message).
    pub producers_state: Option<&'a [u8]>,
}

impl<'a> Record<'a> {
    /// A data record: the schema if this segment lacks it, and `message`.
    pub fn data(dataset: &'a str, schema_message: &'a [u8], message: Option<&'a IpcMessage>) -> Self {
        Self { dataset, schema_message, message, drop: false, producer: None, producers_state: None }
    }

    fn payload_extra(&self) -> usize {
        self.producer.map_or(0, |(id, _)| ipc::producer_trailer_len(id.len()))
            + self.producers_state.map_or(0, |s| s.len())
    }

    /// Whether this record's frame carries no schema message.
    fn is_bare(&self) -> bool {
        self.drop || self.producers_state.is_some()
    }
}

/// A finished segment: every record in it has an LSN up to `last_lsn`.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub id: u64,
    pub path: PathBuf,
    pub last_lsn: Lsn,
}

pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
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
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let d = glommio::io::Directory::open(dir).await.map_err(Error::glommio("opening directory", dir, 0))?;
    // IMPORTANT: without this, a new segment's directory entry can vanish on power loss.
    d.sync().await.map_err(Error::glommio("fsyncing directory", dir, 0))?;
    d.close().await.map_err(Error::glommio("closing directory", dir, 0))?;
    Ok(())
}

struct ActiveSegment {
    file: Rc<DmaFile>,
    path: PathBuf,
    id: u64,
    /// Next write offset; always a multiple of `block`.
    pos: u64,
    block: u64,
    /// Datasets whose schema message is already in this segment.
    schemas_written: HashSet<String>,
    /// A seal frame ends this segment: the next commit needs a new one.
    sealed: bool,
    /// A failed write may have left frames from `pos` on: the segment must
    /// be sealed there before anything else is written.
    tail_suspect: bool,
}

pub struct Wal {
    dir: PathBuf,
    shard: u32,
    generation: u64,
    segment_bytes_max: u64,
    next_lsn: Lsn,
    /// `None` until a segment could be created (the volume was full at
    /// start): the next commit creates segment `next_segment_id`.
    active: Option<ActiveSegment>,
    next_segment_id: u64,
    metrics: EngineMetrics,
    /// Set when an fdatasync failed: the kernel may have dropped the dirty
    /// pages, so retrying could report success for lost data.
    poisoned: bool,
    /// Finished segments, oldest first; shared with the snapshot task, which
    /// deletes those wholly covered by snapshots.
    sealed: Rc<RefCell<Vec<SealedSegment>>>,
}

/// The newest segment as a crash left it, to go on from: cut at
/// `valid_end` (a torn commit dropped), not sealed.
#[derive(Debug, Clone)]
pub struct Resume {
    pub id: u64,
    pub path: PathBuf,
    pub valid_end: u64,
    pub block: u64,
    /// The LSN the segment's next frame (its seal, first) must carry.
    pub next_lsn: Lsn,
}

impl Wal {
    /// Opens the log of a shard that logs from `next_lsn`: in the crashed
    /// segment `resume`, or else in a new segment `segment_id`. Neither
    /// needs free space: the crashed segment is only cut (its seal comes
    /// with the next commit or shutdown), and if the new segment cannot be
    /// created because the volume is full, the shard starts without one,
    /// serves reads, and each commit tries again.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        dir: &Path,
        shard: u32,
        generation: u64,
        segment_id: u64,
        next_lsn: Lsn,
        segment_bytes_max: u64,
        metrics: EngineMetrics,
        sealed: Vec<SealedSegment>,
        resume: Option<Resume>,
    ) -> Result<Self> {
        let active = match resume {
            Some(r) => {
                assert_eq!(r.next_lsn, next_lsn, "a resumed segment goes on from its own last LSN");
                Some(reopen_after_crash(&r).await?)
            }
            None => match create_segment(dir, shard, generation, segment_id, next_lsn).await {
                Ok(a) => Some(a),
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(shard, error = %e, "the WAL volume is full: starting without a segment; writes are refused until there is room");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Self {
            dir: dir.to_owned(),
            shard,
            generation,
            segment_bytes_max,
            next_lsn,
            active,
            next_segment_id: segment_id,
            metrics,
            poisoned: false,
            sealed: Rc::new(RefCell::new(sealed)),
        })
    }

    /// The finished segments, oldest first.
    pub fn sealed_segments(&self) -> Rc<RefCell<Vec<SealedSegment>>> {
        self.sealed.clone()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Bytes a commit of these records takes in `seg`.
    fn commit_len(seg: &ActiveSegment, records: &[Record<'_>]) -> u64 {
        let mut seen = HashSet::new();
        let body: usize = records
            .iter()
            .map(|r| {
                if r.drop {
                    seen.remove(r.dataset);
                    return format::frame_len(r.dataset.len(), 0);
                }
                if r.is_bare() {
                    return format::frame_len(r.dataset.len(), r.payload_extra());
                }
                let schema = if seg.schemas_written.contains(r.dataset) || !seen.insert(r.dataset) {
                    0
                } else {
                    r.schema_message.len()
                };
                format::frame_len(
                    r.dataset.len(),
                    schema + r.message.map_or(0, |m| m.encoded_len()) + r.payload_extra(),
                )
            })
            .sum();
        (body as u64).next_multiple_of(seg.block)
    }

    /// Writes `records` as one commit and makes it durable
    /// (`Durability::Synced`: write, then `fdatasync`). Returns the LSN of
    /// the first record; the rest follow contiguously.
    pub async fn append_synced(&mut self, records: &[Record<'_>]) -> Result<Lsn> {
        assert!(!records.is_empty());
        assert!(!self.poisoned, "no WAL write after a failed fsync");
        // Nothing goes after a seal (one may precede a failed rotation),
        // after a failed write or into a crashed segment (both sealed
        // first): a new segment.
        let rotate = match &self.active {
            None => true,
            Some(a) => {
                a.sealed
                    || a.tail_suspect
                    || (a.pos + Self::commit_len(a, records) > self.segment_bytes_max && a.pos > a.block)
            }
        };
        if rotate {
            self.rotate().await?;
        }
        let seg = self.active.as_mut().expect("a rotation leaves an active segment");
        let len = Self::commit_len(seg, records);
        let commit_start = seg.pos;
        let first_lsn = self.next_lsn;
        let mut buf = seg.file.alloc_dma_buffer(len as usize);
        let out = buf.as_bytes_mut();
        let mut at = 0usize;
        for (i, r) in records.iter().enumerate() {
            let payload_at = at + FRAME_HEADER_BYTES + r.dataset.len();
            let mut payload_len = 0;
            if r.drop {
                // A dataset created again after this must log its schema again.
                seg.schemas_written.remove(r.dataset);
            } else if !r.is_bare() && !seg.schemas_written.contains(r.dataset) {
                out[payload_at..payload_at + r.schema_message.len()].copy_from_slice(r.schema_message);
                payload_len += r.schema_message.len();
                seg.schemas_written.insert(r.dataset.to_owned());
            }
            if let Some(m) = r.message {
                payload_len += m.write_to(&mut out[payload_at + payload_len..]);
            }
            if let Some(state) = r.producers_state {
                out[payload_at..payload_at + state.len()].copy_from_slice(state);
                payload_len += state.len();
            }
            let mut version = format::FORMAT_VERSION;
            if let Some((id, seq)) = r.producer {
                payload_len += ipc::write_producer_trailer(&mut out[payload_at + payload_len..], id, seq);
                version = format::FORMAT_VERSION_PRODUCER;
            }
            let kind = match () {
                _ if r.drop => FrameKind::Drop,
                _ if r.producers_state.is_some() => FrameKind::Producers,
                _ => FrameKind::Data,
            };
            let header = FrameHeader { kind, lsn: first_lsn + i as u64, segment_id: seg.id, commit_start };
            at +=
                format::seal_frame_in_place_version(&mut out[at..], header, r.dataset.as_bytes(), payload_len, version);
        }
        out[at..].fill(0);
        let result = write_and_sync(seg, buf, commit_start, &self.metrics).await;
        if result.is_err() {
            // The commit never became durable: its schemas may be missing
            // from the file, so write them again next time.
            seg.schemas_written.retain(|d| !records.iter().any(|r| r.dataset == d));
        }
        match result {
            Ok(()) => {
                seg.pos += len;
                self.next_lsn += records.len() as u64;
                Ok(first_lsn)
            }
            Err(SyncError::Fsync(e)) => {
                self.poisoned = true;
                Err(e)
            }
            Err(SyncError::Write(e)) => {
                seg.tail_suspect = true;
                // IMPORTANT: part of the failed commit may be on disk from
                // `commit_start` on, with valid checksums and the LSNs the
                // next commit will reuse. A seal frame written over its start
                // ends the segment there, so neither replay nor a shorter
                // next commit can take those frames for acknowledged ones.
                if let Err(seal) = self.seal().await {
                    tracing::warn!(shard = self.shard, error = %seal, "sealing over a failed WAL write failed too; retried before the next commit");
                }
                Err(e)
            }
        }
    }

    /// Seals the active segment (unless it is already) and starts the next
    /// one. If the new file cannot be created the active segment stays
    /// sealed and the next commit tries again.
    async fn rotate(&mut self) -> Result<()> {
        self.seal().await?;
        let id = self.active.as_ref().map_or(self.next_segment_id, |a| a.id + 1);
        let next = create_segment(&self.dir, self.shard, self.generation, id, self.next_lsn).await?;
        if let Some(old) = self.active.replace(next) {
            self.sealed.borrow_mut().push(SealedSegment {
                id: old.id,
                path: old.path.clone(),
                last_lsn: self.next_lsn - 1,
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

    /// Seals the active segment and closes it (clean shutdown).
    pub async fn close(mut self) -> Result<()> {
        self.seal().await?;
        if let Some(active) = self.active {
            close(active).await;
        }
        Ok(())
    }
}

async fn close(seg: ActiveSegment) {
    if let Ok(file) = Rc::try_unwrap(seg.file) {
        let _ = file.close().await;
    }
}

async fn write_seal(seg: &mut ActiveSegment, lsn: Lsn, metrics: &EngineMetrics) -> std::result::Result<(), SyncError> {
    let header = FrameHeader { kind: FrameKind::Seal, lsn, segment_id: seg.id, commit_start: seg.pos };
    let frame = format::encode_frame(header, b"", b"");
    let mut buf = seg.file.alloc_dma_buffer(seg.block as usize);
    buf.as_bytes_mut().fill(0);
    buf.as_bytes_mut()[..frame.len()].copy_from_slice(&frame);
    let at = seg.pos;
    write_and_sync(seg, buf, at, metrics).await?;
    seg.pos += seg.block;
    Ok(())
}

/// A failed write can be retried (nothing was acknowledged); a failed fsync
/// cannot.
enum SyncError {
    Write(Error),
    Fsync(Error),
}

impl SyncError {
    fn into_inner(self) -> Error {
        match self {
            SyncError::Write(e) | SyncError::Fsync(e) => e,
        }
    }
}

async fn write_and_sync(
    seg: &ActiveSegment,
    buf: glommio::io::DmaBuffer,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let len = buf.len();
    let started = std::time::Instant::now();
    let result = if crate::faults::fails(Fault::WalWrite) {
        Err(injected_write_failure(seg, &buf, at))
    } else if len as u64 <= INLINE_COMMIT_BYTES_MAX {
        write_and_sync_inline(seg, &buf, at, metrics)
    } else {
        write_and_sync_uring(seg, buf, at, metrics).await
    };
    match &result {
        Ok(()) => {
            metrics.wal_writes_ok.inc();
            metrics.wal_bytes_written.inc_by(len as u64);
            metrics.wal_commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        Err(_) => {
            metrics.wal_writes_error.inc();
        }
    }
    result
}

fn short_write(seg: &ActiveSegment, at: u64, written: usize) -> SyncError {
    SyncError::Write(Error::Io {
        op: "writing WAL segment (short write)",
        path: seg.path.clone(),
        offset: at + written as u64,
        source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
    })
}

/// A small commit as two plain syscalls on the shard thread. Through
/// io_uring the `fdatasync` is handed to a kernel worker thread and each
/// completion must wake the shard: two extra thread hops that cost more
/// than the disk on small commits (see `docs/benchmarks.md`). The shard has
/// nothing else to do meanwhile: new appends wait for the next commit anyway.
fn write_and_sync_inline(
    seg: &ActiveSegment,
    buf: &glommio::io::DmaBuffer,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let started = std::time::Instant::now();
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `seg.file`, which outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(seg.file.as_raw_fd()) };
    let mut written = 0usize;
    while written < buf.len() {
        let off = at as i64 + written as i64;
        match nix::sys::uio::pwrite(fd, &buf.as_bytes()[written..], off) {
            Ok(0) => return Err(short_write(seg, at, written)),
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SyncError::Write(Error::io("writing WAL segment", &seg.path, at)(e.into()))),
        }
    }
    let written_at = std::time::Instant::now();
    metrics.stage(Stage::CommitWrite).observe((written_at - started).as_secs_f64());
    if crate::faults::fails(Fault::WalFsync) {
        return Err(injected_fsync_failure(seg, at));
    }
    nix::unistd::fdatasync(fd)
        .map_err(|e| SyncError::Fsync(Error::io("fdatasync WAL segment", &seg.path, at)(e.into())))?;
    metrics.stage(Stage::Fdatasync).observe(written_at.elapsed().as_secs_f64());
    Ok(())
}

fn injected_fsync_failure(seg: &ActiveSegment, at: u64) -> SyncError {
    SyncError::Fsync(Error::Io {
        op: "fdatasync WAL segment (injected fault)",
        path: seg.path.clone(),
        offset: at,
        source: crate::faults::eio(),
    })
}

/// The worst kind of failed write: the first half of the commit reaches the
/// file (valid frames among it), then the write reports EIO.
fn injected_write_failure(seg: &ActiveSegment, buf: &glommio::io::DmaBuffer, at: u64) -> SyncError {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `seg.file`, which outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(seg.file.as_raw_fd()) };
    let half = (buf.len() / 2).next_multiple_of(seg.block as usize).min(buf.len());
    let _ = nix::sys::uio::pwrite(fd, &buf.as_bytes()[..half], at as i64);
    SyncError::Write(Error::Io {
        op: "writing WAL segment (injected fault)",
        path: seg.path.clone(),
        offset: at + half as u64,
        source: crate::faults::eio(),
    })
}

async fn write_and_sync_uring(
    seg: &ActiveSegment,
    buf: glommio::io::DmaBuffer,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let started = std::time::Instant::now();
    let len = buf.len();
    let written = seg
        .file
        .write_at(buf, at)
        .await
        .map_err(|e| SyncError::Write(Error::glommio("writing WAL segment", &seg.path, at)(e)))?;
    if written != len {
        return Err(short_write(seg, at, written));
    }
    let written_at = std::time::Instant::now();
    metrics.stage(Stage::CommitWrite).observe((written_at - started).as_secs_f64());
    if crate::faults::fails(Fault::WalFsync) {
        return Err(injected_fsync_failure(seg, at));
    }
    seg.file
        .fdatasync()
        .await
        .map_err(|e| SyncError::Fsync(Error::glommio("fdatasync WAL segment", &seg.path, at)(e)))?;
    metrics.stage(Stage::Fdatasync).observe(written_at.elapsed().as_secs_f64());
    Ok(())
}

/// The temporary name a segment has until its header is durable.
fn segment_tmp_name(id: u64) -> String {
    format!(".{}.tmp", segment_file_name(id))
}

/// Whether `name` is a segment's temporary name (see [`segment_tmp_name`]).
pub fn is_segment_tmp_name(name: &str) -> bool {
    name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).and_then(parse_segment_file_name).is_some()
}

/// Creates segment `id`: header written and synced under a temporary name,
/// then renamed (never over an existing segment) and the directory synced.
/// IMPORTANT: a `*.wal` file therefore always has a durable header, so a
/// segment with a missing or damaged one is damage, never a crash in the
/// middle of creating it (that leaves only a temporary file, deleted at
/// start).
async fn create_segment(dir: &Path, shard: u32, generation: u64, id: u64, first_lsn: Lsn) -> Result<ActiveSegment> {
    let path = dir.join(segment_file_name(id));
    let tmp = dir.join(segment_tmp_name(id));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(Error::glommio("creating WAL segment", &tmp, 0))?;
    let mut named = false;
    let created = async {
        let block = init_segment(&tmp, &file, shard, generation, id, first_lsn).await?;
        rename_no_replace(&tmp, &path)?;
        named = true;
        sync_dir(dir).await?;
        Ok(block)
    }
    .await;
    match created {
        Ok(block) => Ok(ActiveSegment {
            file: Rc::new(file),
            path,
            id,
            pos: block,
            block,
            schemas_written: HashSet::new(),
            sealed: false,
            tail_suspect: false,
        }),
        Err(e) => {
            // Nothing was logged in it yet: remove it, whatever its name,
            // so that the next try can create it again.
            let _ = file.close().await;
            let _ = std::fs::remove_file(if named { &path } else { &tmp });
            Err(e)
        }
    }
}

fn rename_no_replace(from: &Path, to: &Path) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
        .map_err(|e| Error::io("naming new WAL segment", to, 0)(e.into()))
}

/// Writes and syncs a new segment's header block. Returns the block size.
async fn init_segment(
    path: &Path,
    file: &DmaFile,
    shard: u32,
    generation: u64,
    id: u64,
    first_lsn: Lsn,
) -> Result<u64> {
    let block = file.alignment().max(512);
    let header = SegmentHeader { block_bytes: block as u32, shard, generation, segment_id: id, first_lsn };
    let mut buf = file.alloc_dma_buffer(block as usize);
    buf.as_bytes_mut().fill(0);
    buf.as_bytes_mut()[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    if crate::faults::fails(Fault::WalCreate) {
        return Err(Error::io("writing segment header (injected fault)", path, 0)(crate::faults::eio()));
    }
    let written = file.write_at(buf, 0).await.map_err(Error::glommio("writing segment header", path, 0))?;
    if written as u64 != block {
        return Err(Error::Io {
            op: "writing segment header (short write)",
            path: path.to_owned(),
            offset: written as u64,
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        });
    }
    file.fdatasync().await.map_err(Error::glommio("fdatasync segment header", path, 0))?;
    Ok(block)
}

/// Finishes a segment left unsealed by a crash: cuts it at `valid_end`
/// (dropping a torn tail) and writes a seal frame there.
pub async fn seal_after_crash(
    path: &Path,
    segment_id: u64,
    valid_end: u64,
    block: u64,
    lsn: Lsn,
    metrics: &EngineMetrics,
) -> Result<()> {
    let mut seg =
        reopen_after_crash(&Resume { id: segment_id, path: path.to_owned(), valid_end, block, next_lsn: lsn }).await?;
    write_seal(&mut seg, lsn, metrics).await.map_err(SyncError::into_inner)?;
    close(seg).await;
    Ok(())
}

/// Opens a segment a crash left unsealed for writing, cut at the block
/// after `valid_end` (a torn commit dropped, its padding zeroed). It takes
/// no commit before it is sealed (`tail_suspect`). Frees space, needs none.
async fn reopen_after_crash(r: &Resume) -> Result<ActiveSegment> {
    let (path, valid_end, block) = (&r.path, r.valid_end, r.block);
    let file = OpenOptions::new().read(true).write(true).dma_open(path).await.map_err(Error::glommio(
        "opening WAL segment",
        path,
        0,
    ))?;
    let pos = valid_end.next_multiple_of(block);
    if valid_end < pos {
        // IMPORTANT: replay checks that a commit's padding is zero; the
        // torn commit's bytes between the last good frame and the block
        // end would read as damage once this segment is not the newest.
        let start = pos - block;
        let kept = file.read_at(start, (valid_end - start) as usize).await.map_err(Error::glommio(
            "reading WAL segment",
            path,
            start,
        ))?;
        let mut buf = file.alloc_dma_buffer(block as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..kept.len()].copy_from_slice(&kept);
        file.write_at(buf, start).await.map_err(Error::glommio("zeroing a torn commit's padding", path, start))?;
    }
    file.truncate(pos).await.map_err(Error::glommio("truncating WAL segment", path, pos))?;
    Ok(ActiveSegment {
        file: Rc::new(file),
        path: path.to_owned(),
        id: r.id,
        pos,
        block,
        schemas_written: HashSet::new(),
        sealed: false,
        tail_suspect: true,
    })
}
