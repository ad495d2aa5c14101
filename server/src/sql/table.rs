//! A dataset as a DataFusion table: the union of its batches in memory and
//! the Parquet files holding its evicted rows, both from one consistent
//! view the shard takes when the query is planned ([`ScanView`]).
//!
//! The cold part reads through an [`ObjectStore`] and a list of file paths,
//! not the local directory: today a `LocalFileSystem` rooted at the
//! snapshot directory and the files the manifest lists, later a Delta
//! table's files on S3, with no change here.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use longbow_engine::shard::request::{ScanFile, ScanRequest, ScanView};
use longbow_engine::Engine;

use super::cold::{ColdFile, ColdPart, ColdScan};
use super::error::engine_error;

/// In-memory batches one scan takes from the shard (all of them: a query
/// sees the whole dataset; the batches are `Arc`ed, not copied).
const SCAN_BATCHES_MAX: usize = usize::MAX;

/// `items` dealt round-robin into at most `n` groups (at least one), so
/// that a scan's partitions get even shares.
fn round_robin<T>(items: impl IntoIterator<Item = T>, n: usize, len: usize) -> Vec<Vec<T>> {
    let n = n.max(1).min(len.max(1));
    let mut groups: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % n].push(item);
    }
    groups
}

/// What a table's rows are read from: the shard's view, or a fixed part of
/// it (a DoGet endpoint's LSN range).
#[derive(Debug, Clone)]
pub enum Source {
    /// A fresh view of the whole dataset at each scan.
    Live,
    /// A view already taken (one endpoint of a parallel read).
    Fixed(Arc<ScanView>),
}

pub struct DatasetTable {
    engine: Engine,
    name: String,
    schema: SchemaRef,
    /// Where `ScanFile::path`s resolve (registered in the runtime).
    store_url: ObjectStoreUrl,
    source: Source,
}

impl std::fmt::Debug for DatasetTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetTable").field("name", &self.name).field("source", &self.source).finish_non_exhaustive()
    }
}

impl DatasetTable {
    pub fn new(engine: Engine, name: String, schema: SchemaRef, store_url: ObjectStoreUrl, source: Source) -> Self {
        Self { engine, name, schema, store_url, source }
    }

    async fn view(&self) -> DfResult<Arc<ScanView>> {
        match &self.source {
            Source::Fixed(v) => Ok(v.clone()),
            Source::Live => {
                let req =
                    ScanRequest { after_lsn: longbow_engine::Lsn::ZERO, max_batches: SCAN_BATCHES_MAX, wait: false };
                let view = self.engine.view(&self.name, req).await.map_err(engine_error)?;
                Ok(Arc::new(view))
            }
        }
    }

    /// Parquet scan of `files` spread over `partitions` groups, with the
    /// filters as a pruning predicate (row-group statistics, page index).
    fn cold_plan(
        &self,
        state: &dyn Session,
        files: &[ScanFile],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let groups = round_robin(
            files.iter().map(|f| PartitionedFile::new(f.path.clone(), f.bytes)),
            state.config().target_partitions(),
            files.len(),
        );
        let mut source = ParquetSource::new(self.schema.clone());
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The files' scan when the query reads vector columns and filters
    /// nothing (a k-NN): their float pages copied, not decoded level by
    /// level (`cold.rs`), row groups spread over the partitions. `None`
    /// where a file does not name the columns full, or with filters, which
    /// the general scan prunes row groups by.
    async fn vector_plan(
        &self,
        state: &dyn Session,
        files: &[ScanFile],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let projection: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let floats = longbow_engine::snapshot::float_list_columns(&self.schema);
        let vectors: Vec<&str> =
            projection.iter().filter(|i| floats.contains(i)).map(|&i| self.schema.field(i).name().as_str()).collect();
        if vectors.is_empty() || !filters.is_empty() {
            return Ok(None);
        }
        let store = state.runtime_env().object_store(&self.store_url)?;
        let mut units = Vec::new();
        for f in files {
            let Some(file) = ColdFile::open(&store, &f.path, f.bytes, &vectors).await? else { return Ok(None) };
            let file = Arc::new(file);
            units.extend((0..file.row_groups()).map(|rg| (file.clone(), rg)));
        }
        let projected = Arc::new(self.schema.project(&projection)?);
        let scan = Arc::new(ColdScan {
            dataset: self.schema.clone(),
            vectors: floats,
            projection,
            projected: projected.clone(),
            store,
        });
        let len = units.len();
        let parts: Vec<Arc<dyn PartitionStream>> = round_robin(units, state.config().target_partitions(), len)
            .into_iter()
            .map(|units| Arc::new(ColdPart { scan: scan.clone(), units }) as _)
            .collect();
        Ok(Some(Arc::new(StreamingTableExec::try_new(projected, parts, None, [], false, limit)?)))
    }
}

/// One partition of the batches in memory. Its stream yields to the
/// runtime after every batch: a plan whose client went away is dropped
/// between two batches even when each takes long to process (the tokio
/// budget DataFusion's own scans draw on yields only every 128).
#[derive(Debug)]
struct HotPartition {
    schema: SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
}

impl PartitionStream for HotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.clone();
        let stream = futures::stream::iter(batches).then(|b| async move {
            tokio::task::yield_now().await;
            Ok(b)
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

#[async_trait::async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Inexact: row groups are pruned by statistics, rows are filtered by
    /// the FilterExec DataFusion keeps above the scan.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let view = self.view().await?;
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let hot_rows: usize = view.batches.iter().map(|(_, b)| b.num_rows()).sum();
        if !view.batches.is_empty() {
            // Round-robin over the target partitions so the scan runs on
            // several cores.
            let batches = view.batches.iter().map(|(_, b)| b.clone());
            let partitions: Vec<Arc<dyn PartitionStream>> =
                round_robin(batches, state.config().target_partitions(), view.batches.len())
                    .into_iter()
                    .map(|batches| Arc::new(HotPartition { schema: self.schema.clone(), batches }) as _)
                    .collect();
            let hot = StreamingTableExec::try_new(self.schema.clone(), partitions, projection, [], false, limit)?;
            parts.push(Arc::new(hot));
        }
        // A limit the rows in memory already meet needs no file (the
        // limit is only pushed here when no filter remains above).
        let cold_needed = limit.is_none_or(|l| hot_rows < l);
        if !view.files.is_empty() && cold_needed {
            let plan = match self.vector_plan(state, &view.files, projection, filters, limit).await? {
                Some(plan) => plan,
                None => self.cold_plan(state, &view.files, projection, filters, limit)?,
            };
            parts.push(plan);
        }
        if parts.is_empty() {
            let projected = datafusion::physical_plan::project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(parts)
    }
}
