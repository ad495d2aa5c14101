//! One group commit: the records of a commit laid out as frames in one
//! aligned buffer, written and synced (inline or queued), and the seal
//! frame that ends a segment.

use std::collections::HashSet;

use super::format::{self, FrameHeader, FrameKind, FRAME_HEADER_BYTES};
use super::segment::ActiveSegment;
use super::{ipc, IpcMessage, Lsn};
use crate::error::Error;
use crate::io::{IoChunk, Submit};
use crate::limits::{BODY_BLOCK_BYTES, INLINE_COMMIT_BYTES_MAX};
use crate::metrics::{EngineMetrics, Stage};
use crate::record::Op;

/// One record to log: a write's [`Op`] and its dataset.
pub struct Record<'a> {
    pub dataset: &'a str,
    /// The dataset's encapsulated schema message, written before its first
    /// record in each segment.
    pub schema_message: &'a [u8],
    pub op: &'a Op,
}

impl<'a> Record<'a> {
    pub fn new(dataset: &'a str, schema_message: &'a [u8], op: &'a Op) -> Self {
        Self { dataset, schema_message, op }
    }

    pub(super) fn message(&self) -> Option<&'a IpcMessage> {
        self.op.message()
    }

    pub(super) fn producer(&self) -> Option<(&'a str, u64)> {
        self.op.producer()
    }

    fn producers_state(&self) -> Option<&'a [u8]> {
        match self.op {
            Op::Producers(state) => Some(state),
            _ => None,
        }
    }

    /// A drop or a forget: replay voids the dataset's earlier records.
    fn ends_dataset(&self) -> bool {
        matches!(self.op, Op::Drop | Op::Forget)
    }

    pub(super) fn payload_extra(&self) -> usize {
        self.producer().map_or(0, |(id, _)| ipc::producer_trailer_len(id.len()))
            + self.producers_state().map_or(0, |s| s.len())
    }

    /// Whether this record's frame carries no schema message.
    pub(super) fn is_bare(&self) -> bool {
        matches!(self.op, Op::Drop | Op::Forget | Op::Producers(_))
    }

    fn kind(&self) -> FrameKind {
        match self.op {
            Op::Drop => FrameKind::Drop,
            Op::Forget => FrameKind::Forget,
            Op::Producers(_) => FrameKind::Producers,
            Op::Schema(_) | Op::Batch(_) => FrameKind::Data,
        }
    }
}

pub(super) async fn write_seal(
    seg: &mut ActiveSegment,
    lsn: Lsn,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let header = FrameHeader { kind: FrameKind::Seal, lsn, segment_id: seg.id, commit_start: seg.pos };
    let frame = format::encode_frame(header, b"", b"");
    let mut buf = seg.file.alloc(seg.block as usize);
    buf.as_bytes_mut().fill(0);
    buf.as_bytes_mut()[..frame.len()].copy_from_slice(&frame);
    let at = seg.pos;
    write_and_sync(seg, vec![IoChunk::Buf(buf)], at, metrics).await?;
    seg.pos += seg.block;
    Ok(())
}

/// A failed write can be retried (nothing was acknowledged); a failed fsync
/// cannot.
pub(super) enum SyncError {
    Write(Error),
    Fsync(Error),
}

impl SyncError {
    pub(super) fn into_inner(self) -> Error {
        match self {
            SyncError::Write(e) | SyncError::Fsync(e) => e,
        }
    }
}

pub(super) async fn write_and_sync(
    seg: &ActiveSegment,
    chunks: Vec<IoChunk>,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    write_commit(seg, chunks, at, metrics).await?.sync().await
}

/// A commit written and not yet synced: [`Unsynced::sync`] makes it
/// durable. It holds its own handle on the file, so the shard can write the
/// next commit while this one syncs.
pub(super) struct Unsynced {
    file: std::rc::Rc<dyn crate::io::File>,
    path: std::path::PathBuf,
    at: u64,
    len: usize,
    in_place: usize,
    how: Submit,
    started: std::time::Instant,
    written_at: std::time::Instant,
    metrics: EngineMetrics,
}

impl Unsynced {
    pub(super) fn syncs_inline(&self) -> bool {
        self.file.sync_blocks(self.how)
    }

    /// `fdatasync`: the commit, and every write that completed before this
    /// call, are durable once it returns Ok.
    pub(super) async fn sync(self) -> std::result::Result<(), SyncError> {
        let synced = self.file.fdatasync(self.how).await;
        let m = &self.metrics;
        match synced {
            Ok(()) => {
                m.stage(Stage::Fdatasync).observe(self.written_at.elapsed().as_secs_f64());
                m.wal_writes_ok.inc();
                m.wal_bytes_written.inc_by(self.len as u64);
                m.wal_bytes_written_in_place.inc_by(self.in_place as u64);
                m.wal_commit_seconds.observe(self.started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                m.wal_writes_error.inc();
                Err(SyncError::Fsync(Error::io("fdatasync WAL segment", &self.path, self.at)(e)))
            }
        }
    }
}

/// Writes a commit's `chunks` at `at`, without syncing.
pub(super) async fn write_commit(
    seg: &ActiveSegment,
    mut chunks: Vec<IoChunk>,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<Unsynced, SyncError> {
    let len: usize = chunks.iter().map(IoChunk::len).sum();
    let in_place: usize = chunks.iter().filter(|c| matches!(c, IoChunk::Shared(_))).map(IoChunk::len).sum();
    let started = std::time::Instant::now();
    // Small commits are two plain syscalls on the shard thread. Through
    // io_uring the `fdatasync` is handed to a kernel worker thread and each
    // completion must wake the shard: two extra thread hops that cost more
    // than the disk on small commits (see `docs/benchmarks.md`). Large ones
    // are queued, so the shard keeps serving reads and writes the next
    // commit while this one syncs.
    let how = if len as u64 <= INLINE_COMMIT_BYTES_MAX { Submit::Inline } else { Submit::Queued };
    let write = match (chunks.len(), chunks.pop()) {
        (1, Some(IoChunk::Buf(buf))) => seg.file.write_at(buf, at, how),
        (_, last) => {
            chunks.extend(last);
            seg.file.write_vectored_at(chunks, at, how)
        }
    };
    let written = match write.await {
        Ok(n) if n == len => n,
        Ok(n) => {
            metrics.wal_writes_error.inc();
            return Err(short_write(seg, at, n));
        }
        Err(e) => {
            metrics.wal_writes_error.inc();
            return Err(SyncError::Write(Error::io("writing WAL segment", &seg.path, at)(e)));
        }
    };
    let written_at = std::time::Instant::now();
    metrics.stage(Stage::CommitWrite).observe((written_at - started).as_secs_f64());
    let end = at + written as u64;
    if end > seg.file_len.get() {
        metrics.wal_extending_writes.inc();
        seg.file_len.set(end);
    }
    Ok(Unsynced {
        file: seg.file.clone(),
        path: seg.path.clone(),
        at,
        len,
        in_place,
        how,
        started,
        written_at,
        metrics: metrics.clone(),
    })
}

fn short_write(seg: &ActiveSegment, at: u64, written: usize) -> SyncError {
    SyncError::Write(Error::Io {
        op: "writing WAL segment (short write)",
        path: seg.path.clone(),
        offset: at + written as u64,
        source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
    })
}

/// Where the records of one commit go: each frame's length and whether it
/// carries its dataset's schema, and the commit's length. The rotation check
/// and [`encode`] both use it, so the bytes planned are the bytes written.
pub(super) struct Plan {
    frames: Vec<FramePlan>,
    pub(super) len: u64,
    /// The durable mark that starts the commit, if it has one, and its
    /// length.
    mark: Option<(Lsn, usize)>,
}

impl Plan {
    /// LSNs the commit takes: one per record, one for its durable mark.
    pub(super) fn lsns(&self) -> u64 {
        self.frames.len() as u64 + u64::from(self.mark.is_some())
    }
}

struct FramePlan {
    schema: bool,
    len: usize,
    /// A version 3 frame: bytes from its start to its body, and the batch
    /// message's padded metadata length.
    split: Option<(usize, usize)>,
}

/// Plans a commit of `records` in `seg`. A record whose body came in
/// aligned, padded memory ([`IpcMessage::padded_body`]) gets a version 3
/// frame: its body starts on a block boundary and is written from that
/// memory, not copied. With `mark` (the commit is written while the one
/// before it is being synced) a durable mark frame comes first.
pub(super) fn plan(seg: &ActiveSegment, records: &[Record<'_>], mark: Option<Lsn>) -> Plan {
    let block = seg.block as usize;
    let splits = BODY_BLOCK_BYTES % block == 0;
    // Datasets whose schema this commit writes, and those it drops.
    let mut written = HashSet::new();
    let mut dropped = HashSet::new();
    let mark = mark.map(|m| (m, format::frame_len(0, format::DURABLE_MARK_PAYLOAD_BYTES)));
    let mut at = mark.map_or(0, |(_, len)| len);
    let mut frames = Vec::with_capacity(records.len());
    for r in records {
        let ds = r.dataset.len();
        let plan = if r.ends_dataset() {
            written.remove(r.dataset);
            dropped.insert(r.dataset);
            FramePlan { schema: false, len: format::frame_len(ds, 0), split: None }
        } else if r.is_bare() {
            FramePlan { schema: false, len: format::frame_len(ds, r.payload_extra()), split: None }
        } else {
            let has = (seg.schemas_written.contains(r.dataset) && !dropped.contains(r.dataset))
                || written.contains(r.dataset);
            let schema = !has;
            if schema {
                written.insert(r.dataset);
            }
            let schema_len = if schema { r.schema_message.len() } else { 0 };
            match r.message().and_then(|m| m.padded_body.as_ref().map(|b| (m, b))) {
                Some((m, body)) if splits => {
                    let fixed = format::payload_offset(format::FORMAT_VERSION_ALIGNED, ds)
                        + r.payload_extra()
                        + schema_len
                        + m.prefix_len();
                    let body_at = (at + fixed).next_multiple_of(block);
                    let meta_len = m.prefix_len() - 8 + (body_at - at - fixed);
                    let prefix = body_at - at;
                    FramePlan { schema, len: prefix + body.len(), split: Some((prefix, meta_len)) }
                }
                _ => {
                    let payload = schema_len + r.message().map_or(0, |m| m.encoded_len()) + r.payload_extra();
                    FramePlan { schema, len: format::frame_len(ds, payload), split: None }
                }
            }
        };
        at += plan.len;
        frames.push(plan);
    }
    Plan { frames, len: (at as u64).next_multiple_of(seg.block), mark }
}

/// The commit of `records` as it goes to disk at `commit_start` in `seg`,
/// as laid out by `plan`: their frames, LSNs from `first_lsn`, each
/// dataset's schema before its first record in the segment, zero-padded to
/// `plan.len`. One buffer, or, where version 3 frames are, the commit
/// buffer's pieces and the bodies between them, back to back. A durable
/// mark, if planned, takes `first_lsn` and the records the LSNs after it.
pub(super) fn encode(
    seg: &mut ActiveSegment,
    records: &[Record<'_>],
    first_lsn: Lsn,
    commit_start: u64,
    plan: &Plan,
) -> Vec<IoChunk> {
    // The commit buffer's pieces: each ends where a body starts.
    let mut pieces = Vec::new();
    let mark_len = plan.mark.map_or(0, |(_, len)| len);
    let mut piece = mark_len;
    for f in &plan.frames {
        match f.split {
            Some((prefix, _)) => {
                pieces.push(piece + prefix);
                piece = 0;
            }
            None => piece += f.len,
        }
    }
    let tail = plan.len as usize - mark_len - plan.frames.iter().map(|f| f.len).sum::<usize>();
    if piece + tail > 0 {
        pieces.push(piece + tail);
    }
    let mut pieces = pieces.into_iter();
    let mut chunks = Vec::with_capacity(pieces.len() * 2);
    let mut buf = pieces.next().map(|len| seg.file.alloc(len));
    let mut at = 0usize;
    let mut first_lsn = first_lsn;
    if let Some((durable, len)) = plan.mark {
        let header = FrameHeader { kind: FrameKind::DurableMark, lsn: first_lsn, segment_id: seg.id, commit_start };
        let frame = format::encode_frame(header, b"", &format::durable_mark_payload(durable));
        debug_assert_eq!(frame.len(), len);
        buf.as_mut().expect("the mark has a piece").as_bytes_mut()[..len].copy_from_slice(&frame);
        at = len;
        first_lsn += 1;
    }
    for (i, (r, f)) in records.iter().zip(&plan.frames).enumerate() {
        let out = &mut buf.as_mut().expect("a frame has a piece").as_bytes_mut()[at..];
        let header = FrameHeader { kind: r.kind(), lsn: first_lsn + i as u64, segment_id: seg.id, commit_start };
        if r.ends_dataset() {
            // A dataset created again after this must log its schema again.
            seg.schemas_written.remove(r.dataset);
        } else if f.schema {
            seg.schemas_written.insert(r.dataset.to_owned());
        }
        if let Some((prefix, meta_len)) = f.split {
            let m = r.message().expect("a split frame has a message");
            let body = m.padded_body.as_ref().expect("a split frame has a padded body");
            let mut q = format::payload_offset(format::FORMAT_VERSION_ALIGNED, r.dataset.len());
            if let Some((id, seq)) = r.producer() {
                q += ipc::write_producer_trailer(&mut out[q..], id, seq);
            }
            if f.schema {
                out[q..q + r.schema_message.len()].copy_from_slice(r.schema_message);
                q += r.schema_message.len();
            }
            q += m.write_prefix_to(&mut out[q..], meta_len);
            debug_assert_eq!(q, prefix);
            format::seal_split_frame(&mut out[..prefix], header, r.dataset.as_bytes(), body);
            chunks.push(IoChunk::Buf(buf.take().expect("the piece before a body")));
            chunks.push(IoChunk::Shared(body.clone()));
            buf = pieces.next().map(|len| seg.file.alloc(len));
            at = 0;
            continue;
        }
        let payload_at = FRAME_HEADER_BYTES + r.dataset.len();
        let mut payload_len = 0;
        if f.schema {
            out[payload_at..payload_at + r.schema_message.len()].copy_from_slice(r.schema_message);
            payload_len += r.schema_message.len();
        }
        if let Some(m) = r.message() {
            payload_len += m.write_to(&mut out[payload_at + payload_len..]);
        }
        if let Some(state) = r.producers_state() {
            out[payload_at..payload_at + state.len()].copy_from_slice(state);
            payload_len += state.len();
        }
        let mut version = format::FORMAT_VERSION;
        if let Some((id, seq)) = r.producer() {
            payload_len += ipc::write_producer_trailer(&mut out[payload_at + payload_len..], id, seq);
            version = format::FORMAT_VERSION_PRODUCER;
        }
        let len = format::seal_frame_in_place_version(out, header, r.dataset.as_bytes(), payload_len, version);
        debug_assert_eq!(len, f.len);
        at += len;
    }
    if let Some(mut last) = buf {
        last.as_bytes_mut()[at..].fill(0);
        chunks.push(IoChunk::Buf(last));
    }
    debug_assert_eq!(chunks.iter().map(|c| c.len() as u64).sum::<u64>(), plan.len);
    chunks
}
