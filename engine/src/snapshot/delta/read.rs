//! Reading snapshot files back: ranged reads a row group at a time, cast
//! from the types Delta stores to the dataset's Arrow schema.

use super::*;

/// The Arrow schema of the Parquet files for a dataset of `schema`: list
/// types as Delta has them (`FixedSizeList`, `LargeList` become `List`),
/// so that readers comparing a file's schema with the table's (Polars)
/// accept it. Longbow casts back when it reads ([`read_objects`]).
pub fn file_schema(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    fn delta_type(t: &DataType) -> DataType {
        match t {
            DataType::FixedSizeList(f, _) | DataType::LargeList(f) | DataType::List(f) => {
                DataType::List(Arc::new(Field::new(f.name(), delta_type(f.data_type()), f.is_nullable())))
            }
            DataType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| Arc::new(Field::new(f.name(), delta_type(f.data_type()), f.is_nullable())))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable()).with_metadata(f.metadata().clone()))
        .collect();
    let target = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    if target.fields() == schema.fields() {
        schema.clone()
    } else {
        target
    }
}

/// `batch` with the columns cast to `schema`'s types where they differ.
pub(super) fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The rows of `objects`, in order, read a row group at a time with ranged
/// reads (a footer read, then each row group's column chunks), as batches
/// of `schema` (the dataset's).
pub fn read_objects(
    objects: Vec<SnapshotObject>,
    schema: SchemaRef,
) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
    futures::stream::iter(objects)
        .then(move |o| {
            let schema = schema.clone();
            async move {
                #[allow(deprecated)]
                let reader = ParquetObjectReader::new(o.store.clone(), o.path.clone()).with_file_size(o.bytes);
                let stream = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(parquet_err("opening", &o.path))?
                    .with_batch_size(READ_BATCH_ROWS)
                    .build()
                    .map_err(parquet_err("reading", &o.path))?;
                let path = o.path.clone();
                let schema = schema.clone();
                Ok::<_, Error>(stream.map(move |b| {
                    let b = b.map_err(|e| Error::Corrupt {
                        path: PathBuf::from(path.as_ref()),
                        offset: 0,
                        reason: format!("parquet: {e}"),
                    })?;
                    conform(b, &schema)
                }))
            }
        })
        .try_flatten()
}
