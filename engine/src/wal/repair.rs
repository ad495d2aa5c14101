//! Crash repair: going on in (or sealing) the segment a crash left
//! unsealed, cut at its last good commit.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::commit::{write_seal, SyncError};
use super::segment::{close, ActiveSegment};
use super::Lsn;
use crate::error::{Error, Result};
use crate::ids::SegmentId;
use crate::io::{OpenMode, Storage, Submit};
use crate::metrics::EngineMetrics;

/// The newest segment as a crash left it, to go on from: its log ends at
/// `valid_end` (a torn commit dropped), not sealed yet.
#[derive(Debug, Clone)]
pub struct Resume {
    pub id: SegmentId,
    pub path: PathBuf,
    pub valid_end: u64,
    pub block: u64,
    /// The LSN the segment's next frame (its seal, first) must carry.
    pub next_lsn: Lsn,
}

/// Finishes a segment left unsealed by a crash: cuts it at `valid_end`
/// (dropping a torn tail) and writes a seal frame there.
pub async fn seal_after_crash(
    storage: &dyn Storage,
    path: &Path,
    segment_id: SegmentId,
    valid_end: u64,
    block: u64,
    lsn: Lsn,
    metrics: &EngineMetrics,
) -> Result<()> {
    let mut seg =
        reopen_after_crash(storage, &Resume { id: segment_id, path: path.to_owned(), valid_end, block, next_lsn: lsn })
            .await?;
    write_seal(&mut seg, lsn, metrics).await.map_err(SyncError::into_inner)?;
    close(seg).await;
    Ok(())
}

/// Opens a segment a crash left unsealed for writing at the block after
/// `valid_end` (a torn commit dropped, its padding zeroed). It takes no
/// commit before it is sealed (`tail_suspect`). Needs no space: the file
/// keeps its length if the seal's block lies within it (a preallocated
/// file: what follows is never read once the seal is there, and cutting
/// it would make the file's next use extend it), else it is cut there.
pub(super) async fn reopen_after_crash(storage: &dyn Storage, r: &Resume) -> Result<ActiveSegment> {
    let (path, valid_end, block) = (&r.path, r.valid_end, r.block);
    let file = storage.open(path, OpenMode::Write).await.map_err(Error::io("opening WAL segment", path, 0))?;
    let pos = valid_end.next_multiple_of(block);
    if valid_end < pos {
        // IMPORTANT: replay checks that a commit's padding is zero; the
        // torn commit's bytes between the last good frame and the block
        // end would read as damage once this segment is not the newest.
        let start = pos - block;
        let kept = file.read_at(start, (valid_end - start) as usize).await.map_err(Error::io(
            "reading WAL segment",
            path,
            start,
        ))?;
        let mut buf = file.alloc(block as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..kept.len()].copy_from_slice(&kept);
        file.write_at(buf, start, Submit::Queued).await.map_err(Error::io(
            "zeroing a torn commit's padding",
            path,
            start,
        ))?;
    }
    let mut len = file.size().await.map_err(Error::io("stat WAL segment", path, 0))?;
    if pos + block > len {
        file.truncate(pos).await.map_err(Error::io("truncating WAL segment", path, pos))?;
        len = pos;
    }
    Ok(ActiveSegment {
        file,
        path: path.to_owned(),
        id: r.id,
        pos,
        block,
        file_len: Cell::new(len),
        schemas_written: HashSet::new(),
        sealed: false,
        tail_suspect: true,
    })
}
