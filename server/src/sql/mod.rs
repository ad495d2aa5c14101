//! SQL over datasets, with DataFusion: the planner behind Flight SQL
//! (`service.rs`), filtered DoGet tickets and parallel-read endpoints.
//!
//! # Layout
//! - [`SqlEngine`] (here): one DataFusion runtime for the process (the
//!   query memory pool, the object store the snapshot files are read
//!   through), and a fresh session per query whose catalog
//!   `longbow.public` holds one table per dataset.
//! - `table.rs`: the table provider, the union of a dataset's batches in
//!   memory and its snapshot Parquet files, from one view the shard takes.
//! - `cold.rs`: snapshot files' vector columns read by copying their
//!   float pages, for scans that read vectors and filter nothing.
//! - `remote.rs`: with several nodes, the catalog's schema, which finds a
//!   dataset another node owns at that node; its scans are DoGets there.
//! - `vector.rs`: `l2_distance`, `cosine_distance`, `inner_product`.
//! - `service.rs`: the Flight SQL commands (arrow-flight's `FlightSqlService`).
//! - `error.rs`: DataFusion errors as gRPC statuses.
//!
//! Queries run on their own tokio runtime (`longbow-query` threads), not the
//! gateway's, so a long scan never delays a DoPut acknowledgement. Their
//! results reach the transport through a two-batch channel: a client that
//! reads slowly slows its query, and one that goes away stops it (the plan
//! is dropped, and DataFusion aborts the tasks it spawned).

pub mod cold;
pub mod error;
pub mod remote;
pub mod service;
pub mod table;
pub mod vector;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool, TrackConsumersPool, UnboundedMemoryPool};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use longbow_engine::shard::request::ScanView;
use longbow_engine::Engine;
use object_store::ObjectStore;
use tonic::Status;

use crate::cluster::Peers;
use error::df_status;
use remote::ClusterSchema;
use table::{DatasetTable, Source};

/// The catalog and schema every dataset is a table of.
pub const CATALOG: &str = "longbow";
pub const SCHEMA: &str = "public";

/// Where the snapshot files' object store is registered in the runtime.
const SNAPSHOT_STORE_URL: &str = "longbow-snapshots://local/";

/// Consumers the memory pool names in its error when a query is over it.
const POOL_TOP_CONSUMERS: usize = 5;

#[derive(Clone)]
pub struct SqlEngine {
    engine: Engine,
    runtime: Arc<RuntimeEnv>,
    store_url: ObjectStoreUrl,
    partitions: usize,
    queries: Arc<QueryRuntime>,
    /// The other nodes: where the datasets this node does not own are.
    peers: Arc<Peers>,
}

impl SqlEngine {
    /// `query_memory_bytes` bounds what all running queries together hold
    /// in sorts, aggregations and joins (0: no bound); a query that needs
    /// more fails with RESOURCE_EXHAUSTED (nothing spills to disk).
    pub fn new(engine: Engine, query_memory_bytes: u64, peers: Arc<Peers>) -> Result<Self, Status> {
        // Local directory or bucket: the engine's own snapshot store.
        let store: Arc<dyn ObjectStore> = engine.snapshot_objects();
        Self::with_store(engine, query_memory_bytes, store, peers)
    }

    /// As [`SqlEngine::new`], reading snapshot files from `store` (their
    /// paths are `<dataset>/<file>` relative to its root).
    pub fn with_store(
        engine: Engine,
        query_memory_bytes: u64,
        store: Arc<dyn ObjectStore>,
        peers: Arc<Peers>,
    ) -> Result<Self, Status> {
        let pool: Arc<dyn MemoryPool> = if query_memory_bytes == 0 {
            Arc::new(UnboundedMemoryPool::default())
        } else {
            Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(query_memory_bytes as usize),
                std::num::NonZeroUsize::new(POOL_TOP_CONSUMERS).expect("nonzero"),
            ))
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(df_status)?;
        let store_url = ObjectStoreUrl::parse(SNAPSHOT_STORE_URL).map_err(df_status)?;
        runtime.register_object_store(store_url.as_ref(), store);
        let partitions = std::thread::available_parallelism().map_or(4, |n| n.get());
        let queries = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(partitions)
            .thread_name("longbow-query")
            .enable_all()
            .build()
            .map_err(|e| Status::internal(format!("starting the query runtime: {e}")))?;
        Ok(Self { engine, runtime, store_url, partitions, queries: Arc::new(QueryRuntime(Some(queries))), peers })
    }

    fn session(&self) -> SessionContext {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true)
            .with_target_partitions(self.partitions);
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        for f in vector::udfs() {
            ctx.register_udf(f);
        }
        ctx
    }

    fn table(&self, name: &str, schema: SchemaRef, source: Source) -> Arc<DatasetTable> {
        Arc::new(DatasetTable::new(self.engine.clone(), name.to_owned(), schema, self.store_url.clone(), source))
    }

    /// A session whose catalog holds every dataset this node owns as of
    /// now (each table takes its own view of the rows when the query is
    /// planned), and finds any other at its owner. `listed`: the other
    /// nodes' tables, for a query that lists tables.
    pub async fn context(&self, listed: HashMap<String, SchemaRef>) -> Result<SessionContext, Status> {
        let ctx = self.session();
        let local = self
            .owned()
            .await?
            .into_iter()
            .map(|d| {
                let table: Arc<dyn datafusion::datasource::TableProvider> =
                    self.table(&d.name, d.schema.clone(), Source::Live);
                (d.name, table)
            })
            .collect();
        let catalog = ctx.catalog(CATALOG).ok_or_else(|| Status::internal("the session has no catalog"))?;
        catalog
            .register_schema(SCHEMA, Arc::new(ClusterSchema::new(local, listed, self.peers.clone())))
            .map_err(df_status)?;
        Ok(ctx)
    }

    /// The datasets this node holds and owns (not those it holds only
    /// until their handover).
    async fn owned(&self) -> Result<Vec<longbow_engine::DatasetInfo>, Status> {
        let datasets = self.engine.list().await.map_err(crate::error::into_status)?;
        Ok(datasets.into_iter().filter(|d| self.peers.cluster.owns(&d.name)).collect())
    }

    /// Every node's datasets with their schemas: this node's own, and what
    /// each other node lists as its own.
    pub async fn tables(&self) -> Result<Vec<(String, SchemaRef)>, Status> {
        let mut out: Vec<(String, SchemaRef)> = self.owned().await?.into_iter().map(|d| (d.name, d.schema)).collect();
        out.extend(self.their_tables().await?);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// What each other node lists as its own, with the schemas.
    async fn their_tables(&self) -> Result<Vec<(String, SchemaRef)>, Status> {
        let cluster = &self.peers.cluster;
        let mut out = Vec::new();
        for (node, info) in self.peers.their_flights().await? {
            let Some(name) = info.flight_descriptor.as_ref().and_then(|d| d.path.first()).cloned() else { continue };
            // A dataset the node holds while handing it to its owner is
            // listed by the owner.
            if cluster.owner(&name) == node {
                let schema = info
                    .try_decode_schema()
                    .map_err(|e| Status::internal(format!("node {node} listed {name:?} with a bad schema: {e}")))?;
                out.push((name, Arc::new(schema)));
            }
        }
        Ok(out)
    }

    /// Plans a read-only SQL statement (no DDL, DML or `SET`). One that
    /// reads `information_schema` (`SHOW TABLES` and `SHOW COLUMNS` do)
    /// first asks every other node for its tables, so that it lists every
    /// node's; the others name their tables only when used.
    pub async fn plan(&self, sql: &str) -> Result<DataFrame, Status> {
        let listed = if !self.peers.cluster.peers.is_empty() && reads_information_schema(sql) {
            self.their_tables().await?.into_iter().collect()
        } else {
            HashMap::new()
        };
        let ctx = self.context(listed).await?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        ctx.sql_with_options(sql, options).await.map_err(df_status)
    }

    /// A DoGet ticket's query over one dataset: these columns (all if
    /// empty), rows where `filter` (a SQL boolean expression) holds, at
    /// most `limit`. `view` fixes the rows to an endpoint's part.
    pub async fn dataset_query(
        &self,
        dataset: &str,
        columns: &[String],
        filter: Option<&str>,
        limit: Option<usize>,
        view: Option<Arc<ScanView>>,
    ) -> Result<DataFrame, Status> {
        let ctx = self.session();
        let schema = match &view {
            Some(v) => v.schema.clone(),
            None => self.engine.info(dataset).await.map_err(crate::error::into_status)?.schema,
        };
        let source = view.map_or(Source::Live, Source::Fixed);
        ctx.register_table(TableReference::bare(dataset), self.table(dataset, schema, source)).map_err(df_status)?;
        let mut df = ctx.table(TableReference::bare(dataset)).await.map_err(df_status)?;
        if let Some(filter) = filter {
            let predicate = df.parse_sql_expr(filter).map_err(df_status)?;
            df = df.filter(predicate).map_err(df_status)?;
        }
        if !columns.is_empty() {
            let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            df = df.select_columns(&cols).map_err(df_status)?;
        }
        if limit.is_some() {
            df = df.limit(0, limit).map_err(df_status)?;
        }
        Ok(df)
    }
}

impl SqlEngine {
    /// The other node that should run `sql` in full: the one that owns
    /// every table the statement names, when there is one (its joins,
    /// aggregates and sorts then run there, and only the result crosses).
    /// `None` for a statement with no table, one that names tables of
    /// several nodes or of this one, one that reads `information_schema`,
    /// and one that does not parse (the planner here gives the error).
    pub fn runs_at(&self, sql: &str) -> Option<usize> {
        let cluster = &self.peers.cluster;
        if cluster.peers.is_empty() {
            return None;
        }
        let statements = datafusion::sql::parser::DFParser::parse_sql(sql).ok()?;
        let [statement] = statements.iter().collect::<Vec<_>>()[..] else { return None };
        let (tables, _) = datafusion::sql::resolve::resolve_table_references(statement, true).ok()?;
        let mut owner = None;
        for t in &tables {
            let ours = t.schema().is_none_or(|s| s == SCHEMA) && t.catalog().is_none_or(|c| c == CATALOG);
            if !ours {
                return None;
            }
            let n = cluster.owner(t.table());
            if *owner.get_or_insert(n) != n {
                return None;
            }
        }
        owner.filter(|&n| n != cluster.node)
    }
}

/// Whether `sql` reads `information_schema`: a table it names there, or a
/// `SHOW` that reads it. A statement that does not parse is left to the
/// planner, whose error the client gets.
fn reads_information_schema(sql: &str) -> bool {
    let Ok(statements) = datafusion::sql::parser::DFParser::parse_sql(sql) else { return false };
    statements.iter().any(|s| {
        datafusion::sql::resolve::resolve_table_references(s, true).is_ok_and(|(tables, _)| {
            tables.iter().any(|t| t.schema().is_some_and(|s| s.eq_ignore_ascii_case("information_schema")))
        })
    })
}

/// A query's output: its batches as the plan produces them.
pub type Batches = futures::stream::BoxStream<'static, datafusion::common::Result<arrow::array::RecordBatch>>;

/// Batches a running query may have ready ahead of its client.
const RESULT_AHEAD_BATCHES: usize = 2;

/// The runtime queries execute on, apart from the gateway's: a scan or sort
/// that keeps its threads busy delays no DoPut acknowledgement. Shut down
/// in the background when the last handle goes (dropping a runtime inside
/// another one's task would panic).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl SqlEngine {
    /// Runs a planned query on the query runtime: its output schema and its
    /// batches as they come. When the returned stream is dropped (the
    /// client went away), the plan is dropped at once, even in the middle
    /// of a sort, which stops its tasks.
    pub async fn execute(&self, df: DataFrame) -> Result<(SchemaRef, Batches), Status> {
        use futures::StreamExt;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let (tx, rx) = tokio::sync::mpsc::channel(RESULT_AHEAD_BATCHES);
        let rt = self.queries.0.as_ref().expect("query runtime");
        rt.spawn(async move {
            let mut stream = tokio::select! {
                s = df.execute_stream() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
                _ = tx.closed() => return,
            };
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tx.closed() => return,
                };
                let Some(batch) = next else { return };
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok((schema, tokio_stream::wrappers::ReceiverStream::new(rx).boxed()))
    }
}
