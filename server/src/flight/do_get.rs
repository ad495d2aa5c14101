//! DoGet tickets beyond the whole dataset: queries through the SQL planner
//! (columns, filter, limit, an endpoint's LSN range), the change feed, and
//! the endpoints GetFlightInfo splits a large dataset into.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::{FlightData, FlightEndpoint, SchemaAsIpc};
use futures::stream::BoxStream;
use futures::StreamExt;
use longbow_engine::shard::request::{ScanRequest, ScanView};
use longbow_engine::{Engine, Lsn};
use tonic::Status;

use super::ticket::{ticket_for, ticket_of, TicketBody};
use crate::error::into_status;
use crate::sql::SqlEngine;

type Stream = BoxStream<'static, Result<FlightData, Status>>;

/// Batches one change-feed step takes from the shard: what a slow follower
/// holds at most (plus one snapshot file when it catches up from files).
pub const FOLLOW_BATCHES_MAX: usize = 16;

/// A dataset with at least this many rows in snapshot files is offered as
/// several endpoints (its batches in memory, and groups of files).
pub const PARALLEL_READ_ROWS_MIN: u64 = 256 * 1024;
/// Endpoints for the files at most.
pub const PARALLEL_FILE_ENDPOINTS_MAX: usize = 8;

/// The rows of `body` (a JSON ticket with columns, filter, limit and/or an
/// LSN range), planned and run by DataFusion.
pub async fn query(sql: &SqlEngine, engine: &Engine, body: TicketBody) -> Result<Stream, Status> {
    let view = match (body.min_lsn, body.max_lsn) {
        (None, None) => None,
        (lo, hi) => Some(Arc::new(part(engine, &body.dataset, lo.unwrap_or(Lsn::ZERO), hi.unwrap_or(Lsn::MAX)).await?)),
    };
    let df = sql.dataset_query(&body.dataset, &body.columns, body.filter.as_deref(), body.limit, view).await?;
    let (schema, stream) = sql.execute(df).await?;
    Ok(crate::sql::service::encode(schema, stream))
}

/// The rows logged with LSNs in `lo..=hi`, from memory and the snapshot
/// files wholly inside the range. A file across a bound (files were merged
/// since GetFlightInfo cut the ranges) fails the read: ask for the
/// endpoints again.
async fn part(engine: &Engine, dataset: &str, lo: Lsn, hi: Lsn) -> Result<ScanView, Status> {
    let req = ScanRequest { after_lsn: lo.prev(), max_batches: usize::MAX, wait: false };
    let mut view = engine.view(dataset, req).await.map_err(into_status)?;
    if let Some(f) =
        view.files.iter().find(|f| (f.min_lsn < lo && f.max_lsn >= lo) || (f.min_lsn <= hi && f.max_lsn > hi))
    {
        return Err(Status::failed_precondition(format!(
            "snapshot file {} (LSNs {}..={}) crosses this endpoint's range {lo}..={hi}: the files were merged \
             since GetFlightInfo; call GetFlightInfo again",
            f.path, f.min_lsn, f.max_lsn
        )));
    }
    view.files.retain(|f| f.min_lsn >= lo && f.max_lsn <= hi);
    view.batches.retain(|(l, _)| (lo..=hi).contains(l));
    Ok(view)
}

/// GetFlightInfo's endpoints: one plain ticket for a small dataset (as
/// before); for one with many rows in snapshot files, contiguous groups of
/// files and the part in memory, each an LSN range.
pub async fn endpoints(engine: &Engine, dataset: &str) -> Result<Vec<FlightEndpoint>, Status> {
    let view = engine
        .view(dataset, ScanRequest { after_lsn: Lsn::ZERO, max_batches: 0, wait: false })
        .await
        .map_err(into_status)?;
    let cold_rows: u64 = view.files.iter().map(|f| f.rows).sum();
    if cold_rows < PARALLEL_READ_ROWS_MIN {
        return Ok(vec![FlightEndpoint::new().with_ticket(ticket_for(dataset))]);
    }
    let range = |lo: Lsn, hi: Lsn| {
        let body =
            TicketBody { dataset: dataset.to_owned(), min_lsn: Some(lo), max_lsn: Some(hi), ..Default::default() };
        FlightEndpoint::new().with_ticket(ticket_of(&body))
    };
    let mut out = Vec::new();
    let groups = PARALLEL_FILE_ENDPOINTS_MAX.min(view.files.len());
    let per_group = cold_rows.div_ceil(groups as u64);
    let mut lo = Lsn::ZERO;
    let mut rows = 0;
    for (i, f) in view.files.iter().enumerate() {
        rows += f.rows;
        if rows >= per_group || i + 1 == view.files.len() {
            out.push(range(lo, f.max_lsn));
            lo = f.max_lsn + 1;
            rows = 0;
        }
    }
    // The rest (in memory, and whatever is logged until this endpoint is
    // read) has no upper bound.
    out.push(range(view.evicted_lsn + 1, Lsn::MAX));
    Ok(out)
}

/// The change feed: every batch of `dataset` logged after `after_lsn`, in
/// LSN order, then each new one as it becomes durable. Each FlightData's
/// app_metadata is `{"lsn": n, "resume_after": m}`: `n` is the batch's LSN
/// (for rows from a snapshot file, the file's last), `m` the `after_lsn`
/// that resumes the feed just after this message without losing a row
/// (equal to `n` except inside a file, which is resent whole).
///
/// Pulled by the transport: a step is taken from the shard only when the
/// previous one was sent, so a slow follower holds at most
/// [`FOLLOW_BATCHES_MAX`] batches (or one snapshot file) and slows nobody.
pub async fn follow(engine: Engine, dataset: String, after_lsn: Lsn) -> Result<Stream, Status> {
    let info = engine.info(&dataset).await.map_err(into_status)?;
    let schema = info.schema.clone();
    let header: FlightData = SchemaAsIpc::new(&schema, &arrow::ipc::writer::IpcWriteOptions::default()).into();
    let state = Feed { engine, dataset, cursor: after_lsn, schema, failed: false };
    let steps = futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        let step = st.step().await;
        st.failed = step.is_err();
        Some((step, st))
    });
    let messages = steps.flat_map(|step| match step {
        Ok(msgs) => futures::stream::iter(msgs.into_iter().map(Ok)).boxed(),
        Err(status) => futures::stream::iter([Err(status)]).boxed(),
    });
    Ok(futures::stream::iter([Ok(header)]).chain(messages).boxed())
}

struct Feed {
    engine: Engine,
    dataset: String,
    /// Everything up to here was sent.
    cursor: Lsn,
    schema: SchemaRef,
    failed: bool,
}

impl Feed {
    /// The next messages: waits on the shard until a batch after the
    /// cursor is durable.
    async fn step(&mut self) -> Result<Vec<FlightData>, Status> {
        let req = ScanRequest { after_lsn: self.cursor, max_batches: FOLLOW_BATCHES_MAX, wait: true };
        let view = self.engine.view(&self.dataset, req).await.map_err(into_status)?;
        let mut out = Vec::new();
        if let Some(file) = view.files.first() {
            if file.min_lsn <= self.cursor {
                return Err(Status::out_of_range(format!(
                    "LSN {} is inside snapshot file {} (LSNs {}..={}), whose rows no longer carry their own \
                     LSNs; resume after {} (or {} to get the file again)",
                    self.cursor,
                    file.path,
                    file.min_lsn,
                    file.max_lsn,
                    file.max_lsn,
                    file.min_lsn.prev()
                )));
            }
            // One file per step, read whole (ranged reads, local or object storage).
            let batches = self.engine.read_file(view.schema.clone(), file).await.map_err(into_status)?;
            let n = batches.len();
            for (i, b) in batches.into_iter().enumerate() {
                let resume = if i + 1 == n { file.max_lsn } else { self.cursor };
                out.extend(self.encode(&b, file.max_lsn, resume)?);
            }
            self.cursor = file.max_lsn;
            return Ok(out);
        }
        for (lsn, b) in &view.batches {
            out.extend(self.encode(b, *lsn, *lsn)?);
            self.cursor = *lsn;
        }
        Ok(out)
    }

    fn encode(&self, batch: &RecordBatch, lsn: Lsn, resume_after: Lsn) -> Result<Vec<FlightData>, Status> {
        let meta: bytes::Bytes =
            serde_json::to_vec(&serde_json::json!({ "lsn": lsn, "resume_after": resume_after })).expect("json").into();
        let mut msgs = arrow_flight::utils::batches_to_flight_data(&self.schema, vec![batch.clone()])
            .map_err(|e| Status::internal(format!("encoding a batch: {e}")))?;
        msgs.remove(0); // the schema, sent once at the start
        Ok(msgs.into_iter().map(|m| m.with_app_metadata(meta.clone())).collect())
    }
}
