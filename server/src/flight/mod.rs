//! The Flight service. It only turns FlightData into batches and back;
//! everything about datasets is the engine's.

pub mod do_get;
pub mod do_put;
pub mod ticket;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use longbow_engine::shard::request::ShardStats;
use longbow_engine::{DatasetInfo, Engine};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{peer_status, Peers};
use crate::error::into_status;
use crate::metrics::GatewayMetrics;
use crate::sql::service::{is_sql_ticket, ticket_sql, SqlService, SQL_ACTIONS};
use crate::sql::SqlEngine;
use arrow_flight::flight_descriptor::DescriptorType;
use ticket::{dataset_from_descriptor, read_from_ticket, ticket_for, Read};

type Stream<T> = BoxStream<'static, Result<T, Status>>;

pub struct LongbowFlight {
    engine: Engine,
    metrics: GatewayMetrics,
    admission: std::sync::Arc<do_put::Admission>,
    /// The budget of the batches this node proxies to their owners: apart
    /// from `admission`, so that nodes never wait on each other's budgets.
    forwarding: std::sync::Arc<do_put::Admission>,
    /// Flight SQL: what arrives as a CMD descriptor, a protobuf ticket or
    /// a Flight SQL action goes there.
    sql: SqlService,
    planner: SqlEngine,
    /// The other nodes, and which owns a dataset.
    peers: std::sync::Arc<Peers>,
}

impl LongbowFlight {
    /// Also starts refreshing `metrics`' storage gauges from `engine`.
    /// `admission` is the budget of the batches this node stores,
    /// `forwarding` that of the batches it proxies to their owners.
    pub fn new(
        engine: Engine,
        metrics: GatewayMetrics,
        admission: std::sync::Arc<do_put::Admission>,
        forwarding: std::sync::Arc<do_put::Admission>,
        planner: SqlEngine,
        peers: std::sync::Arc<Peers>,
    ) -> Self {
        let (stored, proxied) = (admission.clone(), forwarding.clone());
        metrics.watch(engine.clone(), move || (stored.in_flight_bytes(), proxied.in_flight_bytes()));
        let sql = SqlService::new(planner.clone(), engine.clone(), admission.clone());
        Self { engine, metrics, admission, forwarding, sql, planner, peers }
    }

    /// A dataset's FlightInfo as this node serves it: with several nodes,
    /// its endpoints name the owner (this node) as their location.
    fn located(&self, mut info: FlightInfo) -> FlightInfo {
        if let Some(own) = self.peers.cluster.own_url() {
            let own = arrow_flight::Location { uri: own.to_owned() };
            for e in &mut info.endpoint {
                if e.location.is_empty() {
                    e.location.push(own.clone());
                }
            }
        }
        info
    }

    /// A DoPut for a dataset another node owns, proxied there with the
    /// Flight client: batches go on as they arrive, the owner's
    /// acknowledgements come back as they are made. Hands `input` back
    /// (`Ok(Err)`) when this node serves the call itself.
    ///
    /// Where the client's stream fails (a message this node refuses, a
    /// broken connection), the proxied stream ends there: the owner
    /// acknowledges what reached it, and then the client gets the failure,
    /// not the clean end of a stream it did not finish. A client that goes
    /// away drops the answer, which resets the owner's call, so the owner
    /// stores none of what it has not committed (as for its own clients).
    async fn forward_put(
        &self,
        name: &str,
        first: FlightData,
        input: Streaming<FlightData>,
        forwarded: bool,
    ) -> Result<Result<Stream<PutResult>, Streaming<FlightData>>, Status> {
        let Some((node, mut owner)) = self.peers.route(name, forwarded)? else { return Ok(Err(input)) };
        let (failed, failure) = tokio::sync::oneshot::channel::<Status>();
        let mut failed = Some(failed);
        let rest = input
            .take_while(move |m| {
                if let Err(e) = m {
                    if let Some(f) = failed.take() {
                        let _ = f.send(e.clone());
                    }
                }
                futures::future::ready(m.is_ok())
            })
            .filter_map(|m| futures::future::ready(m.ok()));
        // Each batch is charged to the forwarding budget until the owner
        // acknowledges it (one acknowledgement per batch, in order): when
        // the budget is spent, the client's stream is not read.
        // IMPORTANT: not to `self.admission`. The owner's acknowledgement
        // waits for the owner's admission budget; were the proxied batches
        // of two nodes charged to the budgets their owners' forwarded
        // batches need, each could hold all of its own budget waiting for
        // the other, and every stream through them would stop.
        let held: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<_>>> = Default::default();
        let (admission, charged) = (self.forwarding.clone(), held.clone());
        let out = futures::stream::once(futures::future::ready(first)).chain(rest).then(move |m| {
            let (admission, charged) = (admission.clone(), charged.clone());
            async move {
                if is_batch(&m) {
                    let permit = admission.admit(m.data_header.len() + m.data_body.len()).await;
                    charged.lock().expect("not poisoned").push_back(permit);
                }
                m
            }
        });
        let acks = owner.do_put(self.peers.forward(out)).await.map_err(|e| peer_status(node, e))?;
        let acks = acks.into_inner().map_err(move |e| peer_status(node, e)).inspect(move |r| {
            if r.is_ok() {
                held.lock().expect("not poisoned").pop_front();
            }
        });
        // After the owner's answer ends (cleanly, since the proxied stream
        // did), the client's own failure, if there was one.
        let failure = futures::stream::once(failure).filter_map(|r| futures::future::ready(r.ok().map(Err)));
        Ok(Ok(acks.chain(failure).boxed()))
    }

    /// An action for `dataset`, sent to its owner when that is another
    /// node (`None`: this node serves it).
    async fn forward_action(
        &self,
        dataset: &str,
        action: &Action,
        forwarded: bool,
    ) -> Option<Result<Response<Stream<arrow_flight::Result>>, Status>> {
        let (node, mut owner) = match self.peers.route(dataset, forwarded) {
            Ok(Some(to)) => to,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let r = owner.do_action(self.peers.forward(action.clone())).await;
        Some(r.map(|s| Response::new(s.into_inner().boxed())).map_err(|e| peer_status(node, e)))
    }
}

/// Whether `m` carries a record batch (which its owner acknowledges).
fn is_batch(m: &FlightData) -> bool {
    arrow::ipc::root_as_message(&m.data_header).is_ok_and(|h| h.header_type() == arrow::ipc::MessageHeader::RecordBatch)
}

fn is_cmd(d: &FlightDescriptor) -> bool {
    d.r#type == DescriptorType::Cmd as i32
}

/// A CMD descriptor that is Flight SQL's (a protobuf `Any`), not a DoPut's
/// JSON `{"dataset": ...}`.
fn sql_command(d: Option<&FlightDescriptor>) -> Option<arrow_flight::sql::Command> {
    use prost::Message;
    let d = d.filter(|d| is_cmd(d) && d.cmd.first() != Some(&b'{'))?;
    let any = arrow_flight::sql::Any::decode(d.cmd.clone()).ok()?;
    any.type_url.starts_with(crate::sql::service::SQL_TYPE_URL_PREFIX).then_some(())?;
    arrow_flight::sql::Command::try_from(any).ok()
}

const ACTIONS: &[(&str, &str)] = &[
    (
        "get_stats",
        "Statistics as one JSON document: datasets, records, memory_bytes, max_memory_bytes, \
         snapshot_interval_seconds, wal_bytes (segments and free files), wal_segments, wal_free_files, and per dataset its records, memory bytes, snapshot rows and shard; \
         with peers, summed over every node, with each node's own under nodes (body \"local\": this node's only)",
    ),
    (
        "force_snapshot",
        "Write Parquet snapshots now and answer once they are durable; body: empty for all datasets (every node's), or a dataset name",
    ),
    ("drop_dataset", "Remove a dataset from memory, snapshots and (durably) the WAL; body: the dataset name"),
    (
        crate::cluster::FORGET_ACTION,
        "Forget the rows of a dataset another node owns that this node has not handed over yet (sent by the owner \
         when it drops the dataset); body: the dataset name",
    ),
    (
        crate::cluster::REFRESH_ACTION,
        "Read a dataset's snapshot table again (sent by the node that handed the dataset over); body: the dataset name",
    ),
];

/// An action body that must name a dataset: checked exactly as DoPut checks
/// a descriptor's name, nothing trimmed ("name " is not `name`).
fn body_name(action: &Action, required: bool) -> Result<Option<String>, Status> {
    if action.body.is_empty() {
        return if required {
            Err(Status::invalid_argument(format!("action {:?} needs a dataset name as its body", action.r#type)))
        } else {
            Ok(None)
        };
    }
    let name = std::str::from_utf8(&action.body)
        .map_err(|_| Status::invalid_argument("action body must be a UTF-8 dataset name"))?
        .to_owned();
    longbow_engine::dataset::validate_name(&name).map_err(into_status)?;
    Ok(Some(name))
}

fn one_result(body: serde_json::Value) -> Stream<arrow_flight::Result> {
    let result = arrow_flight::Result { body: serde_json::to_vec(&body).expect("json").into() };
    futures::stream::iter([Ok(result)]).boxed()
}

fn flight_info(info: &DatasetInfo) -> Result<FlightInfo, Status> {
    let descriptor = FlightDescriptor::new_path(vec![info.name.clone()]);
    let endpoint = FlightEndpoint::new().with_ticket(ticket_for(&info.name));
    Ok(FlightInfo::new()
        .try_with_schema(&info.schema)
        .map_err(|e| Status::internal(format!("encoding schema: {e}")))?
        .with_descriptor(descriptor)
        .with_endpoint(endpoint)
        .with_total_records(info.records as i64)
        .with_total_bytes(info.bytes as i64))
}

#[tonic::async_trait]
impl FlightService for LongbowFlight {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let r = Err(Status::unimplemented("Longbow needs no handshake"));
        self.metrics.observe("Handshake", std::time::Instant::now(), &r);
        r
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let started = std::time::Instant::now();
        let forwarded = crate::cluster::is_forwarded(&request);
        let r = async move {
            let infos = self.engine.list().await.map_err(into_status)?;
            let mut out: Vec<Result<FlightInfo, Status>> =
                infos.iter().map(|i| flight_info(i).map(|f| self.located(f))).collect();
            // Every node lists every dataset: each peer's own, asked once.
            if !forwarded {
                out.extend(self.peers.their_flights().await?.into_iter().map(|(_, info)| Ok(info)));
            }
            Ok(Response::new(futures::stream::iter(out).boxed()))
        }
        .await;
        self.metrics.observe("ListFlights", started, &r);
        r
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let started = std::time::Instant::now();
        let r = async move {
            if is_cmd(request.get_ref()) {
                return FlightService::get_flight_info(&self.sql, request).await;
            }
            let name = dataset_from_descriptor(Some(request.get_ref()))?;
            if let Some((node, mut owner)) = self.peers.route(&name, crate::cluster::is_forwarded(&request))? {
                let d = request.into_inner();
                return owner.get_flight_info(self.peers.forward(d)).await.map_err(|e| peer_status(node, e));
            }
            let info = self.engine.info(&name).await.map_err(into_status)?;
            let mut out = flight_info(&info)?;
            out.endpoint = do_get::endpoints(&self.engine, &name).await?;
            Ok(Response::new(self.located(out)))
        }
        .await;
        self.metrics.observe("GetFlightInfo", started, &r);
        r
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        let r = Err(Status::unimplemented("PollFlightInfo is not supported; use GetFlightInfo"));
        self.metrics.observe("PollFlightInfo", std::time::Instant::now(), &r);
        r
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let started = std::time::Instant::now();
        let r = async move {
            if is_cmd(request.get_ref()) {
                // A Flight SQL command's schema is its FlightInfo's: the
                // query is planned, not run (metadata commands have fixed
                // schemas; unknown ones are UNIMPLEMENTED there).
                let info = FlightService::get_flight_info(&self.sql, request).await?.into_inner();
                return Ok(Response::new(SchemaResult { schema: info.schema }));
            }
            let name = dataset_from_descriptor(Some(request.get_ref()))?;
            if let Some((node, mut owner)) = self.peers.route(&name, crate::cluster::is_forwarded(&request))? {
                let d = request.into_inner();
                return owner.get_schema(self.peers.forward(d)).await.map_err(|e| peer_status(node, e));
            }
            let info = self.engine.info(&name).await.map_err(into_status)?;
            let result = SchemaAsIpc::new(&info.schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(format!("encoding schema: {e}")))?;
            Ok(Response::new(result))
        }
        .await;
        self.metrics.observe("GetSchema", started, &r);
        r
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let call = self.metrics.stream_call("DoGet");
        let r = async move {
            if is_sql_ticket(&request.get_ref().ticket) {
                // A query whose tables are all another node's runs there,
                // whole: that node's aggregates and joins send the result,
                // not the rows. A forwarded one is never forwarded again.
                let whole_at = (!crate::cluster::is_forwarded(&request))
                    .then(|| ticket_sql(&request.get_ref().ticket))
                    .flatten()
                    .and_then(|sql| self.planner.runs_at(&sql))
                    .and_then(|node| self.peers.client(node).map(|c| (node, c)));
                if let Some((node, mut owner)) = whole_at {
                    self.metrics.sql_queries_run_at_owner.inc();
                    let ticket = request.into_inner();
                    let stream = owner.do_get(self.peers.forward(ticket)).await.map_err(|e| peer_status(node, e))?;
                    return Ok(stream.into_inner().boxed());
                }
                return Ok(FlightService::do_get(&self.sql, request).await?.into_inner());
            }
            let read = read_from_ticket(&request.get_ref().ticket)?;
            let dataset = match &read {
                Read::Whole(name) => name,
                Read::Query(body) => &body.dataset,
                Read::Follow { dataset, .. } => dataset,
            };
            if let Some((node, mut owner)) = self.peers.route(dataset, crate::cluster::is_forwarded(&request))? {
                let ticket = request.into_inner();
                let stream = owner.do_get(self.peers.forward(ticket)).await.map_err(|e| peer_status(node, e))?;
                return Ok(stream.into_inner().boxed());
            }
            let name = match read {
                Read::Whole(name) => name,
                Read::Query(body) => return do_get::query(&self.planner, &self.engine, body).await,
                Read::Follow { dataset, after_lsn } => {
                    return do_get::follow(self.engine.clone(), dataset, after_lsn).await
                }
            };
            let scan = self.engine.scan(&name).await.map_err(into_status)?;
            let batches = scan.batches.map(move |r| {
                r.map_err(|e| {
                    tracing::error!(dataset = name, error = %e, "reading a dataset for DoGet");
                    arrow_flight::error::FlightError::ExternalError(Box::new(e))
                })
            });
            let rows = self.metrics.do_get_rows.clone();
            let batches = batches.inspect(move |b| {
                if let Ok(b) = b {
                    rows.inc_by(b.num_rows() as u64);
                }
            });
            let bytes = self.metrics.do_get_bytes.clone();
            let count_bytes = move |d: &Result<FlightData, Status>| {
                if let Ok(d) = d {
                    bytes.inc_by((d.data_header.len() + d.data_body.len() + d.app_metadata.len()) as u64);
                }
            };
            let stream = FlightDataEncoderBuilder::new()
                .with_schema(scan.schema)
                .build(batches)
                .map_err(Status::from)
                .inspect(count_bytes);
            Ok(stream.boxed())
        }
        .await;
        match r {
            Ok(stream) => Ok(Response::new(call.stream(stream))),
            Err(e) => {
                call.failed(&e);
                Err(e)
            }
        }
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        // Until the response stream ends: its code is that of the batch
        // that failed, if any (refusals come in the stream).
        let call = self.metrics.stream_call("DoPut");
        let forwarded = crate::cluster::is_forwarded(&request);
        let mut input = request.into_inner();
        let first = match input.message().await {
            Ok(Some(first)) => first,
            Ok(None) => {
                let e = Status::invalid_argument("empty DoPut stream: expected a path FlightDescriptor and a schema");
                call.failed(&e);
                return Err(e);
            }
            Err(e) => {
                call.failed(&e);
                return Err(e);
            }
        };
        let sql = sql_command(first.flight_descriptor.as_ref());
        // The dataset a DoPut writes, when another node may own it: a path
        // descriptor's, or a bulk ingest's table (a descriptor this node
        // cannot read gets the local path's error).
        let target = match &sql {
            _ if self.peers.cluster.peers.is_empty() => None,
            None => dataset_from_descriptor(first.flight_descriptor.as_ref()).ok(),
            Some(arrow_flight::sql::Command::CommandStatementIngest(c)) => Some(c.table.clone()),
            Some(_) => None,
        };
        if let Some(name) = target {
            match self.forward_put(&name, first.clone(), input, forwarded).await {
                Ok(Ok(stream)) => return Ok(Response::new(call.stream(stream))),
                Ok(Err(back)) => input = back,
                Err(e) => {
                    call.failed(&e);
                    return Err(e);
                }
            }
        }
        let input: do_put::Input = futures::stream::iter([Ok(first.clone())]).chain(input).boxed();
        let result = match sql {
            Some(cmd) => self.sql.do_put(cmd, input).await,
            None => do_put::do_put(self.engine.clone(), self.admission.clone(), input).await,
        };
        match result {
            Ok(stream) => Ok(Response::new(call.stream(stream))),
            Err(e) => {
                call.failed(&e);
                Err(e)
            }
        }
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        let r = Err(Status::unimplemented("DoExchange is not supported"));
        self.metrics.observe("DoExchange", std::time::Instant::now(), &r);
        r
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let started = std::time::Instant::now();
        let forwarded = crate::cluster::is_forwarded(&request);
        let action = request.into_inner();
        if SQL_ACTIONS.contains(&action.r#type.as_str()) {
            let r = FlightService::do_action(&self.sql, Request::new(action.clone())).await;
            self.metrics.observe_action("flight_sql", started, &r);
            return r;
        }
        let r = async {
            match action.r#type.as_str() {
                "get_stats" => {
                    let local = match &action.body[..] {
                        b"" => forwarded,
                        b"local" => true,
                        _ => return Err(Status::invalid_argument("get_stats takes an empty body, or \"local\"")),
                    };
                    let datasets = self.engine.list().await.map_err(into_status)?;
                    let shards = self.engine.shard_stats().await.map_err(into_status)?;
                    let mine = stats_json(&self.engine, &datasets, &shards);
                    if local || self.peers.cluster.peers.is_empty() {
                        return Ok(Response::new(one_result(mine)));
                    }
                    let ask = Action { r#type: "get_stats".into(), body: "local".into() };
                    let theirs = self.peers.ask_everyone(&ask).await;
                    Ok(Response::new(one_result(cluster_stats(self.peers.cluster.node, mine, theirs))))
                }
                "force_snapshot" => {
                    let name = body_name(&action, false)?;
                    if let Some(name) = &name {
                        if let Some(r) = self.forward_action(name, &action, forwarded).await {
                            return r;
                        }
                    }
                    // All datasets: every node's, at once.
                    let everyone = name.is_none() && !forwarded && !self.peers.cluster.peers.is_empty();
                    let ask = async {
                        match everyone {
                            true => Some(self.peers.ask_everyone(&action).await),
                            false => None,
                        }
                    };
                    let (theirs, r) = futures::join!(ask, self.engine.snapshot(name.as_deref()));
                    let r = r.map_err(into_status)?;
                    let mine = serde_json::json!({
                        "datasets": r.datasets, "files_written": r.files_written, "rows_written": r.rows_written,
                        "bytes_written": r.bytes_written, "wal_segments_deleted": r.segments_deleted,
                        "bytes_evicted": r.bytes_evicted,
                    });
                    match theirs {
                        None => Ok(Response::new(one_result(mine))),
                        Some(theirs) => Ok(Response::new(one_result(cluster_snapshot(mine, theirs)?))),
                    }
                }
                "drop_dataset" => {
                    let name = body_name(&action, true)?.expect("required");
                    if let Some(r) = self.forward_action(&name, &action, forwarded).await {
                        return r;
                    }
                    // IMPORTANT: before the drop. A node that still holds
                    // rows of the dataset from before the node list changed
                    // would hand them over into the table after the drop.
                    let held_elsewhere = self.peers.forget_everywhere(&name).await?;
                    match self.engine.drop_dataset(&name).await {
                        Err(longbow_engine::Error::NotFound(_)) if held_elsewhere => {}
                        r => r.map_err(into_status)?,
                    }
                    Ok(Response::new(one_result(serde_json::json!({ "dropped": name }))))
                }
                crate::cluster::FORGET_ACTION => {
                    let name = body_name(&action, true)?.expect("required");
                    if !forwarded {
                        return Err(Status::permission_denied(format!(
                            "{} is sent by a dataset's owner to the other nodes; drop a dataset with drop_dataset",
                            crate::cluster::FORGET_ACTION
                        )));
                    }
                    if self.peers.cluster.owns(&name) {
                        return Err(Status::failed_precondition(format!(
                            "node {} was told to forget dataset {name:?}, which it owns: the nodes' LONGBOW_PEERS \
                             differ",
                            self.peers.cluster.node
                        )));
                    }
                    let held = self.engine.forget(&name).await.map_err(into_status)?;
                    Ok(Response::new(one_result(serde_json::json!({ "forgotten": name, "held": held }))))
                }
                crate::cluster::REFRESH_ACTION => {
                    let name = body_name(&action, true)?.expect("required");
                    if let Some(r) = self.forward_action(&name, &action, forwarded).await {
                        return r;
                    }
                    self.engine.refresh(&name).await.map_err(into_status)?;
                    Ok(Response::new(one_result(serde_json::json!({ "refreshed": name }))))
                }
                other => Err(Status::unimplemented(format!(
                    "unknown action {other:?}; known: {}",
                    ACTIONS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
        .await;
        let known = ACTIONS.iter().map(|(name, _)| *name).find(|name| *name == action.r#type);
        self.metrics.observe_action(known.unwrap_or("unknown"), started, &r);
        r
    }

    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let started = std::time::Instant::now();
        let out = ACTIONS.iter().chain(crate::sql::service::LISTED_SQL_ACTIONS).map(|(name, description)| {
            Ok(ActionType { r#type: (*name).to_owned(), description: (*description).to_owned() })
        });
        let r = Ok(Response::new(futures::stream::iter(out.collect::<Vec<_>>()).boxed()));
        self.metrics.observe("ListActions", started, &r);
        r
    }
}

/// `get_stats` for the cluster: the figures that add up, summed over the
/// nodes that answered, every node's datasets (each with its `node`), and
/// each node's own document under `nodes`. A node that did not answer is
/// listed under `unreachable`; the sums leave it out.
fn cluster_stats(
    node: usize,
    mine: serde_json::Value,
    theirs: Vec<(usize, Result<serde_json::Value, Status>)>,
) -> serde_json::Value {
    let mut nodes = vec![(node, mine)];
    let mut unreachable = Vec::new();
    for (n, r) in theirs {
        match r {
            Ok(v) => nodes.push((n, v)),
            Err(e) => unreachable.push(serde_json::json!({ "node": n, "error": e.message() })),
        }
    }
    nodes.sort_by_key(|(n, _)| *n);
    let mut out = serde_json::Map::new();
    for key in SUMMED_STATS {
        let total: u64 = nodes.iter().map(|(_, v)| v[key].as_u64().unwrap_or(0)).sum();
        out.insert((*key).into(), total.into());
    }
    let mine = &nodes.iter().find(|(n, _)| *n == node).expect("this node").1;
    out.insert("snapshot_interval_seconds".into(), mine["snapshot_interval_seconds"].clone());
    let per_dataset: Vec<serde_json::Value> = nodes
        .iter()
        .flat_map(|(n, v)| {
            v["per_dataset"].as_array().cloned().unwrap_or_default().into_iter().map(move |mut d| {
                d["node"] = (*n).into();
                d
            })
        })
        .collect();
    out.insert("per_dataset".into(), per_dataset.into());
    let nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|(n, mut v)| {
            if let Some(m) = v.as_object_mut() {
                m.remove("per_dataset");
                m.insert("node".into(), n.into());
            }
            v
        })
        .collect();
    out.insert("nodes".into(), nodes.into());
    out.insert("unreachable".into(), unreachable.into());
    out.into()
}

/// The `get_stats` figures a cluster's document sums over its nodes.
const SUMMED_STATS: &[&str] = &[
    "datasets",
    "records",
    "memory_bytes",
    "max_memory_bytes",
    "wal_bytes",
    "wal_segments",
    "wal_free_files",
    "shards",
];

/// A bare `force_snapshot` on every node: the reports summed. A node that
/// could not snapshot fails the call, naming it, after the others ran.
fn cluster_snapshot(
    mine: serde_json::Value,
    theirs: Vec<(usize, Result<serde_json::Value, Status>)>,
) -> Result<serde_json::Value, Status> {
    let mut reports = vec![mine];
    let mut failed = Vec::new();
    for (n, r) in theirs {
        match r {
            Ok(v) => reports.push(v),
            Err(e) => failed.push(format!("node {n}: {}", e.message())),
        }
    }
    if !failed.is_empty() {
        return Err(Status::unavailable(format!(
            "force_snapshot ran on {} node(s), and not on {}",
            reports.len(),
            failed.join("; ")
        )));
    }
    let mut out = serde_json::Map::new();
    for key in ["datasets", "files_written", "rows_written", "bytes_written", "wal_segments_deleted", "bytes_evicted"] {
        out.insert(key.into(), reports.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum::<u64>().into());
    }
    out.insert("nodes".into(), reports.len().into());
    Ok(out.into())
}

fn stats_json(engine: &Engine, datasets: &[DatasetInfo], shards: &[ShardStats]) -> serde_json::Value {
    let settings = engine.settings();
    let ds: Vec<_> = datasets
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name, "shard": d.shard, "records": d.records, "memory_bytes": d.bytes,
                "batches_in_memory": d.batches, "snapshot_rows": d.snapshot_rows, "snapshot_files": d.snapshot_files,
            })
        })
        .collect();
    serde_json::json!({
        "datasets": datasets.len(),
        "records": datasets.iter().map(|d| d.records).sum::<u64>(),
        "memory_bytes": shards.iter().map(|s| s.memory_bytes).sum::<u64>(),
        "max_memory_bytes": settings.max_memory,
        "snapshot_interval_seconds": settings.snapshot_interval.as_secs_f64(),
        "wal_bytes": shards.iter().map(|s| s.wal_bytes).sum::<u64>(),
        "wal_segments": shards.iter().map(|s| s.wal_segments).sum::<u64>(),
        "wal_free_files": shards.iter().map(|s| s.wal_free_files).sum::<u64>(),
        "shards": shards.len(),
        "per_dataset": ds,
    })
}
