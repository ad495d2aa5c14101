//! The snapshot files' vector columns read without their levels.
//!
//! arrow-rs decodes a Parquet list column level by level: every float of a
//! `FixedSizeList<Float32>` vector costs a repetition level, a definition
//! level and a validity bit, about 7 ns a float here, so the evicted rows
//! of a k-NN query cost 30 times what their bytes would (docs/benchmarks.md).
//! A snapshot file names under [`FULL_FLOAT_LISTS_KEY`] the vector columns
//! whose every row in it is a full list of non-null floats. There the
//! levels say nothing: this scan copies the column's PLAIN (or
//! byte-stream-split) float pages into one buffer and makes the vectors of
//! it, and reads the other columns with arrow-rs as usual, a row group at a
//! time. A file without the key goes the general way (`table.rs`).

use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::{StreamExt, TryStreamExt};
use longbow_engine::snapshot::FULL_FLOAT_LISTS_KEY;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
#[allow(deprecated)] // as the engine's reads (engine/src/snapshot/delta/read.rs)
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::basic::Encoding;
use parquet::column::page::{Page, PageReader};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

/// One snapshot file opened for this scan.
#[derive(Debug)]
pub struct ColdFile {
    path: ObjectPath,
    bytes: u64,
    meta: ArrowReaderMetadata,
}

impl ColdFile {
    /// Reads `path`'s footer; `None` unless every column of `vectors` (the
    /// dataset's `FixedSizeList<Float32>` columns a query reads) is named
    /// full in it.
    pub async fn open(
        store: &Arc<dyn ObjectStore>,
        path: &str,
        bytes: u64,
        vectors: &[&str],
    ) -> DfResult<Option<Self>> {
        let path = ObjectPath::from(path);
        #[allow(deprecated)]
        let mut reader = ParquetObjectReader::new(store.clone(), path.clone()).with_file_size(bytes);
        let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
        let full: Vec<String> = meta
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == FULL_FLOAT_LISTS_KEY))
            .and_then(|k| k.value.as_deref())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let all = vectors.iter().all(|v| full.iter().any(|f| f == v));
        Ok(all.then_some(Self { path, bytes, meta }))
    }

    pub fn row_groups(&self) -> usize {
        self.meta.metadata().num_row_groups()
    }
}

/// What every part of one scan reads.
#[derive(Debug)]
pub struct ColdScan {
    /// The dataset's schema, and its `FixedSizeList<Float32>` columns
    /// (`float_list_columns`).
    pub dataset: SchemaRef,
    pub vectors: Vec<usize>,
    /// The columns the query reads, in order, and the schema of the
    /// batches: `dataset` projected.
    pub projection: Vec<usize>,
    pub projected: SchemaRef,
    pub store: Arc<dyn ObjectStore>,
}

/// A part of a scan: row groups of files, read in order.
#[derive(Debug)]
pub struct ColdPart {
    pub scan: Arc<ColdScan>,
    pub units: Vec<(Arc<ColdFile>, usize)>,
}

impl PartitionStream for ColdPart {
    fn schema(&self) -> &SchemaRef {
        &self.scan.projected
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let scan = self.scan.clone();
        let batches = futures::stream::iter(self.units.clone()).then(move |(file, rg)| {
            let scan = scan.clone();
            async move { scan.row_group(&file, rg).await }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.scan.projected.clone(), batches.boxed()))
    }
}

impl ColdScan {
    /// One row group of `file` as a batch of `projected`: vector columns
    /// from their pages, the others through arrow-rs.
    async fn row_group(&self, file: &ColdFile, rg: usize) -> DfResult<RecordBatch> {
        let (store, schema, projection) = (&self.store, &self.dataset, &self.projection);
        let metadata = file.meta.metadata();
        let rows = metadata.row_group(rg).num_rows() as usize;
        let is_vector = |i: usize| self.vectors.contains(&i);
        let others: Vec<usize> = projection.iter().copied().filter(|&i| !is_vector(i)).collect();
        let mut plain: Vec<ArrayRef> = Vec::new();
        if !others.is_empty() {
            #[allow(deprecated)]
            let reader = ParquetObjectReader::new(store.clone(), file.path.clone()).with_file_size(file.bytes);
            let mask = ProjectionMask::roots(metadata.file_metadata().schema_descr(), others.iter().copied());
            let batches: Vec<RecordBatch> =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.meta.clone())
                    .with_projection(mask)
                    .with_row_groups(vec![rg])
                    .with_batch_size(rows.max(1))
                    .build()?
                    .try_collect()
                    .await?;
            if let Some(first) = batches.first() {
                plain = arrow::compute::concat_batches(&first.schema(), &batches)?.columns().to_vec();
            }
        }
        let mut plain = plain.into_iter();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(projection.len());
        for &i in projection {
            if !is_vector(i) {
                let c = plain
                    .next()
                    .ok_or_else(|| DataFusionError::Internal("a column missing from a row group".into()))?;
                // Cast back from the file's types (a list in the file for any
                // other fixed-size list) to the dataset's.
                columns.push(arrow::compute::cast(&c, schema.field(i).data_type())?);
                continue;
            }
            let DataType::FixedSizeList(item, dim) = schema.field(i).data_type() else { unreachable!() };
            let name = schema.field(i).name();
            let leaf = metadata
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.path().parts().first() == Some(name))
                .ok_or_else(|| DataFusionError::Internal(format!("no leaf column for {name:?}")))?;
            let chunk = metadata.row_group(rg).column(leaf);
            let (start, len) = chunk.byte_range();
            let bytes = store.get_range(&file.path, start..start + len).await?;
            let values =
                floats(Arc::new(At { start, bytes, file_len: file.bytes }), chunk, rows, rows * *dim as usize)?;
            let list = FixedSizeListArray::try_new(item.clone(), *dim, Arc::new(Float32Array::from(values)), None)?;
            columns.push(Arc::new(list));
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(self.projected.clone(), columns, &options)?)
    }
}

/// The floats of one column chunk's data pages, `expected` of them.
fn floats(
    chunk_bytes: Arc<At>,
    chunk: &parquet::file::metadata::ColumnChunkMetaData,
    rows: usize,
    expected: usize,
) -> DfResult<Vec<f32>> {
    let bad = |what: String| DataFusionError::Execution(format!("snapshot vector column: {what}"));
    let mut out: Vec<f32> = Vec::with_capacity(expected);
    let mut pages = SerializedPageReader::new(chunk_bytes, chunk, rows, None)?;
    while let Some(page) = pages.get_next_page()? {
        let (buf, values, encoding) = match page {
            Page::DataPage { buf, num_values, encoding, def_level_encoding, rep_level_encoding, .. } => {
                if def_level_encoding != Encoding::RLE || rep_level_encoding != Encoding::RLE {
                    return Err(bad(format!("levels encoded {rep_level_encoding:?}/{def_level_encoding:?}")));
                }
                // Repetition levels, then definition levels, each behind
                // its 4-byte length.
                let mut at = 0usize;
                for _ in 0..2 {
                    let n = buf.get(at..at + 4).ok_or_else(|| bad("a page shorter than its levels".into()))?;
                    at += 4 + u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
                }
                (buf.slice(at.min(buf.len())..), num_values as usize, encoding)
            }
            Page::DataPageV2 {
                buf, num_values, encoding, num_nulls, def_levels_byte_len, rep_levels_byte_len, ..
            } => {
                if num_nulls != 0 {
                    return Err(bad("a page with nulls".into()));
                }
                let at = (def_levels_byte_len + rep_levels_byte_len) as usize;
                (buf.slice(at.min(buf.len())..), num_values as usize, encoding)
            }
            Page::DictionaryPage { .. } => return Err(bad("a dictionary page".into())),
        };
        if buf.len() != values * 4 {
            return Err(bad(format!("{} bytes of values for {values} floats", buf.len())));
        }
        match encoding {
            Encoding::PLAIN => {
                out.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))))
            }
            Encoding::BYTE_STREAM_SPLIT => {
                let (b0, rest) = buf.split_at(values);
                let (b1, rest) = rest.split_at(values);
                let (b2, b3) = rest.split_at(values);
                out.extend((0..values).map(|k| f32::from_le_bytes([b0[k], b1[k], b2[k], b3[k]])));
            }
            other => return Err(bad(format!("floats encoded {other:?}"))),
        }
    }
    if out.len() != expected {
        return Err(bad(format!("{} floats for {expected}", out.len())));
    }
    Ok(out)
}

/// A column chunk's bytes as the file's: offsets are the file's.
struct At {
    start: u64,
    bytes: Bytes,
    file_len: u64,
}

impl Length for At {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for At {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        Ok(self.get_bytes(start, (self.start + self.bytes.len() as u64 - start) as usize)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.start).map(|f| f as usize);
        match from {
            Some(f) if f + length <= self.bytes.len() => Ok(self.bytes.slice(f..f + length)),
            _ => Err(parquet::errors::ParquetError::General(format!(
                "read of {length} bytes at {start} outside the column chunk at {} ({} bytes)",
                self.start,
                self.bytes.len()
            ))),
        }
    }
}
