//! One group commit: the records of a commit laid out as frames in one
//! aligned buffer, written and synced (inline or queued), and the seal
//! frame that ends a segment.

use std::collections::HashSet;

use super::format::{self, FrameHeader, FrameKind, FRAME_HEADER_BYTES};
use super::segment::ActiveSegment;
use super::{ipc, IpcMessage, Lsn};
use crate::error::Error;
use crate::io::{IoBuf, Submit};
use crate::limits::INLINE_COMMIT_BYTES_MAX;
use crate::metrics::{EngineMetrics, Stage};

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

    pub(super) fn payload_extra(&self) -> usize {
        self.producer.map_or(0, |(id, _)| ipc::producer_trailer_len(id.len()))
            + self.producers_state.map_or(0, |s| s.len())
    }

    /// Whether this record's frame carries no schema message.
    pub(super) fn is_bare(&self) -> bool {
        self.drop || self.producers_state.is_some()
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
    write_and_sync(seg, buf, at, metrics).await?;
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
    buf: IoBuf,
    at: u64,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let len = buf.len();
    let started = std::time::Instant::now();
    let result = {
        // Small commits are two plain syscalls on the shard thread. Through
        // io_uring the `fdatasync` is handed to a kernel worker thread and
        // each completion must wake the shard: two extra thread hops that
        // cost more than the disk on small commits (see
        // `docs/benchmarks.md`). The shard has nothing else to do
        // meanwhile: new appends wait for the next commit anyway. Large
        // ones are queued, so the shard keeps serving reads.
        let how = if len as u64 <= INLINE_COMMIT_BYTES_MAX { Submit::Inline } else { Submit::Queued };
        write_then_sync(seg, buf, at, how, metrics).await
    };
    match &result {
        Ok(()) => {
            metrics.wal_writes_ok.inc();
            metrics.wal_bytes_written.inc_by(len as u64);
            metrics.wal_commit_seconds.observe(started.elapsed().as_secs_f64());
            let end = at + len as u64;
            if end > seg.file_len.get() {
                metrics.wal_extending_writes.inc();
                seg.file_len.set(end);
            }
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

async fn write_then_sync(
    seg: &ActiveSegment,
    buf: IoBuf,
    at: u64,
    how: Submit,
    metrics: &EngineMetrics,
) -> std::result::Result<(), SyncError> {
    let started = std::time::Instant::now();
    let len = buf.len();
    let written = seg
        .file
        .write_at(buf, at, how)
        .await
        .map_err(|e| SyncError::Write(Error::io("writing WAL segment", &seg.path, at)(e)))?;
    if written != len {
        return Err(short_write(seg, at, written));
    }
    let written_at = std::time::Instant::now();
    metrics.stage(Stage::CommitWrite).observe((written_at - started).as_secs_f64());
    seg.file
        .fdatasync(how)
        .await
        .map_err(|e| SyncError::Fsync(Error::io("fdatasync WAL segment", &seg.path, at)(e)))?;
    metrics.stage(Stage::Fdatasync).observe(written_at.elapsed().as_secs_f64());
    Ok(())
}

/// Bytes a commit of these records takes in `seg`.
pub(super) fn commit_len(seg: &ActiveSegment, records: &[Record<'_>]) -> u64 {
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
            format::frame_len(r.dataset.len(), schema + r.message.map_or(0, |m| m.encoded_len()) + r.payload_extra())
        })
        .sum();
    (body as u64).next_multiple_of(seg.block)
}

/// The commit of `records` as it goes to disk at `commit_start` in `seg`:
/// their frames, LSNs from `first_lsn`, each dataset's schema before its
/// first record in the segment, zero-padded to `len` (see [`commit_len`]).
pub(super) fn encode(
    seg: &mut ActiveSegment,
    records: &[Record<'_>],
    first_lsn: Lsn,
    commit_start: u64,
    len: u64,
) -> IoBuf {
    let mut buf = seg.file.alloc(len as usize);
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
        at += format::seal_frame_in_place_version(&mut out[at..], header, r.dataset.as_bytes(), payload_len, version);
    }
    out[at..].fill(0);
    buf
}
