//! The one type that crosses from the gateway's tokio threads to a shard's
//! glommio thread: a `Send + Clone` handle over a bounded channel.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::channel::oneshot;
use futures::FutureExt;

use super::request::{
    Committed, DatasetRead, ProducerSeq, PutStream, Reply, Request, ScanRequest, ScanView, ShardStats, SnapshotReport,
    Write,
};
use crate::dataset::DatasetInfo;
use crate::error::{Error, Result};
use crate::limits::SHARD_SEND_TIMEOUT_MS;
use crate::record::{Batch, Op};
use crate::wal::IpcMessage;
use crate::ShardId;

#[derive(Clone)]
pub struct ShardHandle {
    pub(crate) id: ShardId,
    pub(crate) tx: flume::Sender<Request>,
    /// How long an append waits for room in a full inbox: the shard is
    /// pushing back (memory limit, slow disk), which is not a failure.
    pub(crate) backpressure_timeout: Duration,
}

impl ShardHandle {
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Sends a request, waiting for room in the inbox up to
    /// [`SHARD_SEND_TIMEOUT_MS`]; past that the shard is overloaded.
    async fn send(&self, req: Request) -> Result<()> {
        self.send_within(req, Duration::from_millis(SHARD_SEND_TIMEOUT_MS)).await
    }

    async fn send_within(&self, req: Request, wait: Duration) -> Result<()> {
        // Fast path without a timer: there is room.
        let req = match self.tx.try_send(req) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => return Err(Error::ShuttingDown),
            Err(flume::TrySendError::Full(req)) => req,
        };
        let send = self.tx.send_async(req);
        let timeout = futures_timer::Delay::new(wait);
        futures::select! {
            r = send.fuse() => r.map_err(|_| Error::ShuttingDown)?,
            _ = timeout.fuse() => return Err(Error::Overloaded { shard: self.id, reason: "its inbox stayed full" }),
        }
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    fn write(dataset: String, op: Op, stream: PutStream, reply: Reply<Committed>) -> Request {
        Request::Write(Write { dataset, op, stream, queued_at: Instant::now(), reply })
    }

    pub async fn hand_over(&self, dataset: String) -> Result<()> {
        self.call(|reply| Request::HandOver { dataset, reply }).await
    }

    pub async fn forget(&self, dataset: String) -> Result<bool> {
        self.call(|reply| Request::Forget { dataset, reply }).await
    }

    pub async fn refresh(&self, dataset: String) -> Result<()> {
        self.call(|reply| Request::Refresh { dataset, reply }).await
    }

    pub async fn open(&self, dataset: String, schema: SchemaRef) -> Result<()> {
        self.call(|reply| Self::write(dataset, Op::Schema(schema), PutStream::new(), reply)).await.map(drop)
    }

    /// Queues a batch of `stream`. The outer future resolves once the shard
    /// has taken it (back-pressure: it waits for room up to the
    /// back-pressure timeout); the returned one once it is durable.
    pub async fn append(
        &self,
        dataset: String,
        batch: RecordBatch,
        message: IpcMessage,
        producer: Option<ProducerSeq>,
        stream: PutStream,
    ) -> Result<impl std::future::Future<Output = Result<Committed>> + Send + 'static> {
        // A condition of the input, not an invariant: refused, never asserted.
        if message.encoded_len() as u64 > crate::limits::FRAME_PAYLOAD_BYTES_MAX / 2 {
            return Err(Error::InvalidInput(format!(
                "a batch of {} encoded bytes is larger than one WAL frame takes ({}); split it",
                message.encoded_len(),
                crate::limits::FRAME_PAYLOAD_BYTES_MAX / 2
            )));
        }
        let (reply, rx) = oneshot::channel();
        let req = Self::write(dataset, Op::Batch(Batch { batch, message, producer }), stream, reply);
        self.send_within(req, self.backpressure_timeout).await?;
        Ok(async move { rx.await.map_err(|_| Error::ShuttingDown)? })
    }

    pub async fn get(&self, dataset: String) -> Result<DatasetRead> {
        self.call(|reply| Request::Get { dataset, reply }).await
    }

    pub async fn scan(&self, dataset: String, scan: ScanRequest) -> Result<ScanView> {
        self.call(|reply| Request::Scan { dataset, scan, reply }).await
    }

    pub async fn snapshot(&self, dataset: Option<String>) -> Result<SnapshotReport> {
        self.call(|reply| Request::Snapshot { dataset, reply }).await
    }

    pub async fn drop_dataset(&self, dataset: String) -> Result<()> {
        self.call(|reply| Self::write(dataset, Op::Drop, PutStream::new(), reply)).await.map(drop)
    }

    pub async fn stats(&self) -> Result<ShardStats> {
        self.call(|reply| Request::Stats { reply }).await
    }

    pub async fn configure(&self, snapshot_interval: std::time::Duration) -> Result<()> {
        self.send(Request::Configure { snapshot_interval }).await
    }

    pub async fn info(&self, dataset: Option<String>) -> Result<Vec<DatasetInfo>> {
        self.call(|reply| Request::Info { dataset, reply }).await
    }

    pub async fn shutdown(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        // Shutdown waits for room as long as it takes.
        self.tx.send_async(Request::Shutdown { reply }).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}
