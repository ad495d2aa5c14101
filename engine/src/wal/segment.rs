//! A segment file: its name, its creation (from a free file or preallocated
//! here, under a temporary name until its header is durable) and the
//! open segment the log appends to.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::format::{self, SegmentHeader};
use super::{free, sync_dir, Lsn};
use crate::error::{Error, Result};
use crate::ids::{SegmentId, ShardId};
use crate::io::{File, OpenMode, Storage, Submit};

pub fn segment_file_name(id: SegmentId) -> String {
    format!("{id:020}.wal")
}

pub fn parse_segment_file_name(name: &str) -> Option<SegmentId> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok().map(SegmentId)
}

pub(super) struct ActiveSegment {
    pub(super) file: Rc<dyn File>,
    pub(super) path: PathBuf,
    pub(super) id: SegmentId,
    /// Next write offset; always a multiple of `block`.
    pub(super) pos: u64,
    pub(super) block: u64,
    /// The file's length as far as this process knows: a write past it
    /// extends the file (counted in `wal_extending_writes`).
    pub(super) file_len: Cell<u64>,
    /// Datasets whose schema message is already in this segment.
    pub(super) schemas_written: HashSet<String>,
    /// A seal frame ends this segment: the next commit needs a new one.
    pub(super) sealed: bool,
    /// A failed write may have left frames from `pos` on: the segment must
    /// be sealed there before anything else is written.
    pub(super) tail_suspect: bool,
}

pub(super) async fn close(seg: ActiveSegment) {
    let _ = seg.file.close().await;
}

/// The temporary name a segment has until its header is durable.
fn segment_tmp_name(id: SegmentId) -> String {
    format!(".{}.tmp", segment_file_name(id))
}

/// Whether `name` is a segment's temporary name (see [`segment_tmp_name`]).
pub fn is_segment_tmp_name(name: &str) -> bool {
    name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).and_then(parse_segment_file_name).is_some()
}

/// Creates segment `id` from the free file `reuse`, or else from a new
/// file preallocated here (zeros written up to `file_bytes`; as far as the
/// volume allows, since commits can still extend it): header written and
/// synced under a temporary name, then renamed (never over an existing
/// segment) and the directory synced.
/// IMPORTANT: a `*.wal` file therefore always has a durable header, so a
/// segment with a missing or damaged one is damage, never a crash in the
/// middle of creating it (that leaves only a temporary file, deleted at
/// start). A free file is renamed to the temporary name before its header
/// is rewritten, so a crash in between leaves a temporary or a free file,
/// never a named segment with another segment's header.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    shard: ShardId,
    generation: u64,
    id: SegmentId,
    first_lsn: Lsn,
    reuse: Option<PathBuf>,
    file_bytes: u64,
) -> Result<ActiveSegment> {
    let path = dir.join(segment_file_name(id));
    let tmp = dir.join(segment_tmp_name(id));
    if let Some(free) = &reuse {
        storage.rename(free, &tmp).map_err(Error::io("renaming free WAL file", free, 0))?;
    }
    let mode = if reuse.is_none() { OpenMode::Create } else { OpenMode::Write };
    let file = storage.open(&tmp, mode).await.map_err(Error::io("creating WAL segment", &tmp, 0))?;
    let mut named = false;
    let created = async {
        let block =
            init_segment(storage, &tmp, &*file, shard, generation, id, first_lsn, reuse.is_none(), file_bytes).await?;
        let len = file.size().await.map_err(Error::io("stat WAL segment", &tmp, 0))?;
        storage.rename_no_replace(&tmp, &path).map_err(Error::io("naming new WAL segment", &path, 0))?;
        named = true;
        sync_dir(storage, dir).await?;
        Ok((block, len))
    }
    .await;
    match created {
        Ok((block, len)) => Ok(ActiveSegment {
            file,
            path,
            id,
            pos: block,
            block,
            file_len: Cell::new(len),
            schemas_written: HashSet::new(),
            sealed: false,
            tail_suspect: false,
        }),
        Err(e) => {
            // Nothing was logged in it yet: remove it, whatever its name,
            // so that the next try can create it again.
            let _ = file.close().await;
            let _ = storage.remove_file(if named { &path } else { &tmp });
            Err(e)
        }
    }
}

/// Writes a new segment's header block, and zeros after it up to
/// `file_bytes` if `zero_fill`, then syncs. Returns the block size.
#[allow(clippy::too_many_arguments)]
async fn init_segment(
    storage: &dyn Storage,
    path: &Path,
    file: &dyn File,
    shard: ShardId,
    generation: u64,
    id: SegmentId,
    first_lsn: Lsn,
    zero_fill: bool,
    file_bytes: u64,
) -> Result<u64> {
    let block = file.alignment().max(512);
    let header = SegmentHeader { block_bytes: block as u32, shard, generation, segment_id: id, first_lsn };
    let mut buf = file.alloc(block as usize);
    buf.as_bytes_mut().fill(0);
    buf.as_bytes_mut()[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    let written = file.write_at(buf, 0, Submit::Queued).await.map_err(Error::io("writing segment header", path, 0))?;
    if written as u64 != block {
        return Err(Error::Io {
            op: "writing segment header (short write)",
            path: path.to_owned(),
            offset: written as u64,
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        });
    }
    if zero_fill {
        let end = free::zero_fill(storage, path, file, block, file_bytes).await?;
        if end < file_bytes {
            tracing::warn!(file = %path.display(), preallocated = end, file_bytes, "the WAL volume is nearly full: segment preallocated only in part; commits beyond that extend it");
        }
    }
    file.fdatasync(Submit::Queued).await.map_err(Error::io("fdatasync segment header", path, 0))?;
    Ok(block)
}
