//! Datasets other nodes own, in this node's SQL catalog. A query names
//! tables by dataset; [`ClusterSchema`] resolves each name when the query
//! is planned: a dataset this node owns is its [`DatasetTable`], one another
//! node owns is a [`RemoteTable`] whose schema comes from the owner
//! (GetSchema, one call per table the query names, to that owner only).
//!
//! A remote table's scan is one DoGet on the owner with a query ticket
//! (`{"dataset", "columns", "filter", "limit"}`): the owner runs the
//! projection, the filters it can read back as SQL and the limit through
//! its own planner, over its rows in memory and its snapshot files, and
//! streams back only what is left. Joins, aggregates and sorts run here.
//! The owner serves the call itself (it is marked forwarded), so LONGBOW_PEERS
//! that differ between nodes fail it instead of sending it around.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::error::FlightError;
use arrow_flight::FlightDescriptor;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, Result as DfResult};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use crate::cluster::{peer_status, Peers};
use crate::flight::ticket::{ticket_of, TicketBody};

/// The schema `longbow.public` of a node with peers: the tables this node
/// owns, and any other dataset, looked up at its owner when a query names it.
/// For a query that reads `information_schema` (or a `SHOW`), the other
/// nodes' tables as they listed them, so it lists every node's.
pub struct ClusterSchema {
    local: HashMap<String, Arc<dyn TableProvider>>,
    listed: HashMap<String, SchemaRef>,
    peers: Arc<Peers>,
}

impl std::fmt::Debug for ClusterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSchema").field("local", &self.local.keys()).finish_non_exhaustive()
    }
}

impl ClusterSchema {
    /// `listed`: other nodes' tables with their schemas, where the query
    /// needs the list (empty otherwise: a table is looked up when named).
    pub fn new(
        local: HashMap<String, Arc<dyn TableProvider>>,
        listed: HashMap<String, SchemaRef>,
        peers: Arc<Peers>,
    ) -> Self {
        Self { local, listed, peers }
    }

    fn remote(&self, name: &str, schema: SchemaRef) -> Arc<dyn TableProvider> {
        let owner = self.peers.cluster.owner(name);
        Arc::new(RemoteTable { name: name.to_owned(), schema, owner, peers: self.peers.clone() })
    }
}

#[async_trait::async_trait]
impl SchemaProvider for ClusterSchema {
    /// The tables this node owns, and the other nodes' where the query
    /// lists tables (`information_schema`).
    fn table_names(&self) -> Vec<String> {
        self.local.keys().chain(self.listed.keys()).cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.local.get(name) {
            return Ok(Some(t.clone()));
        }
        if let Some(schema) = self.listed.get(name) {
            return Ok(Some(self.remote(name, schema.clone())));
        }
        let owner = self.peers.cluster.owner(name);
        let Some(mut client) = self.peers.client(owner) else { return Ok(None) };
        let descriptor = FlightDescriptor::new_path(vec![name.to_owned()]);
        let schema = match client.get_schema(self.peers.forward(descriptor)).await {
            Ok(r) => Schema::try_from(&r.into_inner())?,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
            Err(e) => return Err(remote_error(owner, e)),
        };
        Ok(Some(self.remote(name, Arc::new(schema))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.local.contains_key(name) || self.listed.contains_key(name)
    }
}

/// A dataset another node owns.
pub struct RemoteTable {
    name: String,
    schema: SchemaRef,
    owner: usize,
    peers: Arc<Peers>,
}

impl std::fmt::Debug for RemoteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTable").field("name", &self.name).field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// `expr` as SQL the owner's planner reads back against the dataset alone:
/// its columns unqualified. `None` where the unparser has no SQL for it.
fn filter_sql(expr: &Expr) -> Option<String> {
    let unqualified = expr
        .clone()
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => {
                Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name))))
            }
            other => Ok(Transformed::no(other)),
        })
        .ok()?
        .data;
    datafusion::sql::unparser::expr_to_sql(&unqualified).ok().map(|sql| sql.to_string())
}

#[async_trait::async_trait]
impl TableProvider for RemoteTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Inexact: the owner filters what it sends, and DataFusion filters
    /// again here; a filter with no SQL form is applied here only.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match filter_sql(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projected = datafusion::physical_plan::project_schema(&self.schema, projection)?;
        // No columns (count(*)): the owner sends the first, and only the
        // row counts are kept.
        let columns: Vec<String> = match projection {
            Some(p) if p.is_empty() => vec![self.schema.field(0).name().clone()],
            Some(p) => p.iter().map(|&i| self.schema.field(i).name().clone()).collect(),
            None => self.schema.fields().iter().map(|f| f.name().clone()).collect(),
        };
        let filters: Vec<String> = filters.iter().filter_map(filter_sql).map(|f| format!("({f})")).collect();
        let body = TicketBody {
            dataset: self.name.clone(),
            columns,
            filter: (!filters.is_empty()).then(|| filters.join(" AND ")),
            limit,
            ..Default::default()
        };
        let part = RemotePart { schema: projected.clone(), body, owner: self.owner, peers: self.peers.clone() };
        Ok(Arc::new(StreamingTableExec::try_new(projected, vec![Arc::new(part)], None, [], false, None)?))
    }
}

/// The one partition of a remote scan: the owner's DoGet stream.
struct RemotePart {
    /// What the query expects (the projection).
    schema: SchemaRef,
    body: TicketBody,
    owner: usize,
    peers: Arc<Peers>,
}

impl std::fmt::Debug for RemotePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePart").field("ticket", &self.body).field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// An owner's refusal inside DataFusion, its gRPC code kept (see
/// [`super::error::df_status`]).
fn remote_error(owner: usize, e: Status) -> DataFusionError {
    DataFusionError::External(Box::new(peer_status(owner, e)))
}

fn flight_error(owner: usize, e: FlightError) -> DataFusionError {
    match e {
        FlightError::Tonic(s) => remote_error(owner, *s),
        FlightError::Arrow(e) => DataFusionError::ArrowError(Box::new(e), None),
        other => DataFusionError::External(Box::new(other)),
    }
}

/// `batch` as `schema`'s columns: the owner's names and types must match;
/// with no columns expected, only its row count is kept.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    if schema.fields().is_empty() {
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        return Ok(RecordBatch::try_new_with_options(schema.clone(), vec![], &options)?);
    }
    Ok(RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?)
}

impl PartitionStream for RemotePart {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (owner, schema) = (self.owner, self.schema.clone());
        let client = self.peers.client(owner);
        let request = self.peers.forward(ticket_of(&self.body));
        let expected = schema.clone();
        let batches = futures::stream::once(async move {
            let mut client = client.ok_or_else(|| DataFusionError::Internal("a remote table of this node".into()))?;
            let flight = client.do_get(request).await.map_err(|e| remote_error(owner, e))?.into_inner();
            let flight = flight.map_err(FlightError::from);
            let batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight)
                .map(move |b| b.map_err(|e| flight_error(owner, e)).and_then(|b| conform(b, &expected)));
            Ok::<_, DataFusionError>(batches)
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(schema, batches.boxed()))
    }
}
