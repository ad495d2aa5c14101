//! The data directory: which shard count and WAL generation are current, a
//! lock so that two servers never share it, and the clean-up that finishes
//! (or undoes) a shard-count change interrupted by a crash.
//!
//! ```text
//! $DATA/LOCK              flock(2)-held while a server runs
//! $DATA/LAYOUT            {"shards": N, "generation": G}, replaced atomically
//! $DATA/shard-<k>/<id>.wal WAL segments; each header names its generation
//! $DATA/shard-<k>/.free-<n>.wal free files for new segments (no records, no generation)
//! ```
//!
//! Free files (`wal/free.rs`) are never segments: a shard-count change
//! neither replays nor deletes them, and the new generation's segments in
//! that directory reuse them.
//!
//! A change of shard count from M to N runs in three steps:
//! 1. every new shard replays all M old directories (segment lists taken
//!    here, before any shard starts) and logs the datasets it now owns into
//!    new segments of generation G+1 in its own directory;
//! 2. once all N shards have done so, `LAYOUT` is replaced with (N, G+1);
//! 3. segments of generation G are deleted, and old directories emptied.
//!
//! A crash before step 2 leaves `LAYOUT` at (M, G): the next start deletes
//! the partial G+1 segments and starts over. A crash after it leaves stale
//! generation-G segments, which the next start deletes. Either way nothing
//! is lost and nothing is replayed twice.

use std::any::Any;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{RealStorage, Storage};
use crate::wal::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::wal::replay::{list_segments, SegmentFile};

const LAYOUT_FILE: &str = "LAYOUT";
const LOCK_FILE: &str = "LOCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub shards: usize,
    pub generation: u64,
}

/// Holds the data directory's lock for as long as it lives.
pub struct DirLock {
    _lock: Box<dyn Any + Send + Sync>,
}

pub fn shard_dir(data: &Path, shard: usize) -> PathBuf {
    data.join(format!("shard-{shard}"))
}

/// Takes the exclusive lock on `data`, creating the directory if needed.
pub fn lock(storage: &dyn Storage, data: &Path) -> Result<DirLock> {
    crate::io::create_dir_durably(storage, data).map_err(Error::io("creating data directory", data, 0))?;
    lock_on(storage, &data.join(LOCK_FILE), "data directory", data)
}

/// Takes an exclusive flock(2) on `path` (created if needed), which guards
/// the directory `dir`; a second holder gets an error naming `what`.
pub(crate) fn lock_file(path: &Path, what: &str, dir: &Path) -> Result<DirLock> {
    lock_on(&RealStorage::new(crate::io::IoEngine::Sync), path, what, dir)
}

fn lock_on(storage: &dyn Storage, path: &Path, what: &str, dir: &Path) -> Result<DirLock> {
    match storage.lock(path) {
        Ok(lock) => Ok(DirLock { _lock: lock }),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Error::Startup(format!(
            "{what} {} is in use by another longbow process ({}: {e})",
            dir.display(),
            path.display()
        ))),
        Err(e) => Err(Error::io("opening lock file", path, 0)(e)),
    }
}

/// Reads `LAYOUT`. A directory without one is new if it holds no segments;
/// one with segments but no `LAYOUT` is refused (not written by Longbow, or
/// damaged).
pub fn read(storage: &dyn Storage, data: &Path) -> Result<Option<Layout>> {
    let path = data.join(LAYOUT_FILE);
    let text = match storage.read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for k in shard_dirs(storage, data)? {
                if !list_segments(storage, &shard_dir(data, k))?.is_empty() {
                    return Err(Error::Startup(format!(
                        "{} holds WAL segments but no LAYOUT file; refusing to guess the shard layout",
                        data.display()
                    )));
                }
            }
            return Ok(None);
        }
        Err(e) => return Err(Error::io("reading layout", &path, 0)(e)),
    };
    let layout: Layout = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path: path.clone(),
        offset: 0,
        reason: format!("unreadable layout: {e}"),
    })?;
    if layout.shards == 0 {
        return Err(Error::Corrupt { path, offset: 0, reason: "layout names zero shards".into() });
    }
    Ok(Some(layout))
}

/// Replaces `LAYOUT` atomically: write a temporary file, fsync, rename,
/// fsync the directory.
pub fn write(storage: &dyn Storage, data: &Path, layout: Layout) -> Result<()> {
    let tmp = data.join(format!("{LAYOUT_FILE}.tmp"));
    let path = data.join(LAYOUT_FILE);
    let text = serde_json::to_string(&layout).expect("layout serializes");
    storage.write_synced(&tmp, text.as_bytes()).map_err(Error::io("writing layout", &tmp, 0))?;
    storage.rename(&tmp, &path).map_err(Error::io("renaming layout", &tmp, 0))?;
    sync_dir(storage, data)
}

/// fsync a directory from a plain thread (startup, before the executors).
pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir_blocking(dir).map_err(Error::io("fsyncing directory", dir, 0))
}

/// fsync a directory of the snapshot volume (always the real file system).
pub(crate) fn sync_real_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsyncing directory", dir, 0))
}

/// Indexes of the `shard-<k>` directories in `data`, ascending.
pub fn shard_dirs(storage: &dyn Storage, data: &Path) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for name in crate::wal::list_names(storage, data, "listing data directory")? {
        if let Some(k) = name.strip_prefix("shard-").and_then(|k| k.parse().ok()) {
            out.push(k);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn read_header(storage: &dyn Storage, path: &Path) -> std::io::Result<Option<SegmentHeader>> {
    let buf = storage.read_prefix(path, SEGMENT_HEADER_BYTES)?;
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Ok(None);
    }
    Ok(SegmentHeader::decode(&buf).ok())
}

/// Cleans the WAL directories before any shard starts: deletes the
/// temporary files a crash left (segments caught in their creation, which
/// never held a record, and free files caught in their preallocation), then
/// the segments of other generations ([`remove_other_generations`]). Free
/// files are kept. Returns each directory's remaining segments.
pub fn clean(storage: &dyn Storage, data: &Path, generation: u64) -> Result<Vec<(usize, Vec<SegmentFile>)>> {
    for k in shard_dirs(storage, data)? {
        let dir = shard_dir(data, k);
        let mut deleted = false;
        for name in crate::wal::list_names(storage, &dir, "listing WAL directory")? {
            let what = if crate::wal::is_segment_tmp_name(&name) {
                "deleting a WAL segment a crash caught during its creation (it holds no records)"
            } else if crate::wal::free::is_free_tmp_name(&name) {
                "deleting a free WAL file a crash caught while it was being preallocated"
            } else {
                continue;
            };
            let path = dir.join(&name);
            tracing::warn!(file = %path.display(), "{what}");
            storage.remove_file(&path).map_err(Error::io("deleting unfinished WAL file", &path, 0))?;
            deleted = true;
        }
        if deleted {
            sync_dir(storage, &dir)?;
        }
    }
    remove_other_generations(storage, data, generation)
}

/// Deletes every segment whose generation is not `generation` (left by an
/// interrupted shard-count change, or the old one once a change is
/// complete). A segment whose header is missing or damaged is corruption:
/// segments get their names only once their header is durable. Touches no
/// file a running shard writes. Returns each directory's remaining segments.
pub fn remove_other_generations(
    storage: &dyn Storage,
    data: &Path,
    generation: u64,
) -> Result<Vec<(usize, Vec<SegmentFile>)>> {
    let mut out = Vec::new();
    for k in shard_dirs(storage, data)? {
        let dir = shard_dir(data, k);
        let mut deleted = false;
        let mut keep = Vec::new();
        for seg in list_segments(storage, &dir)? {
            let header = read_header(storage, &seg.path).map_err(Error::io("reading segment header", &seg.path, 0))?;
            let Some(header) = header else {
                return Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: "segment header is missing or damaged".into(),
                });
            };
            if header.generation != generation {
                tracing::info!(file = %seg.path.display(), "deleting WAL segment of another generation");
                storage.remove_file(&seg.path).map_err(Error::io("deleting stale segment", &seg.path, 0))?;
                deleted = true;
            } else {
                keep.push(seg);
            }
        }
        if deleted {
            sync_dir(storage, &dir)?;
        }
        out.push((k, keep));
    }
    Ok(out)
}

/// After a shard-count change became current: drops the directories of
/// shards that no longer exist (their segments are already deleted; their
/// free files go with them).
pub fn remove_retired_dirs(storage: &dyn Storage, data: &Path, shards: usize) -> Result<()> {
    for k in shard_dirs(storage, data)? {
        if k >= shards {
            let dir = shard_dir(data, k);
            if list_segments(storage, &dir)?.is_empty() {
                storage.remove_dir_all(&dir).map_err(Error::io("removing retired shard directory", &dir, 0))?;
            }
        }
    }
    sync_dir(storage, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: RealStorage = RealStorage::SYNC;

    #[test]
    fn layout_round_trips_and_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&FS, dir.path()).unwrap(), None);
        let l = Layout { shards: 3, generation: 7 };
        write(&FS, dir.path(), l).unwrap();
        assert_eq!(read(&FS, dir.path()).unwrap(), Some(l));
        let held = lock(&FS, dir.path()).unwrap();
        assert!(matches!(lock(&FS, dir.path()), Err(Error::Startup(_))));
        drop(held);
        lock(&FS, dir.path()).unwrap();
    }

    #[test]
    fn segments_without_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shard = shard_dir(dir.path(), 0);
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join(crate::wal::segment_file_name(crate::SegmentId(1))), b"x").unwrap();
        assert!(matches!(read(&FS, dir.path()), Err(Error::Startup(_))));
    }
}
