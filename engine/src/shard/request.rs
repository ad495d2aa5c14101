//! Messages from the gateway to a shard. Each carries a oneshot for its reply.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::channel::oneshot;

use crate::dataset::DatasetInfo;
use crate::error::Result;
use crate::wal::{IpcMessage, Lsn};

pub type Reply<T> = oneshot::Sender<Result<T>>;

pub enum Request {
    /// Create the dataset with this schema if it is new (durably), or check
    /// that the schema matches.
    Open { dataset: String, schema: SchemaRef, reply: Reply<()> },
    /// Log a batch; the reply comes once it is durable.
    Append { dataset: String, batch: RecordBatch, message: IpcMessage, reply: Reply<Lsn> },
    /// A dataset's schema and batches, as of now.
    Get { dataset: String, reply: Reply<(SchemaRef, Vec<RecordBatch>)> },
    /// One dataset's summary, or every dataset's when `dataset` is `None`.
    Info { dataset: Option<String>, reply: Reply<Vec<DatasetInfo>> },
    /// Finish pending writes, seal the WAL and stop.
    Shutdown { reply: Reply<()> },
}
