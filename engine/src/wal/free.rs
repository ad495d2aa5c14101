//! Free segment files: what lets every commit overwrite blocks its segment
//! file already has, instead of extending it (an `fdatasync` after an
//! extending write must also commit the file's new size; see
//! `docs/benchmarks.md`, "WAL commits: extending vs preallocated files").
//!
//! A free file is either *preallocated*: a new file with zeros written over
//! its whole length and synced (fully written extents; `fallocate` would
//! leave unwritten ones, whose first write is a metadata change again), or
//! *recycled*: a sealed segment that snapshots covered, renamed instead of
//! deleted (PostgreSQL's WAL recycling, RocksDB's `recycle_log_file_num`).
//! Either holds no record. A segment made from one gets a new header; the
//! old frames behind it carry older segment ids, which is how replay tells
//! them from new ones (`docs/wal-format.md`, "Recycled files").
//!
//! ```text
//! .free-<n>.wal.tmp   being preallocated (deleted at start)
//! .free-<n>.wal       ready: `file_bytes` long, its name durable
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::ids::SegmentId;
use crate::io::{File, OpenMode, Storage, StorageRef, Submit};
use crate::limits::WAL_ZERO_FILL_BYTES;

/// Alignment of a segment file's length: a multiple of every device block
/// size O_DIRECT may ask for.
const FILE_ALIGN_BYTES: u64 = 4096;

/// The length of every segment file for a configured segment size.
pub fn segment_file_bytes(segment_bytes_max: u64) -> u64 {
    segment_bytes_max.next_multiple_of(FILE_ALIGN_BYTES)
}

pub fn free_file_name(n: u64) -> String {
    format!(".free-{n}.wal")
}

fn free_tmp_name(n: u64) -> String {
    format!("{}.tmp", free_file_name(n))
}

/// `n` of a free file's name `.free-<n>.wal`.
pub fn parse_free_file_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix(".free-")?.strip_suffix(".wal")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Whether `name` is a free file still being preallocated (`.free-<n>.wal.tmp`).
pub fn is_free_tmp_name(name: &str) -> bool {
    name.strip_suffix(".tmp").and_then(parse_free_file_name).is_some()
}

/// The free files of one WAL directory, oldest first. Shared (one thread)
/// by the WAL, which takes them for new segments and has new ones
/// preallocated, and the snapshot worker, which recycles covered segments.
#[derive(Debug)]
pub struct FreeFiles {
    storage: StorageRef,
    dir: PathBuf,
    files: VecDeque<PathBuf>,
    next_number: u64,
    /// Covered segments are kept as free files while fewer than this are.
    recycle_max: usize,
    file_bytes: u64,
}

impl FreeFiles {
    /// The free files a restart finds in `dir`. One shorter than
    /// `file_bytes` is deleted (commits would extend it: the segment size
    /// grew, or it is not Longbow's), a longer one is cut to it, and beyond
    /// `recycle_max` (at least one, the preallocated next segment) the rest
    /// go. Also returns the highest segment id a free file's header names
    /// (0 if none), so that new segments never take an id whose frames a
    /// free file may still hold.
    pub async fn open(
        storage: StorageRef,
        dir: &Path,
        file_bytes: u64,
        recycle_max: usize,
    ) -> Result<(Self, SegmentId)> {
        let mut found = Vec::new();
        for name in super::list_names(&*storage, dir, "listing WAL directory")? {
            if let Some(n) = parse_free_file_name(&name) {
                found.push((n, dir.join(name)));
            }
        }
        found.sort();
        let mut free = Self {
            storage: storage.clone(),
            dir: dir.to_owned(),
            files: VecDeque::new(),
            next_number: found.last().map_or(1, |(n, _)| n + 1),
            recycle_max,
            file_bytes,
        };
        let mut max_id = SegmentId(0);
        let mut deleted = false;
        for (_, path) in found {
            if let Some(h) =
                read_header(&*storage, &path).await.map_err(Error::io("reading free WAL file", &path, 0))?
            {
                max_id = max_id.max(h.segment_id);
            }
            let len = storage.file_len(&path).map_err(Error::io("stat free WAL file", &path, 0))?;
            if len < file_bytes || free.files.len() >= recycle_max.max(1) {
                tracing::info!(file = %path.display(), len, file_bytes, "deleting a free WAL file that is not needed or too short");
                storage.remove_file(&path).map_err(Error::io("deleting free WAL file", &path, 0))?;
                deleted = true;
                continue;
            }
            if len > file_bytes {
                cut(&*storage, &path, file_bytes).await?;
            }
            free.files.push_back(path);
        }
        if deleted {
            super::sync_dir(&*storage, dir).await?;
        }
        Ok((free, max_id))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The oldest free file, to become a segment.
    pub fn take(&mut self) -> Option<PathBuf> {
        self.files.pop_front()
    }

    /// Adds a free file whose name is durable.
    pub fn add(&mut self, path: PathBuf) {
        self.files.push_back(path);
    }

    /// Names for a new free file: where it is preallocated, and its final name.
    pub fn new_names(&mut self) -> (PathBuf, PathBuf) {
        let n = self.next_number;
        self.next_number += 1;
        (self.dir.join(free_tmp_name(n)), self.dir.join(free_file_name(n)))
    }

    /// The storage the files are on.
    pub fn storage(&self) -> &StorageRef {
        &self.storage
    }
}

/// What becomes of the covered, sealed segment `path`: `Some(name)` to
/// rename it to (kept as a free file), or `None` to delete it. Kept while
/// fewer than `recycle_max` are free, counting `pending` renamed in this
/// batch but not yet added, and only if it is at least `file_bytes` long; a
/// longer one (an oversize commit) is cut to it. Borrows `free` only
/// between its awaits: the WAL shares it.
pub async fn recycle_name(
    free: &std::cell::RefCell<FreeFiles>,
    path: &Path,
    pending: usize,
) -> Result<Option<PathBuf>> {
    let (storage, file_bytes) = {
        let f = free.borrow();
        if f.files.len() + pending >= f.recycle_max {
            return Ok(None);
        }
        (f.storage.clone(), f.file_bytes)
    };
    let len = storage.file_len(path).map_err(Error::io("stat covered WAL segment", path, 0))?;
    if len < file_bytes {
        return Ok(None);
    }
    if len > file_bytes {
        cut(&*storage, path, file_bytes).await?;
    }
    Ok(Some(free.borrow_mut().new_names().1))
}

/// Cuts a free file to `len`, durably: a crash must not leave it longer
/// than the size it is taken for.
async fn cut(storage: &dyn Storage, path: &Path, len: u64) -> Result<()> {
    let file = storage.open(path, OpenMode::Write).await.map_err(Error::io("opening free WAL file", path, 0))?;
    let cut = async {
        file.truncate(len).await?;
        file.fdatasync(Submit::Queued).await
    }
    .await;
    let _ = file.close().await;
    cut.map_err(Error::io("cutting free WAL file", path, len))
}

/// The segment header at the start of a file, if it holds one.
pub(crate) async fn read_header(storage: &dyn Storage, path: &Path) -> std::io::Result<Option<SegmentHeader>> {
    let file = storage.open(path, OpenMode::Read).await?;
    let buf = file.read_at(0, SEGMENT_HEADER_BYTES).await;
    let _ = file.close().await;
    Ok(SegmentHeader::decode(&buf?).ok())
}

/// Writes zeros over `from..to` of `file` with O_DIRECT, a
/// [`WAL_ZERO_FILL_BYTES`] buffer at a time (both ends aligned). Returns
/// where it stopped: `to`, or before it if the volume filled up.
pub(super) async fn zero_fill(storage: &dyn Storage, path: &Path, file: &dyn File, from: u64, to: u64) -> Result<u64> {
    if from >= to {
        return Ok(from);
    }
    if storage.sizing_allocates(path.parent().unwrap_or(path)) {
        // tmpfs has no block allocation or journal to pay for at commit
        // time: writing zeros first only doubles the copying (measured: a
        // fresh server with its WAL on tmpfs wrote 3.8 GB of zeros for 3.7
        // GB of data in 8 s). Setting the length is enough for commits not
        // to change the file's size.
        file.truncate(to).await.map_err(Error::io("sizing WAL file", path, to))?;
        return Ok(to);
    }
    let chunk = (to - from).min(WAL_ZERO_FILL_BYTES);
    let mut at = from;
    while at < to {
        let n = (to - at).min(chunk);
        let mut zeros = file.alloc(n as usize);
        zeros.as_bytes_mut().fill(0);
        let written = file.write_at(zeros, at, Submit::Queued).await;
        match written.map_err(Error::io("preallocating WAL file", path, at)) {
            Ok(w) if w as u64 == n => at += n,
            // A short write: the volume is full.
            Ok(_) => return Ok(at),
            Err(e) if e.is_disk_full() => return Ok(at),
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Creates the free file `path`: zeros written over `bytes` and synced
/// under the temporary name `tmp`, then renamed and the directory synced.
/// On failure (a full volume included) nothing is left behind.
pub(super) async fn preallocate(storage: &dyn Storage, dir: &Path, tmp: &Path, path: &Path, bytes: u64) -> Result<()> {
    let file = storage.open(tmp, OpenMode::Create).await.map_err(Error::io("creating free WAL file", tmp, 0))?;
    let filled = async {
        let end = zero_fill(storage, tmp, &*file, 0, bytes).await?;
        if end < bytes {
            return Err(Error::Io {
                op: "preallocating WAL file (volume full)",
                path: tmp.to_owned(),
                offset: end,
                source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
            });
        }
        file.fdatasync(Submit::Queued).await.map_err(Error::io("fdatasync free WAL file", tmp, 0))
    }
    .await;
    let _ = file.close().await;
    if let Err(e) = filled {
        let _ = storage.remove_file(tmp);
        return Err(e);
    }
    storage.rename(tmp, path).map_err(Error::io("naming free WAL file", path, 0))?;
    // IMPORTANT: the name is durable before a segment is made from it; a
    // crash before that leaves `.tmp`, which the next start deletes.
    super::sync_dir(storage, dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_not_segments() {
        assert_eq!(parse_free_file_name(&free_file_name(7)), Some(7));
        assert!(is_free_tmp_name(&free_tmp_name(7)));
        assert!(!is_free_tmp_name(&free_file_name(7)));
        for not in [".free-.wal", ".free-+1.wal", ".free-1.wal.tmp", "free-1.wal", ".free-1x.wal"] {
            assert_eq!(parse_free_file_name(not), None, "{not}");
        }
        assert_eq!(super::super::parse_segment_file_name(&free_file_name(12345678901234567890)), None);
        assert!(!super::super::is_segment_tmp_name(&free_tmp_name(1)));
        assert_eq!(segment_file_bytes(1 << 20), 1 << 20);
        assert_eq!(segment_file_bytes((1 << 20) + 1), (1 << 20) + 4096);
    }

    #[test]
    fn a_restart_keeps_what_is_needed_and_learns_the_ids_free_files_held() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let header = SegmentHeader {
            block_bytes: 512,
            shard: crate::ShardId(0),
            generation: 0,
            segment_id: SegmentId(41),
            first_lsn: crate::Lsn(9),
        };
        let mut long = header.encode().to_vec();
        long.resize(8192 + 512, 0);
        std::fs::write(d.join(free_file_name(3)), &long).unwrap();
        std::fs::write(d.join(free_file_name(5)), vec![0u8; 100]).unwrap(); // too short
        std::fs::write(d.join(free_file_name(6)), vec![0u8; 8192]).unwrap();
        std::fs::write(d.join(free_file_name(9)), vec![0u8; 8192]).unwrap(); // beyond recycle_max
        let fs: StorageRef = std::sync::Arc::new(crate::io::RealStorage::SYNC);
        let (free, max_id) = futures::executor::block_on(FreeFiles::open(fs, d, 8192, 2)).unwrap();
        assert_eq!(max_id, SegmentId(41));
        assert_eq!(free.len(), 2);
        assert_eq!(std::fs::metadata(d.join(free_file_name(3))).unwrap().len(), 8192, "cut to the file length");
        assert!(!d.join(free_file_name(5)).exists() && !d.join(free_file_name(9)).exists());
        let free = std::cell::RefCell::new(free);
        assert_eq!(free.borrow_mut().take(), Some(d.join(free_file_name(3))));
        assert_eq!(free.borrow_mut().new_names().1, d.join(free_file_name(10)));
        let recycle = |p: &str, pending| futures::executor::block_on(recycle_name(&free, &d.join(p), pending)).unwrap();
        // One free now, room for one more: a full-length segment is kept,
        // a short one is not.
        std::fs::write(d.join("00000000000000000001.wal"), vec![1u8; 8192]).unwrap();
        std::fs::write(d.join("00000000000000000002.wal"), vec![1u8; 4096]).unwrap();
        assert_eq!(recycle("00000000000000000002.wal", 0), None);
        assert_eq!(recycle("00000000000000000001.wal", 0), Some(d.join(free_file_name(11))));
        assert_eq!(recycle("00000000000000000001.wal", 1), None, "two are enough");
    }
}
