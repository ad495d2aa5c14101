//! The snapshot layout before Delta Lake, read at startup to migrate it:
//!
//! ```text
//! $SNAPSHOTS/<dataset>/part-<max lsn, 20 digits>.parquet   rows logged up to that LSN
//! $SNAPSHOTS/.longbow/manifests/<dataset>.json             files + covered LSN + schema
//! $SNAPSHOTS/.longbow/tmp/                                  files being written
//! ```
//!
//! [`load_manifests`] finishes what a crash interrupted as before (rolls a
//! merge's rename forward, deletes files no manifest lists) and
//! `super::migrate` then commits each manifest's files, where they lie, as
//! a Delta table. The [`Manifest`] struct lives on as Longbow's entry in a
//! Delta commit's `commitInfo` (without its file list). The Parquet
//! encoding settings and the synchronous [`SnapshotReader`] are shared with
//! the Delta store.

use std::path::{Path, PathBuf};

use super::Manifest;
use crate::error::{Error, Result};

/// The manifest's name in a dataset directory before manifests moved out
/// (read and moved at start).
pub const LEGACY_MANIFEST_FILE: &str = "_manifest.json";
/// Longbow's own files under the snapshot root.
pub const META_DIR: &str = ".longbow";

pub fn dataset_dir(root: &Path, dataset: &str) -> PathBuf {
    root.join(dataset)
}

pub fn manifests_dir(root: &Path) -> PathBuf {
    root.join(META_DIR).join("manifests")
}

fn tmp_dir(root: &Path) -> PathBuf {
    root.join(META_DIR).join("tmp")
}

/// Where the manifest of `dataset` lives.
pub fn manifest_path(root: &Path, dataset: &str) -> PathBuf {
    manifests_dir(root).join(format!("{dataset}.json"))
}

/// The temporary path under `.longbow/tmp` of file `name` of the dataset
/// directory `dir`.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let dataset = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tmp_dir(root_of(dir)).join(format!("{dataset}.{name}.tmp"))
}

/// The snapshot root of a dataset directory.
fn root_of(dir: &Path) -> &Path {
    dir.parent().expect("a dataset directory has the snapshot root as parent")
}

/// Creates `.longbow/manifests` and `.longbow/tmp`, durably.
fn create_meta_dirs(root: &Path) -> Result<()> {
    for dir in [manifests_dir(root), tmp_dir(root)] {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(Error::io("creating snapshot metadata directory", &dir, 0))?;
            crate::layout::sync_real_dir(dir.parent().expect("under the root"))?;
            crate::layout::sync_real_dir(root)?;
        }
    }
    Ok(())
}

/// Reads every manifest under `root` (blocking; at startup). Files in a
/// dataset directory that its manifest does not list are leftovers of an
/// interrupted snapshot and are deleted.
pub fn load_manifests(root: &Path) -> Result<Vec<Manifest>> {
    create_meta_dirs(root)?;
    let mut out = Vec::new();
    for entry in crate::wal::list_dir(root, "listing snapshot directory")? {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `.longbow`, `.lock`, probes: never a dataset (names cannot start with a dot).
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        if dir.join("_delta_log").exists() && !manifest_path(root, &name).exists() {
            continue; // a Delta table: its log, not a manifest, says which files count
        }
        migrate_legacy_manifest(root, &name, &dir)?;
        let path = manifest_path(root, &name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The first snapshot of a dataset, or a drop, was interrupted
                // (a drop removes the manifest first): the WAL still holds
                // every row, and outside readers must not see these files.
                delete_unlisted(&dir, |_| false)?;
                continue;
            }
            Err(e) => return Err(Error::io("reading snapshot manifest", &path, 0)(e)),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("unreadable manifest: {e}"),
        })?;
        roll_forward(&dir, &m)?;
        delete_unlisted(&dir, |name| m.files.iter().any(|x| x.name == name))?;
        out.push(m);
    }
    // What is left there was never listed by a manifest.
    delete_unlisted(&tmp_dir(root), |_| false)?;
    Ok(out)
}

/// A merge whose manifest became durable before its file was renamed into
/// place (a crash in between): finish the rename. A listed file found
/// nowhere is damage.
fn roll_forward(dir: &Path, m: &Manifest) -> Result<()> {
    let mut moved = false;
    for f in &m.files {
        let path = dir.join(&f.name);
        if path.exists() {
            continue;
        }
        let tmp = temp_path(dir, &f.name);
        if !tmp.exists() {
            return Err(Error::Corrupt {
                path,
                offset: 0,
                reason: "the manifest lists this snapshot file but it is missing".into(),
            });
        }
        std::fs::rename(&tmp, &path).map_err(Error::io("finishing a snapshot merge", &tmp, 0))?;
        tracing::info!(file = %path.display(), "finished a snapshot merge a crash interrupted");
        moved = true;
    }
    if moved {
        crate::layout::sync_real_dir(dir)?;
    }
    Ok(())
}

/// Moves `<dataset>/_manifest.json` (older versions) to `.longbow/manifests/`.
fn migrate_legacy_manifest(root: &Path, dataset: &str, dir: &Path) -> Result<()> {
    let legacy = dir.join(LEGACY_MANIFEST_FILE);
    if !legacy.exists() {
        return Ok(());
    }
    let to = manifest_path(root, dataset);
    std::fs::rename(&legacy, &to).map_err(Error::io("moving a snapshot manifest to .longbow/manifests", &legacy, 0))?;
    // IMPORTANT: the new entry first: a power loss must not lose both.
    crate::layout::sync_real_dir(&manifests_dir(root))?;
    crate::layout::sync_real_dir(dir)?;
    tracing::info!(dataset, to = %to.display(), "moved the snapshot manifest out of the dataset directory");
    Ok(())
}

/// Deletes the files of a dataset's snapshot directory that `keep` does not
/// name (leftovers of an interrupted snapshot, merge or drop), then makes
/// the deletes durable.
fn delete_unlisted(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let mut deleted = false;
    for f in crate::wal::list_dir(dir, "listing snapshot directory")? {
        let name = f.file_name().to_string_lossy().into_owned();
        if !keep(&name) && f.file_type().is_ok_and(|t| t.is_file()) {
            tracing::info!(file = %f.path().display(), "deleting snapshot file no manifest lists (interrupted snapshot, merge or drop)");
            std::fs::remove_file(f.path()).map_err(Error::io("deleting unlisted snapshot file", f.path(), 0))?;
            deleted = true;
        }
    }
    if deleted {
        // IMPORTANT: otherwise a power loss could bring the files back.
        crate::layout::sync_real_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::SnapshotFile;
    use crate::snapshot::SnapshotCompression;
    use crate::wal::Lsn;
    use arrow::array::{Int32Array, RecordBatch};

    /// The layout before Delta, as the old writer left it: a dataset's
    /// Parquet file, its manifest, and a leftover no manifest lists.
    #[test]
    fn a_legacy_layout_is_migrated_into_a_delta_table_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let batch = RecordBatch::try_from_iter([(
            "id",
            std::sync::Arc::new(Int32Array::from_iter_values(0..1000)) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let d = dataset_dir(&root, "ds");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(manifests_dir(&root)).unwrap();
        let write = |name: &str| {
            let f = std::fs::File::create(d.join(name)).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            std::fs::metadata(d.join(name)).unwrap().len()
        };
        let bytes = write("part-1.parquet");
        write("part-2.parquet");
        let file = SnapshotFile { name: "part-1.parquet".into(), rows: 1000, bytes, min_lsn: Lsn(1), max_lsn: Lsn(1) };
        let manifest = Manifest::new("ds", &batch.schema(), Lsn(1), vec![file.clone()]);
        std::fs::write(manifest_path(&root, "ds"), serde_json::to_vec(&manifest).unwrap()).unwrap();

        let manifests = load_manifests(&root).unwrap();
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0].schema().unwrap(), batch.schema());
        assert!(!d.join("part-2.parquet").exists(), "a file no manifest lists is a leftover");

        // Migrated in place at start: one Delta commit of the same files
        // and covered LSN; the manifest goes.
        let store = crate::snapshot::SnapshotStore::open(
            crate::snapshot::Location::Local(root.clone()),
            None,
            "0",
            crate::snapshot::DEFAULT_RETENTION,
            SnapshotCompression::None,
        )
        .unwrap();
        assert_eq!(crate::snapshot::migrate(&root, &store, 1).unwrap(), vec!["ds".to_owned()]);
        assert!(!manifest_path(&root, "ds").exists());
        assert!(d.join("_delta_log").is_dir());
        assert!(crate::snapshot::migrate(&root, &store, 1).unwrap().is_empty(), "once");
        let s = store.clone();
        let t = store.block_on(async move { s.load("ds", None).await }).unwrap().unwrap();
        assert_eq!(t.manifest.covered_lsn, Lsn(1));
        assert_eq!(t.manifest.files, vec![file]);
        assert_eq!(t.manifest.schema().unwrap(), batch.schema());
    }
}
