//! Parquet snapshots on the slow volume, and their manifests.
//!
//! ```text
//! $SNAPSHOTS/<dataset>/part-<max lsn, 20 digits>.parquet   rows logged up to that LSN
//! $SNAPSHOTS/<dataset>/_manifest.json                      files + covered LSN + schema
//! ```
//!
//! A snapshot writes only the batches logged since the dataset's last one
//! (cost proportional to new data), as a new file: temporary name, fsync,
//! rename, fsync the directory. Then the manifest is replaced the same way;
//! only then do the WAL segments it covers become deletable. A crash at any
//! point leaves the previous manifest in force: a file it does not list is
//! ignored at startup and deleted, and its rows are replayed from the WAL.
//! Readers (DuckDB, pandas) see `*.parquet` files only once complete:
//! temporary files end in `.tmp`, the manifest starts with `_`.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use base64::Engine as _;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::dataset::SnapshotFile;
use crate::error::{Error, Result};
use crate::wal::Lsn;

pub const MANIFEST_FILE: &str = "_manifest.json";
/// Bytes of encoded Parquet buffered before they are written out.
const WRITE_CHUNK_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub dataset: String,
    /// Arrow IPC schema message, base64.
    pub schema_ipc: String,
    /// Every row logged up to this LSN (of the owning shard) is in `files`.
    pub covered_lsn: Lsn,
    pub files: Vec<SnapshotFile>,
}

impl Manifest {
    pub fn new(dataset: &str, schema: &SchemaRef, covered_lsn: Lsn, files: Vec<SnapshotFile>) -> Self {
        let schema_ipc = base64::engine::general_purpose::STANDARD.encode(crate::wal::ipc::schema_message(schema));
        Self { version: 1, dataset: dataset.to_owned(), schema_ipc, covered_lsn, files }
    }

    pub fn schema(&self) -> std::result::Result<SchemaRef, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.schema_ipc).map_err(|e| e.to_string())?;
        let mut found = None;
        crate::wal::ipc::decode_payload(&arrow::buffer::Buffer::from_vec(bytes), None, |m| {
            if let crate::wal::ipc::Decoded::Schema(s) = m {
                found = Some(s);
            }
        })?;
        found.ok_or_else(|| "manifest holds no schema".to_owned())
    }
}

pub fn dataset_dir(root: &Path, dataset: &str) -> PathBuf {
    root.join(dataset)
}

/// Parquet compression for snapshot files. Chosen by measurement, see
/// `docs/benchmarks.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotCompression {
    None,
    #[default]
    Snappy,
    Zstd,
}

fn properties(compression: SnapshotCompression) -> WriterProperties {
    let c = match compression {
        SnapshotCompression::None => Compression::UNCOMPRESSED,
        SnapshotCompression::Snappy => Compression::SNAPPY,
        SnapshotCompression::Zstd => Compression::ZSTD(Default::default()),
    };
    WriterProperties::builder().set_compression(c).set_max_row_group_bytes(Some(64 << 20)).build()
}

/// Reads every manifest under `root` (blocking; at startup). Files in a
/// dataset directory that its manifest does not list are leftovers of an
/// interrupted snapshot and are deleted.
pub fn load_manifests(root: &Path) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("listing snapshot directory", root, 0)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("listing snapshot directory", root, 0))?;
        let dir = entry.path();
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading snapshot manifest", &path, 0)(e)),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("unreadable manifest: {e}"),
        })?;
        for f in std::fs::read_dir(&dir).map_err(Error::io("listing snapshot directory", &dir, 0))? {
            let f = f.map_err(Error::io("listing snapshot directory", &dir, 0))?;
            let name = f.file_name().to_string_lossy().into_owned();
            if name != MANIFEST_FILE && !m.files.iter().any(|x| x.name == name) {
                tracing::info!(file = %f.path().display(), "deleting snapshot file not in the manifest (interrupted snapshot)");
                let _ = std::fs::remove_file(f.path());
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Writes `batches` as one Parquet file `name` in `dir`, durably and
/// atomically. Encodes one batch at a time and yields in between, so the
/// shard keeps serving. Returns the bytes written.
pub async fn write_parquet(
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
    compression: SnapshotCompression,
) -> Result<u64> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let file =
        glommio::io::BufferedFile::create(&tmp).await.map_err(Error::glommio("creating snapshot file", &tmp, 0))?;
    let result = async {
        let mut writer =
            ArrowWriter::try_new(Vec::with_capacity(WRITE_CHUNK_BYTES), schema, Some(properties(compression)))
                .map_err(|e| Error::InvalidInput(format!("parquet writer: {e}")))?;
        let mut pos = 0u64;
        for batch in batches {
            writer.write(batch).map_err(|e| Error::InvalidInput(format!("encoding parquet: {e}")))?;
            if writer.inner().len() >= WRITE_CHUNK_BYTES {
                let chunk = std::mem::take(writer.inner_mut());
                pos += write_all(&file, chunk, pos, &tmp).await?;
            }
            glommio::yield_if_needed().await;
        }
        writer.finish().map_err(|e| Error::InvalidInput(format!("finishing parquet: {e}")))?;
        let chunk = std::mem::take(writer.inner_mut());
        pos += write_all(&file, chunk, pos, &tmp).await?;
        file.fdatasync().await.map_err(Error::glommio("fsyncing snapshot file", &tmp, 0))?;
        Ok::<u64, Error>(pos)
    }
    .await;
    let _ = file.close().await;
    match result {
        Ok(bytes) => {
            glommio::io::rename(&tmp, &path).await.map_err(Error::glommio("renaming snapshot file", &tmp, 0))?;
            crate::wal::sync_dir(dir).await?;
            Ok(bytes)
        }
        Err(e) => {
            let _ = glommio::io::remove(&tmp).await;
            Err(e)
        }
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

/// Replaces the manifest of `dir` atomically.
pub async fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let path = dir.join(MANIFEST_FILE);
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
    crate::wal::sync_dir(dir).await
}

/// Creates a dataset's snapshot directory (and makes its entry durable).
pub async fn create_dataset_dir(root: &Path, dataset: &str) -> Result<PathBuf> {
    let dir = dataset_dir(root, dataset);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(Error::io("creating snapshot directory", &dir, 0))?;
        crate::wal::sync_dir(root).await?;
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
    let manifest = dir.join(MANIFEST_FILE);
    if manifest.exists() {
        glommio::io::remove(&manifest).await.map_err(Error::glommio("removing snapshot manifest", &manifest, 0))?;
        crate::wal::sync_dir(&dir).await?;
    }
    std::fs::remove_dir_all(&dir).map_err(Error::io("removing snapshot directory", &dir, 0))?;
    crate::wal::sync_dir(root).await
}

/// Reads a snapshot file back (blocking; the gateway calls it off the async
/// threads).
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(Error::io("opening snapshot file", path, 0))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Corrupt { path: path.to_owned(), offset: 0, reason: format!("parquet: {e}") })?
        .build()
        .map_err(|e| Error::Corrupt { path: path.to_owned(), offset: 0, reason: format!("parquet: {e}") })?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: format!("parquet: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

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
                let file = SnapshotFile { name: "part-1.parquet".into(), rows: 1000, bytes, min_lsn: 1, max_lsn: 1 };
                write_manifest(&d, &Manifest::new("ds", &batch.schema(), 1, vec![file])).await.unwrap();
                let names: Vec<_> =
                    std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                assert_eq!(names.len(), 2, "{names:?}");
                assert_eq!(read_parquet(&d.join("part-1.parquet")).unwrap(), vec![batch.clone()]);
                let manifests = load_manifests(&root).unwrap();
                assert_eq!(manifests[0].schema().unwrap(), batch.schema());
                remove_dataset_dir(&root, "ds").await.unwrap();
                assert!(!d.exists());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
