//! The cold tier: every dataset is a Delta Lake table at
//! `<LONGBOW_SNAPSHOT_PATH>/<dataset>/`, on a local directory (the default)
//! or an object store (`s3://`, `gs://`, `az://`).
//!
//! # Layout
//! - `delta/`: start here. `mod.rs`, the [`SnapshotStore`]: the object
//!   store and its runtime, each dataset's table, loads, drops;
//!   `write.rs`: snapshots (an upload, then a commit with a `txn` action
//!   per shard for idempotence); `read.rs`: evicted rows read back a row
//!   group at a time ([`read_objects`]); `compact.rs`: which files to merge,
//!   compactions (rewrite commits) and VACUUM.
//! - `metadata.rs`: the [`Manifest`] (the `longbow` entry of a Delta
//!   commit's `commitInfo`) and the Parquet encoding settings.
//! - `root.rs`: the local snapshot root's lock and startup probe.
//! - `legacy.rs`: the reader of the pre-Delta layout (Parquet files plus
//!   `.longbow/manifests`), which [`migrate`] turns into Delta tables at
//!   startup.
//!
//! The shard's snapshot worker, which decides when to snapshot, compact and
//! vacuum, is `shard/snapshots.rs`.
//!
//! The durability boundary: an acknowledged batch is on the WAL; a
//! snapshotted one is in the object store, in a committed Delta version.
//! The WAL drops a record only after the commit covering it is durable.

mod delta;
pub mod legacy;
mod metadata;
mod root;

pub use delta::*;
pub use legacy::*;
pub use metadata::*;
pub use root::*;

use std::path::Path;

use crate::error::Result;

/// Turns the pre-Delta layout under a local `root` (Parquet files plus
/// `.longbow/manifests/<dataset>.json`) into Delta tables in place (blocking;
/// at startup, before recovery): each manifest's files become one commit
/// whose `txn` is the covered LSN for the shard that owns the dataset, and
/// whose `commitInfo` keeps the producers' sequence numbers; then the
/// manifest is deleted. A crash midway redoes the commit, which the `txn`
/// makes a no-op. Returns the datasets migrated.
pub fn migrate(root: &Path, store: &std::sync::Arc<SnapshotStore>, shards: usize) -> Result<Vec<String>> {
    let manifests_dir = manifests_dir(root);
    let has_manifests = std::fs::read_dir(&manifests_dir).is_ok_and(|mut d| d.next().is_some())
        || std::fs::read_dir(root).is_ok_and(|d| d.flatten().any(|e| e.path().join(LEGACY_MANIFEST_FILE).exists()));
    if !has_manifests {
        return Ok(Vec::new());
    }
    let mut migrated = Vec::new();
    for m in load_manifests(root)? {
        let dataset = m.dataset.clone();
        let app_id = store.app_id(crate::routing::shard_for(&dataset, shards));
        store.block_on(store.clone().adopt(m, app_id))?;
        let path = manifest_path(root, &dataset);
        std::fs::remove_file(&path).map_err(crate::error::Error::io("removing a migrated manifest", &path, 0))?;
        crate::layout::sync_real_dir(&manifests_dir)?;
        tracing::info!(dataset, "migrated the dataset's snapshot files into a Delta table");
        migrated.push(dataset);
    }
    Ok(migrated)
}
