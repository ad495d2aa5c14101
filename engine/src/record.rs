//! A write, as one type from the gateway's request through the shard's
//! commit queue to its WAL frame: [`Op`]. The shard's queue holds it in a
//! [`Write`](crate::shard::request::Write) (with its reply and stream), and
//! the WAL borrows it in a [`Record`](crate::wal::Record) (with its
//! dataset's schema message).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::wal::IpcMessage;

/// What a write does to its dataset.
#[derive(Debug)]
pub enum Op {
    /// Creates the dataset with this schema if it is new, or checks that
    /// the schema matches. Logged as the schema message alone.
    Schema(SchemaRef),
    /// Appends a batch.
    Batch(Batch),
    /// Drops the dataset: a tombstone.
    Drop,
    /// Forgets the dataset here, leaving its table alone: its rows were
    /// handed over to the node that owns it now, or that node dropped it
    /// (the shard's snapshot tasks write it; no request does).
    Forget,
    /// The dataset's idempotent producers' state as JSON, logged when the
    /// dataset moves to another shard (recovery writes it; no request does).
    Producers(Vec<u8>),
}

/// A batch to append.
#[derive(Debug)]
pub struct Batch {
    pub batch: RecordBatch,
    /// `batch` encoded as the WAL writes it.
    pub message: IpcMessage,
    /// The idempotent producer and sequence number, logged in the same
    /// frame as the batch so both are durable together.
    pub producer: Option<ProducerSeq>,
}

/// An idempotent producer's id and the sequence number of one batch.
#[derive(Debug, Clone)]
pub struct ProducerSeq {
    pub id: Arc<str>,
    pub seq: u64,
}

impl Op {
    pub fn batch(&self) -> Option<&Batch> {
        match self {
            Op::Batch(b) => Some(b),
            _ => None,
        }
    }

    /// The message the WAL writes after the schema, if any.
    pub fn message(&self) -> Option<&IpcMessage> {
        self.batch().map(|b| &b.message)
    }

    pub fn producer(&self) -> Option<(&str, u64)> {
        self.batch().and_then(|b| b.producer.as_ref()).map(|p| (&*p.id, p.seq))
    }
}
