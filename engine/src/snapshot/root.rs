//! The local snapshot root's lock and its startup probe.

use std::path::Path;

use crate::error::{Error, Result};

const ROOT_LOCK_FILE: &str = ".lock";

/// Takes the snapshot root's lock (blocking; at startup).
pub fn lock_root(root: &Path) -> Result<crate::layout::DirLock> {
    crate::layout::lock_file(&root.join(ROOT_LOCK_FILE), "snapshot directory", root)
}

/// What the startup probe of the snapshot root found.
#[derive(Debug)]
pub enum RootProbe {
    Writable,
    /// Full (ENOSPC, EDQUOT): the server starts, snapshots fail until space
    /// returns, as they would had the volume filled while it ran.
    Full(std::io::Error),
}

/// Bytes the probe writes and syncs: one block, as a snapshot's first write
/// would need.
const PROBE_BYTES: usize = 4096;

/// Checks at startup, before the WAL replay, that snapshot files can be
/// written: creates a hidden file, writes and fsyncs a block, removes it.
/// A root that refuses (read-only mount, permissions, I/O errors) is an
/// error: without snapshots the WAL is never truncated and, under
/// LONGBOW_MAX_MEMORY, ingest stops once memory is full, so a misconfigured
/// volume must stop a rollout at its first pod, not be found at the first
/// snapshot (an hour later by default). A full one is not: space can return
/// while the server runs, and refusing would keep the data it holds
/// unreadable until then.
pub fn probe_root(root: &Path) -> Result<RootProbe> {
    use std::io::Write;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let path = root.join(format!(".probe-{}-{nanos}.tmp", std::process::id()));
    let written = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&[0; PROBE_BYTES]).and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&path);
    match written {
        Ok(()) => Ok(RootProbe::Writable),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOSPC | nix::libc::EDQUOT)) => Ok(RootProbe::Full(e)),
        Err(e) => Err(Error::startup(
            format!(
                "the snapshot directory {} is not writable (without snapshots the WAL is never truncated and \
                 memory never freed, so Longbow does not start: fix the volume (permissions, a read-only mount) \
                 or set LONGBOW_SNAPSHOT_PATH); writing {}",
                root.display(),
                path.display()
            ),
            e,
        )),
    }
}
