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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use base64::Engine as _;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::dataset::{ProducerSeqs, SnapshotFile};
use crate::error::{Error, Result};
use crate::wal::Lsn;

/// The manifest's name in a dataset directory before manifests moved out
/// (read and moved at start).
pub const LEGACY_MANIFEST_FILE: &str = "_manifest.json";
/// Longbow's own files under the snapshot root.
pub const META_DIR: &str = ".longbow";
/// Bytes of encoded Parquet buffered before they are written out.
const WRITE_CHUNK_BYTES: usize = 8 << 20;
/// Writeback of a snapshot file is started every this many bytes (as
/// RocksDB's `bytes_per_sync`), and the range before it waited for, so the
/// final fsync has little left and no burst of dirty pages queues the WAL's
/// `fdatasync`s behind it.
const WRITEBACK_BYTES: u64 = 8 << 20;
/// Row groups are closed at this size. Closing one copies and finishes all
/// its pages in one call that cannot yield, so it bounds how long a snapshot
/// holds the shard thread (64 MiB groups stalled acknowledgements ~60 ms).
const ROW_GROUP_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub dataset: String,
    /// Arrow IPC schema message, base64.
    pub schema_ipc: String,
    /// Every row logged up to this LSN (of the owning shard) is in `files`.
    pub covered_lsn: Lsn,
    pub files: Vec<SnapshotFile>,
    /// Idempotent producers' stored sequence numbers as of the snapshot:
    /// they outlive the WAL segments that logged them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub producers: BTreeMap<String, ProducerSeqs>,
}

impl Manifest {
    pub fn new(dataset: &str, schema: &SchemaRef, covered_lsn: Lsn, files: Vec<SnapshotFile>) -> Self {
        let schema_ipc = base64::engine::general_purpose::STANDARD.encode(crate::wal::ipc::schema_message(schema));
        Self { version: 1, dataset: dataset.to_owned(), schema_ipc, covered_lsn, files, producers: BTreeMap::new() }
    }

    pub fn schema(&self) -> std::result::Result<SchemaRef, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.schema_ipc).map_err(|e| e.to_string())?;
        let mut found = None;
        crate::wal::ipc::decode_payload(
            &arrow::buffer::Buffer::from_vec(bytes),
            crate::wal::ipc::PayloadLayout::Packed,
            None,
            |m| {
                if let crate::wal::ipc::Decoded::Schema(s) = m {
                    found = Some(s);
                }
            },
        )?;
        found.ok_or_else(|| "manifest holds no schema".to_owned())
    }
}

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

/// Parquet compression for snapshot files. Chosen by measurement, see
/// `docs/benchmarks.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotCompression {
    None,
    /// The default. Encoding on one core (snapshot files on tmpfs): none
    /// 506, snappy 516, zstd 308 MB/s of random 128-d float vectors; zstd
    /// saves 11.5 % of the bytes there, snappy < 1 %, but snappy is as cheap
    /// as none and shrinks compressible columns (ids, strings) a lot.
    #[default]
    Snappy,
    /// With float columns byte-stream-split: 19.5 % fewer bytes on random
    /// float vectors for ~45 % less speed. For a snapshot volume slower than
    /// the encoder.
    Zstd,
}

pub(crate) fn properties(compression: SnapshotCompression, schema: &arrow::datatypes::Schema) -> WriterProperties {
    let c = match compression {
        SnapshotCompression::None => Compression::UNCOMPRESSED,
        SnapshotCompression::Snappy => Compression::SNAPPY,
        SnapshotCompression::Zstd => Compression::ZSTD(Default::default()),
    };
    // Dictionary encoding hashes every value and rarely pays off for
    // embedding floats or unique ids; page-level statistics over millions of
    // vector elements cost more than they save a reader. Measured in
    // docs/benchmarks.md.
    let mut props = WriterProperties::builder()
        .set_compression(c)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
    // With zstd, float columns (embedding vectors) are byte-stream-split:
    // the sign and exponent bytes of all values sit together and compress.
    // Measured on random 128-d vectors, one core: zstd 0.885 -> 0.805 of
    // the Arrow bytes at the same speed; snappy 0.994 -> 0.861 but 534-597
    // -> 344-373 MB/s, under the 400 MB/s a core must keep up, so not there.
    let split_floats = compression == SnapshotCompression::Zstd;
    let descr = parquet::arrow::ArrowSchemaConverter::new().convert(schema).ok().filter(|_| split_floats);
    if let Some(descr) = descr {
        for col in descr.columns() {
            if matches!(col.physical_type(), parquet::basic::Type::FLOAT | parquet::basic::Type::DOUBLE) {
                props = props.set_column_encoding(col.path().clone(), parquet::basic::Encoding::BYTE_STREAM_SPLIT);
            }
        }
    }
    props.build()
}

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

/// Writes `batches` as one Parquet file `name` in `dir`, durably and
/// atomically: temporary name, fsync, rename, fsync the directory. The
/// encoding and the file writes run on the shard's blocking thread: Parquet
/// calls that cannot yield (closing a row group, buffered writes into the
/// page cache) held the shard thread for 15-60 ms when run on it, and
/// acknowledgements waited behind them. Returns the bytes written.
pub async fn write_parquet(
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
    compression: SnapshotCompression,
) -> Result<u64> {
    let batches = batches.to_vec();
    write_atomically(dir, name, move |tmp| encode_to_file(tmp, schema, batches.into_iter().map(Ok), compression)).await
}

/// Runs `encode` on the shard's blocking thread (at low priority) to write a
/// temporary file that it fsyncs, then renames it to `name` and fsyncs `dir`.
/// Removes the temporary file if anything fails.
async fn write_atomically(
    dir: &Path,
    name: &str,
    encode: impl FnOnce(&Path) -> Result<u64> + Send + 'static,
) -> Result<u64> {
    let (tmp, bytes) = write_temp(dir, name, encode).await?;
    if let Err(e) = install(&tmp, dir, name).await {
        discard(&tmp);
        return Err(e);
    }
    crate::io::real::sync_dir(dir).await?;
    Ok(bytes)
}

/// The temporary path under `.longbow/tmp` of file `name` of the dataset
/// directory `dir`.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let dataset = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tmp_dir(root_of(dir)).join(format!("{dataset}.{name}.tmp"))
}

/// Runs `encode` on the shard's blocking thread (at low priority) to write
/// and fsync the temporary file of `name`; returns its path and size.
async fn write_temp(
    dir: &Path,
    name: &str,
    encode: impl FnOnce(&Path) -> Result<u64> + Send + 'static,
) -> Result<(PathBuf, u64)> {
    let tmp = temp_path(dir, name);
    let job_tmp = tmp.clone();
    let written = glommio::executor()
        .spawn_blocking(move || {
            lower_thread_priority();
            encode(&job_tmp)
        })
        .await;
    match written {
        Ok(bytes) => Ok((tmp, bytes)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Renames a complete temporary file into the dataset directory (the
/// caller fsyncs `dir`).
/// The temporary file is left in place if the rename fails (a manifest may
/// already list it: the next start rolls the rename forward).
pub async fn install(tmp: &Path, dir: &Path, name: &str) -> Result<()> {
    glommio::io::rename(tmp, dir.join(name)).await.map_err(Error::glommio("renaming snapshot file", tmp, 0))
}

/// Drops a temporary file that will not be installed.
pub fn discard(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
}

/// Snapshot encoding yields the CPU to acknowledgements: the calling
/// (blocking-pool) thread gets nice 10. Idempotent; failures are ignored
/// (the work still gets done, just at normal priority).
pub(crate) fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = nix::libc::gettid();
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t, SNAPSHOT_NICE);
    }
}

/// Nice value of the thread that encodes snapshots.
const SNAPSHOT_NICE: i32 = 10;

/// Encodes `batches` into a new Parquet file at `path` and fsyncs it;
/// returns its size.
fn encode_to_file(
    path: &Path,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
    compression: SnapshotCompression,
) -> Result<u64> {
    let file = std::fs::File::create(path).map_err(Error::io("creating snapshot file", path, 0))?;
    let file = WritebackAhead { file, written: 0, started: 0 };
    let out = std::io::BufWriter::with_capacity(WRITE_CHUNK_BYTES, file);
    let props = properties(compression, &schema);
    let mut writer = ArrowWriter::try_new(out, schema, Some(props))
        .map_err(|e| Error::InvalidInput(format!("parquet writer: {e}")))?;
    for batch in batches {
        writer.write(&batch?).map_err(|e| parquet_io(path, e))?;
    }
    // Writes the footer and hands back the buffered file.
    let out = writer.into_inner().map_err(|e| parquet_io(path, e))?;
    let file = out.into_inner().map_err(|e| Error::io("writing snapshot file", path, 0)(e.into_error()))?.file;
    file.sync_all().map_err(Error::io("fsyncing snapshot file", path, 0))?;
    let bytes = file.metadata().map_err(Error::io("stat snapshot file", path, 0))?.len();
    Ok(bytes)
}

/// A file whose dirty pages are written back as it grows (see
/// [`WRITEBACK_BYTES`]).
struct WritebackAhead {
    file: std::fs::File,
    written: u64,
    /// Writeback was started for `0..started`.
    started: u64,
}

impl std::io::Write for WritebackAhead {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_BYTES {
            use nix::libc::{SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE};
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a descriptor this struct owns. Wait
            // for the previous range, start the new one. Advice only: an
            // error here shows up again at the fsync.
            unsafe {
                nix::libc::sync_file_range(
                    self.file.as_raw_fd(),
                    0,
                    self.written as i64,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn parquet_io(path: &Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => Error::io("writing snapshot file", path, 0)(*io),
            Err(other) => Error::InvalidInput(format!("encoding parquet: {other}")),
        },
        other => Error::InvalidInput(format!("encoding parquet: {other}")),
    }
}

async fn write_all(file: &glommio::io::BufferedFile, chunk: Vec<u8>, pos: u64, path: &Path) -> Result<u64> {
    let len = chunk.len();
    if len == 0 {
        return Ok(0);
    }
    let n = file.write_at(chunk, pos).await.map_err(Error::glommio("writing snapshot file", path, pos))?;
    if n != len {
        return Err(Error::Io {
            op: "writing snapshot file (short write)",
            path: path.to_owned(),
            offset: pos + n as u64,
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        });
    }
    Ok(len as u64)
}

/// Files smaller than this are merged once enough of them pile up.
pub const COMPACT_FILE_BYTES: u64 = 64 << 20;
/// How many consecutive small files trigger a merge.
pub const COMPACT_RUN_FILES: usize = 8;

/// The first run of at least [`COMPACT_RUN_FILES`] consecutive small files
/// that lies wholly on one side of the eviction boundary `evicted_lsn`.
pub fn compaction_run(files: &[SnapshotFile], evicted_lsn: Lsn) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    for i in 0..=files.len() {
        let breaks = i == files.len()
            || files[i].bytes >= COMPACT_FILE_BYTES
            || (i > start && (files[i - 1].max_lsn <= evicted_lsn) != (files[i].max_lsn <= evicted_lsn));
        if breaks {
            if i - start >= COMPACT_RUN_FILES {
                return Some(start..i);
            }
            start = if i < files.len() && files[i].bytes >= COMPACT_FILE_BYTES { i + 1 } else { i };
        }
    }
    None
}

/// Writes the rows of `sources` (in order) as the durable temporary file
/// of `name` in `dir`, streaming them one row group at a time; returns its
/// path (to [`install`]) and size. The caller writes the manifest that lists
/// it first, so that the swap for outside readers is one rename and a few
/// deletes with nothing in between; a crash after the manifest rolls the
/// install forward at start.
pub async fn merge_files(
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    sources: Vec<PathBuf>,
    compression: SnapshotCompression,
) -> Result<(PathBuf, u64)> {
    write_temp(dir, name, move |tmp| {
        let batches = sources.into_iter().flat_map(|src| match SnapshotReader::open(&src) {
            Ok(reader) => Box::new(reader) as Box<dyn Iterator<Item = Result<RecordBatch>>>,
            Err(e) => Box::new(std::iter::once(Err(e))),
        });
        encode_to_file(tmp, schema, batches, compression)
    })
    .await
}

/// Replaces the manifest of the dataset whose directory is `dir`, atomically.
pub async fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let root = root_of(dir);
    let tmp = tmp_dir(root).join(format!("{}.manifest.tmp", manifest.dataset));
    let path = manifest_path(root, &manifest.dataset);
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let file =
        glommio::io::BufferedFile::create(&tmp).await.map_err(Error::glommio("creating snapshot manifest", &tmp, 0))?;
    let r = async {
        write_all(&file, bytes, 0, &tmp).await?;
        file.fdatasync().await.map_err(Error::glommio("fsyncing snapshot manifest", &tmp, 0))
    }
    .await;
    let _ = file.close().await;
    r?;
    glommio::io::rename(&tmp, &path).await.map_err(Error::glommio("renaming snapshot manifest", &tmp, 0))?;
    crate::io::real::sync_dir(&manifests_dir(root)).await
}

/// Creates a dataset's snapshot directory (and makes its entry durable).
pub async fn create_dataset_dir(root: &Path, dataset: &str) -> Result<PathBuf> {
    create_meta_dirs(root)?;
    let dir = dataset_dir(root, dataset);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(Error::io("creating snapshot directory", &dir, 0))?;
        crate::io::real::sync_dir(root).await?;
    }
    Ok(dir)
}

/// Removes a dataset's snapshot directory durably: manifest first, so that
/// a crash midway leaves no manifest (and the files are then ignored).
pub async fn remove_dataset_dir(root: &Path, dataset: &str) -> Result<()> {
    let dir = dataset_dir(root, dataset);
    if !dir.exists() {
        return Ok(());
    }
    let manifest = manifest_path(root, dataset);
    if manifest.exists() {
        glommio::io::remove(&manifest).await.map_err(Error::glommio("removing snapshot manifest", &manifest, 0))?;
        crate::io::real::sync_dir(&manifests_dir(root)).await?;
    }
    std::fs::remove_dir_all(&dir).map_err(Error::io("removing snapshot directory", &dir, 0))?;
    crate::io::real::sync_dir(root).await
}

/// The batches of one snapshot file, read as they are asked for: one row
/// group in memory at a time, whatever the file's size.
pub struct SnapshotReader {
    path: PathBuf,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
}

impl SnapshotReader {
    /// Reads `file`, already open: a file opened when a read began stays
    /// readable even if a merge deletes it meanwhile.
    pub fn new(path: &Path, file: std::fs::File) -> Result<Self> {
        let corrupt = |e: parquet::errors::ParquetError| Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: format!("parquet: {e}"),
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(corrupt)?
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(corrupt)?;
        Ok(Self { path: path.to_owned(), reader })
    }

    /// Opens and reads the file at `path` (blocking).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(Error::io("opening snapshot file", path, 0))?;
        Self::new(path, file)
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.reader.next()?;
        Some(next.map_err(|e| Error::Corrupt { path: self.path.clone(), offset: 0, reason: format!("parquet: {e}") }))
    }
}

/// Rows per batch read back from snapshot files.
const READ_BATCH_ROWS: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    fn file(i: u64, bytes: u64) -> SnapshotFile {
        SnapshotFile { name: format!("f{i}"), rows: 1, bytes, min_lsn: Lsn(i * 10 + 1), max_lsn: Lsn(i * 10 + 10) }
    }

    #[test]
    fn compaction_picks_runs_of_small_files_on_one_side_of_the_eviction_boundary() {
        let small: Vec<_> = (0..10).map(|i| file(i, 1000)).collect();
        assert_eq!(compaction_run(&small[..7], Lsn(0)), None);
        assert_eq!(compaction_run(&small, Lsn(0)), Some(0..10));
        // Evicted up to file 3 (lsn 40): runs 0..4 and 4..10; only the second is long enough.
        assert_eq!(compaction_run(&small, Lsn(40)), None);
        let more: Vec<_> = (0..14).map(|i| file(i, 1000)).collect();
        assert_eq!(compaction_run(&more, Lsn(40)), Some(4..14));
        // A big file breaks a run.
        let mut mixed = small.clone();
        mixed[5] = file(5, COMPACT_FILE_BYTES);
        assert_eq!(compaction_run(&mixed, Lsn(0)), None);
    }

    #[test]
    fn parquet_file_and_manifest_land_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let batch = RecordBatch::try_from_iter([(
                    "id",
                    std::sync::Arc::new(Int32Array::from_iter_values(0..1000)) as arrow::array::ArrayRef,
                )])
                .unwrap();
                let d = create_dataset_dir(&root, "ds").await.unwrap();
                let bytes = write_parquet(
                    &d,
                    "part-1.parquet",
                    batch.schema(),
                    std::slice::from_ref(&batch),
                    SnapshotCompression::None,
                )
                .await
                .unwrap();
                let file =
                    SnapshotFile { name: "part-1.parquet".into(), rows: 1000, bytes, min_lsn: Lsn(1), max_lsn: Lsn(1) };
                write_manifest(&d, &Manifest::new("ds", &batch.schema(), Lsn(1), vec![file.clone()])).await.unwrap();
                let names: Vec<_> =
                    std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                assert_eq!(
                    names,
                    vec!["part-1.parquet".to_owned()],
                    "only complete Parquet files in a dataset directory"
                );
                assert!(manifest_path(&root, "ds").exists());
                let read: Result<Vec<_>> = SnapshotReader::open(&d.join("part-1.parquet")).unwrap().collect();
                assert_eq!(read.unwrap(), vec![batch.clone()]);
                let manifests = load_manifests(&root).unwrap();
                assert_eq!(manifests[0].schema().unwrap(), batch.schema());

                // Migrated in place at start: one Delta commit of the same
                // files and covered LSN; the manifest goes.
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
                let t = store.block_on(async move { s.load("ds").await }).unwrap().unwrap();
                assert_eq!(t.manifest.covered_lsn, Lsn(1));
                assert_eq!(t.manifest.files, vec![file.clone()]);
                assert_eq!(t.manifest.schema().unwrap(), batch.schema());
                remove_dataset_dir(&root, "ds").await.unwrap();
                assert!(!d.exists());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
