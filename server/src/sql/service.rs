//! The Flight SQL commands, on arrow-flight's `FlightSqlService`. The
//! gateway (`flight/mod.rs`) hands this service only what is Flight SQL
//! (CMD descriptors, protobuf `Any` tickets, Flight SQL action names); its
//! default answers for every command not implemented here are
//! UNIMPLEMENTED.
//!
//! Statements are stateless: a statement's ticket and a prepared
//! statement's handle carry the SQL text (and the bound parameters, as an
//! Arrow IPC stream), so no server state leaks when a client never closes
//! one, and any gateway can serve a ticket.

use std::sync::{Arc, LazyLock};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Command, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementIngest, CommandStatementQuery, DoPutPreparedStatementResult,
    DoPutUpdateResult, ProstMessageExt, SqlInfo, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use base64::Engine as _;
use datafusion::common::ScalarValue;
use datafusion::prelude::DataFrame;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use longbow_engine::Engine;
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Batches, SqlEngine, CATALOG, SCHEMA};
use crate::flight::do_put::{self, Acks, Admission, Input};

type DoGetStream = BoxStream<'static, Result<arrow_flight::FlightData, Status>>;

/// What GetSqlInfo answers.
static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Longbow");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32); // none
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().expect("static SqlInfo")
});

pub struct SqlService {
    sql: SqlEngine,
    engine: Engine,
    admission: Arc<Admission>,
}

impl SqlService {
    pub fn new(sql: SqlEngine, engine: Engine, admission: Arc<Admission>) -> Self {
        Self { sql, engine, admission }
    }
}

/// A prepared statement's handle: its SQL and, once bound, its parameters.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handle {
    sql: String,
    /// One row of parameters ($1 is column 0), as an Arrow IPC stream, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<String>,
}

impl Handle {
    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("handle serializes").into()
    }

    fn decode(b: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(b)
            .map_err(|e| Status::invalid_argument(format!("not a Longbow prepared statement handle: {e}")))
    }

    /// The bound parameters, `$1` first.
    fn params(&self) -> Result<Option<Vec<ScalarValue>>, Status> {
        let Some(p) = &self.params else { return Ok(None) };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .map_err(|e| Status::invalid_argument(format!("prepared statement parameters: {e}")))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Status::invalid_argument(format!("prepared statement parameters: {e}")))?;
        let batches: Vec<RecordBatch> = reader
            .collect::<Result<_, _>>()
            .map_err(|e| Status::invalid_argument(format!("prepared statement parameters: {e}")))?;
        let Some(batch) = batches.first() else { return Ok(None) };
        let values = batch
            .columns()
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(super::error::df_status)?;
        Ok(Some(values))
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(b) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("encoding schema: {e}")))?;
    Ok(b)
}

/// A result stream as FlightData; errors mid-stream end it with their status.
pub fn encode(schema: SchemaRef, stream: Batches) -> DoGetStream {
    let batches = stream.map_err(|e| FlightError::Tonic(Box::new(super::error::df_status(e))));
    FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from).boxed()
}

fn one_batch(schema: SchemaRef, batch: RecordBatch) -> DoGetStream {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from)
        .boxed()
}

fn info_for(schema: &Schema, descriptor: FlightDescriptor, ticket: Ticket) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor))
}

fn any_ticket(m: &impl ProstMessageExt) -> Ticket {
    Ticket { ticket: m.as_any().encode_to_vec().into() }
}

impl SqlService {
    /// A Flight SQL DoPut: bulk ingest or parameter binding; other commands
    /// (updates, Substrait plans) are UNIMPLEMENTED.
    pub async fn do_put(&self, cmd: Command, input: Input) -> Result<Acks, Status> {
        let app_metadata: bytes::Bytes = match cmd {
            Command::CommandStatementIngest(c) => {
                DoPutUpdateResult { record_count: self.ingest(c, input).await? }.encode_to_vec().into()
            }
            Command::CommandPreparedStatementQuery(c) => self.bind(c, input).await?.encode_to_vec().into(),
            other => {
                return Err(Status::unimplemented(format!(
                    "{} is not supported: Longbow is read-only over SQL (ingest with DoPut or \
                     CommandStatementIngest)",
                    other.type_url()
                )))
            }
        };
        Ok(futures::stream::iter([Ok(arrow_flight::PutResult { app_metadata })]).boxed())
    }

    /// Binds parameters to a prepared statement: the new handle carries them.
    async fn bind(
        &self,
        query: CommandPreparedStatementQuery,
        input: Input,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode(&query.prepared_statement_handle)?;
        let input = input.map_err(FlightError::from);
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(input);
        let mut rows: Vec<RecordBatch> = Vec::new();
        while let Some(b) = batches.next().await {
            let b = b.map_err(Status::from)?;
            if b.num_rows() > 0 {
                rows.push(b);
            }
        }
        let total: usize = rows.iter().map(RecordBatch::num_rows).sum();
        if total > 1 {
            return Err(Status::invalid_argument(format!(
                "bind one row of parameters per execution; {total} rows were sent"
            )));
        }
        handle.params = match rows.first() {
            None => None,
            Some(batch) => {
                let mut buf = Vec::new();
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
                    .map_err(|e| Status::internal(e.to_string()))?;
                w.write(batch).map_err(|e| Status::internal(e.to_string()))?;
                w.finish().map_err(|e| Status::internal(e.to_string()))?;
                drop(w);
                Some(base64::engine::general_purpose::STANDARD.encode(buf))
            }
        };
        // Checked now so that a bad binding fails here, not at DoGet.
        self.prepared(&handle.encode()).await?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.encode()) })
    }

    /// ADBC bulk ingest: appends through DoPut's durable path; answered
    /// once every batch is durable.
    async fn ingest(&self, cmd: CommandStatementIngest, input: Input) -> Result<i64, Status> {
        if cmd.temporary {
            return Err(Status::unimplemented("temporary tables are not supported"));
        }
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        for (given, ours) in [(&cmd.catalog, CATALOG), (&cmd.schema, SCHEMA)] {
            if let Some(g) = given.as_deref().filter(|g| !g.is_empty() && *g != ours) {
                return Err(Status::not_found(format!(
                    "no catalog or schema {g:?}: tables live in {CATALOG}.{SCHEMA}"
                )));
            }
        }
        let options = cmd.table_definition_options.unwrap_or_default();
        let exists = self.engine.info(&cmd.table).await.is_ok();
        match (exists, options.if_exists(), options.if_not_exist()) {
            (true, TableExistsOption::Fail | TableExistsOption::Unspecified, _) => {
                return Err(Status::already_exists(format!("table {:?} exists (ingest mode create)", cmd.table)))
            }
            (true, TableExistsOption::Replace, _) => {
                return Err(Status::unimplemented("replacing a table on ingest is not supported; drop it first"))
            }
            (false, _, TableNotExistOption::Fail) => {
                return Err(Status::not_found(format!("table {:?} does not exist (ingest mode append)", cmd.table)))
            }
            _ => {}
        }
        do_put::ingest(self.engine.clone(), self.admission.clone(), cmd.table, input).await
    }

    async fn prepared(&self, handle: &[u8]) -> Result<DataFrame, Status> {
        let h = Handle::decode(handle)?;
        let df = self.sql.plan(&h.sql).await?;
        match h.params()? {
            Some(values) => df.with_param_values(values).map_err(super::error::df_status),
            None => Ok(df),
        }
    }

    fn table_types_batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("table_type", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["TABLE"]))])
            .expect("table types batch");
        (schema, batch)
    }
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self.sql.plan(&query.query).await?;
        let schema = df.schema().as_arrow().clone();
        let ticket = any_ticket(&TicketStatementQuery { statement_handle: query.query.into_bytes().into() });
        Ok(Response::new(info_for(&schema, request.into_inner(), ticket)?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("statement handle is not UTF-8 SQL"))?;
        let (schema, stream) = self.sql.execute(self.sql.plan(sql).await?).await?;
        Ok(Response::new(encode(schema, stream)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let df = self.sql.plan(&query.query).await?;
        let plan = df.logical_plan();
        let mut params: Vec<(usize, Field)> = plan
            .get_parameter_fields()
            .map_err(super::error::df_status)?
            .into_iter()
            .map(|(name, field)| {
                let index = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
                let field = field
                    .map_or_else(|| Field::new(&name, DataType::Null, true), |f| f.as_ref().clone().with_name(&name));
                (index, field)
            })
            .collect();
        params.sort_by_key(|(i, _)| *i);
        let parameter_schema = Schema::new(params.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle { sql: query.query, params: None }.encode(),
            dataset_schema: schema_bytes(df.schema().as_arrow())?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Ok(()) // handles hold no server state
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self.prepared(&cmd.prepared_statement_handle).await?;
        let schema = df.schema().as_arrow().clone();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&cmd))?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (schema, stream) = self.sql.execute(self.prepared(&cmd.prepared_statement_handle).await?).await?;
        Ok(Response::new(encode(schema, stream)))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&query))?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build().map_err(Status::from)?)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&query))?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build().map_err(Status::from)?)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&query))?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let tables = self.sql.tables().await?;
        let mut b = query.into_builder();
        for (name, schema) in &tables {
            b.append(CATALOG, SCHEMA, name, "TABLE", schema).map_err(Status::from)?;
        }
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build().map_err(Status::from)?)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = Self::table_types_batch();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&query))?))
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (schema, batch) = Self::table_types_batch();
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        Ok(Response::new(info_for(&schema, request.into_inner(), any_ticket(&query))?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&SQL_INFO);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build().map_err(Status::from)?)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The SQL of a statement's or a prepared statement's ticket.
pub fn ticket_sql(ticket: &[u8]) -> Option<String> {
    let any = arrow_flight::sql::Any::decode(ticket).ok()?;
    match arrow_flight::sql::Command::try_from(any).ok()? {
        arrow_flight::sql::Command::TicketStatementQuery(t) => String::from_utf8(t.statement_handle.to_vec()).ok(),
        arrow_flight::sql::Command::CommandPreparedStatementQuery(c) => {
            Handle::decode(&c.prepared_statement_handle).ok().map(|h| h.sql)
        }
        _ => None,
    }
}

/// Whether a ticket is a Flight SQL one: a protobuf `Any` of a Flight SQL
/// message (Longbow's own tickets are JSON or a dataset name, which never
/// start with a protobuf field tag).
pub fn is_sql_ticket(ticket: &[u8]) -> bool {
    ticket.first() != Some(&b'{')
        && arrow_flight::sql::Any::decode(ticket).is_ok_and(|a| a.type_url.starts_with(SQL_TYPE_URL_PREFIX))
}

/// The type URL of every Flight SQL message.
pub const SQL_TYPE_URL_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// Flight SQL's action names (those arrow-flight's service dispatches).
pub const SQL_ACTIONS: &[&str] = &[
    "CreatePreparedStatement",
    "ClosePreparedStatement",
    "CreatePreparedSubstraitPlan",
    "BeginTransaction",
    "EndTransaction",
    "BeginSavepoint",
    "EndSavepoint",
    "CancelQuery",
];

/// The Flight SQL actions ListActions names (the ones that work).
pub const LISTED_SQL_ACTIONS: &[(&str, &str)] = &[
    ("CreatePreparedStatement", "Flight SQL: prepare a statement (ActionCreatePreparedStatementRequest)"),
    ("ClosePreparedStatement", "Flight SQL: close a prepared statement (ActionClosePreparedStatementRequest)"),
];
