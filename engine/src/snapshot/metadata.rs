//! What a snapshot commit records besides its files ([`Manifest`], the
//! `longbow` entry of a Delta commit's `commitInfo`) and how snapshot files
//! are encoded ([`SnapshotCompression`], the Parquet writer's settings).

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use base64::Engine as _;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::dataset::{ProducerSeqs, SnapshotFile};
use crate::wal::Lsn;

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
    /// The node that committed it (absent before several nodes could write
    /// one table): `covered_lsn` is in that node's LSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Manifest {
    pub fn new(dataset: &str, schema: &SchemaRef, covered_lsn: Lsn, files: Vec<SnapshotFile>) -> Self {
        let schema_ipc = base64::engine::general_purpose::STANDARD.encode(crate::wal::ipc::schema_message(schema));
        Self {
            version: 1,
            dataset: dataset.to_owned(),
            schema_ipc,
            covered_lsn,
            files,
            producers: BTreeMap::new(),
            node: None,
        }
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

/// A snapshot file's key-value metadata naming (as a JSON array) the
/// `FixedSizeList<Float32>` columns whose every row is a full list of
/// non-null floats in this file: a reader may copy their PLAIN float pages
/// and skip the repetition and definition levels, which say nothing there.
pub const FULL_FLOAT_LISTS_KEY: &str = "longbow.full_float_lists";

/// The columns of `schema` that may be named under [`FULL_FLOAT_LISTS_KEY`].
pub fn float_list_columns(schema: &arrow::datatypes::Schema) -> Vec<usize> {
    use arrow::datatypes::DataType;
    (0..schema.fields().len())
        .filter(|&i| {
            matches!(schema.field(i).data_type(), DataType::FixedSizeList(f, n) if *f.data_type() == DataType::Float32 && *n > 0)
        })
        .collect()
}

/// Whether column `i` of `batch` (a `FixedSizeList<Float32>`) has no null
/// list and no null item.
pub fn full_float_list(batch: &arrow::array::RecordBatch, i: usize) -> bool {
    use arrow::array::{Array, AsArray};
    let c = batch.column(i);
    c.null_count() == 0 && c.as_fixed_size_list_opt().is_some_and(|l| l.values().null_count() == 0)
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
