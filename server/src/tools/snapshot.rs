//! `longbow snapshot ls DIR`: what the Delta tables of a local snapshot
//! root hold (layout in `engine/src/snapshot/delta.rs`): each table's
//! current files, covered LSN and producers, and the files its current
//! version does not use. Manifests of the pre-Delta layout, which a start
//! migrates, are shown as before.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use longbow_engine::snapshot::{self, Manifest, LEGACY_MANIFEST_FILE, META_DIR};
use serde::Serialize;

use super::{EXIT_DAMAGE, EXIT_OK};

#[derive(Debug, Serialize)]
struct File {
    name: String,
    rows: u64,
    bytes: u64,
    min_lsn: longbow_engine::Lsn,
    max_lsn: longbow_engine::Lsn,
    /// In the dataset's directory.
    present: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Entry {
    Dataset {
        dataset: String,
        manifest: PathBuf,
        files: Vec<File>,
        rows: u64,
        bytes: u64,
        covered_lsn: longbow_engine::Lsn,
        producers: usize,
        schema: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// Not a dataset a start would load, and why.
    Note {
        file: PathBuf,
        note: String,
    },
    Damage {
        file: PathBuf,
        reason: String,
    },
}

/// `longbow snapshot ls DIR`.
pub fn ls(root: &Path, json: bool, out: &mut dyn Write) -> io::Result<u8> {
    if !std::fs::metadata(root)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", root.display())))?
        .is_dir()
    {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
    }
    let mut damage = 0usize;
    let mut datasets = 0usize;
    for entry in entries(root)? {
        match &entry {
            Entry::Damage { .. } => damage += 1,
            Entry::Dataset { .. } => datasets += 1,
            Entry::Note { .. } => {}
        }
        if json {
            serde_json::to_writer(&mut *out, &entry).map_err(io::Error::other)?;
            writeln!(out)?;
        } else {
            write_text(out, &entry)?;
        }
    }
    let code = if damage > 0 { EXIT_DAMAGE } else { EXIT_OK };
    if json {
        let v = serde_json::json!({"type": "summary", "datasets": datasets, "damage": damage, "exit": code});
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{datasets} dataset(s), {damage} problem(s); exit {code}")?;
    }
    Ok(code)
}

fn write_text(out: &mut dyn Write, e: &Entry) -> io::Result<()> {
    match e {
        Entry::Dataset { dataset, files, rows, bytes, covered_lsn, producers, schema, notes, .. } => {
            writeln!(
                out,
                "dataset {dataset}: {} file(s), {rows} rows, {bytes} bytes, covered lsn {covered_lsn}, \
                 {producers} producer(s), schema [{}]",
                files.len(),
                schema.join(", ")
            )?;
            for f in files {
                let missing = if f.present { "" } else { " (missing)" };
                writeln!(
                    out,
                    "  {}: {} rows, {} bytes, lsn {}..={}{missing}",
                    f.name, f.rows, f.bytes, f.min_lsn, f.max_lsn
                )?;
            }
            for n in notes {
                writeln!(out, "  note: {n}")?;
            }
            Ok(())
        }
        Entry::Note { file, note } => writeln!(out, "note: {}: {note}", file.display()),
        Entry::Damage { file, reason } => writeln!(out, "damage: {}: {reason}", file.display()),
    }
}

fn names(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io::Error::new(e.kind(), format!("listing {}: {e}", dir.display()))),
    };
    for e in entries {
        let e = e.map_err(|e| io::Error::new(e.kind(), format!("listing {}: {e}", dir.display())))?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        out.push((e.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// Every dataset (a manifest, or a directory) of `root`, by name, then the
/// leftovers of `.longbow/tmp`.
fn entries(root: &Path) -> io::Result<Vec<Entry>> {
    let manifests = root.join(META_DIR).join("manifests");
    let mut datasets = BTreeSet::new();
    for (name, _) in names(&manifests)? {
        if let Some(d) = name.strip_suffix(".json") {
            datasets.insert(d.to_owned());
        }
    }
    for (name, is_dir) in names(root)? {
        // `.longbow`, `.lock`, probes: never a dataset.
        if is_dir && !name.starts_with('.') {
            datasets.insert(name);
        }
    }
    let mut out = Vec::new();
    for d in datasets {
        out.extend(dataset(root, &d)?);
    }
    let tmp = root.join(META_DIR).join("tmp");
    for (name, _) in names(&tmp)? {
        let note = "a file being written, or left by an interrupted snapshot or merge (a start finishes a merge \
                    whose manifest lists it, and deletes the rest)";
        out.push(Entry::Note { file: tmp.join(name), note: note.into() });
    }
    Ok(out)
}

/// The table of `name` as a start reads it.
fn table(root: &Path, name: &str) -> Result<Option<Manifest>, String> {
    use snapshot::{Location, SnapshotStore, DEFAULT_RETENTION};
    let store =
        SnapshotStore::open(Location::Local(root.to_owned()), None, "ls", DEFAULT_RETENTION, Default::default())
            .map_err(|e| e.to_string())?;
    let (s, n) = (store.clone(), name.to_owned());
    store.block_on(async move { s.load(&n, None).await }).map(|t| t.map(|t| t.manifest)).map_err(|e| e.to_string())
}

fn dataset(root: &Path, name: &str) -> io::Result<Vec<Entry>> {
    let dir = snapshot::dataset_dir(root, name);
    let log = dir.join("_delta_log");
    if log.is_dir() && !snapshot::manifest_path(root, name).exists() {
        return match table(root, name) {
            Ok(Some(m)) => Ok(described(root, name, &dir, log, m, Vec::new(), true)),
            Ok(None) => Ok(vec![Entry::Note { file: dir, note: "a Delta table no Longbow server wrote".into() }]),
            Err(e) => Ok(vec![Entry::Damage { file: log, reason: e }]),
        };
    }
    let mut path = snapshot::manifest_path(root, name);
    let mut notes = Vec::new();
    if !path.exists() && dir.join(LEGACY_MANIFEST_FILE).exists() {
        path = dir.join(LEGACY_MANIFEST_FILE);
        notes.push("manifest in the dataset directory (written by an older version; a start moves it)".to_owned());
    }
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let note = "no manifest: its files are not in force (an interrupted first snapshot or drop); a start \
                        deletes them and the WAL holds the rows";
            return Ok(vec![Entry::Note { file: dir, note: note.into() }]);
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    let m: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => return Ok(vec![Entry::Damage { file: path, reason: format!("unreadable manifest: {e}") }]),
    };
    notes.push("a manifest of the pre-Delta layout: a start migrates it into a Delta table".to_owned());
    Ok(described(root, name, &dir, path, m, notes, false))
}

/// A dataset's entry: the files `m` lists, checked against the directory.
fn described(
    root: &Path,
    name: &str,
    dir: &Path,
    path: PathBuf,
    m: Manifest,
    mut notes: Vec<String>,
    delta: bool,
) -> Vec<Entry> {
    let mut out = Vec::new();
    if m.dataset != name {
        notes.push(format!("the manifest names dataset {:?}", m.dataset));
    }
    let schema = match m.schema() {
        Ok(s) => s.fields().iter().map(|f| f.name().clone()).collect(),
        Err(e) => {
            out.push(Entry::Damage { file: path.clone(), reason: format!("manifest schema: {e}") });
            Vec::new()
        }
    };
    let on_disk = names(dir).unwrap_or_default();
    let mut files = Vec::new();
    for f in &m.files {
        let file = dir.join(&f.name);
        let present = file.is_file();
        if !present {
            let tmp = root.join(META_DIR).join("tmp").join(format!("{name}.{}.tmp", f.name));
            if tmp.exists() {
                notes.push(format!(
                    "{} is still at {} (a merge a crash interrupted; a start renames it)",
                    f.name,
                    tmp.display()
                ));
            } else {
                out.push(Entry::Damage {
                    file,
                    reason: "the manifest lists this snapshot file but it is missing".into(),
                });
            }
        } else if let Ok(meta) = std::fs::metadata(&file) {
            if meta.len() != f.bytes {
                notes.push(format!("{} holds {} bytes, the manifest says {}", f.name, meta.len(), f.bytes));
            }
        }
        files.push(File {
            name: f.name.clone(),
            rows: f.rows,
            bytes: f.bytes,
            min_lsn: f.min_lsn,
            max_lsn: f.max_lsn,
            present,
        });
    }
    for (file, is_dir) in &on_disk {
        if *is_dir || file == LEGACY_MANIFEST_FILE || m.files.iter().any(|f| f.name == *file) {
            continue;
        }
        notes.push(if delta {
            format!(
                "{file} is not in the table's current version (replaced by a compaction and kept for readers of \
                 older versions, or uploaded by a snapshot whose commit never happened); VACUUM deletes it after \
                 the retention period"
            )
        } else {
            format!("{file} is not in the manifest (an interrupted snapshot, merge or drop); a start deletes it")
        });
    }
    out.insert(
        0,
        Entry::Dataset {
            dataset: name.to_owned(),
            manifest: path,
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            covered_lsn: m.covered_lsn,
            producers: m.producers.len(),
            schema,
            notes,
        },
    );
    out
}
