//! A shard: one glommio executor pinned to a core, owning its datasets and
//! its WAL directory. Two tasks share the shard's state:
//!
//! - the request loop reads the inbox, answers reads at once, and queues
//!   appends for the committer;
//! - the committer takes everything queued (up to
//!   [`GROUP_COMMIT_BYTES_MAX`]), writes it as one commit, `fdatasync`s, and
//!   only then makes the batches visible and acknowledges them. Appends that
//!   arrive during a commit form the next one: group commit.

pub mod handle;
pub mod recovery;
pub mod request;

use std::cell::RefCell;
use std::rc::Rc;

use arrow::array::RecordBatch;

use crate::dataset::{Catalog, Dataset};
use crate::error::{Error, Result};
use crate::limits::{GROUP_COMMIT_BYTES_MAX, SHARD_PENDING_APPENDS_MAX};
use crate::metrics::{EngineMetrics, ShardLabel};
use crate::wal::{IpcMessage, Lsn, Record, Wal};
use crate::ShardId;
pub use handle::ShardHandle;
use request::{Reply, Request};

/// A write waiting for the committer.
enum Pending {
    /// A new dataset's schema.
    Create {
        dataset: String,
        reply: Reply<()>,
    },
    Batch {
        dataset: String,
        batch: RecordBatch,
        message: IpcMessage,
        reply: Reply<Lsn>,
    },
}

impl Pending {
    fn dataset(&self) -> &str {
        match self {
            Pending::Create { dataset, .. } | Pending::Batch { dataset, .. } => dataset,
        }
    }

    fn message(&self) -> Option<&IpcMessage> {
        match self {
            Pending::Create { .. } => None,
            Pending::Batch { message, .. } => Some(message),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Pending::Create { .. } => 512,
            Pending::Batch { message, .. } => message.encoded_len() as u64 + 64,
        }
    }
}

pub(crate) struct Shard {
    pub id: ShardId,
    pub catalog: Rc<RefCell<Catalog>>,
    pub metrics: EngineMetrics,
}

/// Serves requests until shutdown. `wal` is positioned after recovery.
pub(crate) async fn serve(shard: Shard, wal: Wal, inbox: flume::Receiver<Request>) {
    let (commit_tx, commit_rx) = flume::bounded::<Pending>(SHARD_PENDING_APPENDS_MAX);
    let committer =
        glommio::spawn_local(commit_loop(shard.id, shard.catalog.clone(), shard.metrics.clone(), wal, commit_rx));
    let mut shutdown_reply = None;
    let queue_depth = shard.metrics.shard_queue_depth.get_or_create(&ShardLabel { shard: shard.id }).clone();
    while let Ok(req) = inbox.recv_async().await {
        queue_depth.set(inbox.len() as i64);
        match req {
            Request::Open { dataset, schema, reply } => {
                let opened = open(&mut shard.catalog.borrow_mut(), &dataset, schema);
                match opened {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(Opened::Durable) => {
                        let _ = reply.send(Ok(()));
                    }
                    // Answered by the committer once the schema is durable.
                    Ok(Opened::Pending) => {
                        if commit_tx.send_async(Pending::Create { dataset, reply }).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Request::Append { dataset, batch, message, reply } => {
                let checked = match shard.catalog.borrow().datasets.get(&dataset) {
                    None => Err(Error::NotFound(dataset.clone())),
                    Some(d) => d.check_schema(&dataset, &batch.schema()),
                };
                if let Err(e) = checked {
                    let _ = reply.send(Err(e));
                    continue;
                }
                // IMPORTANT: waits while the committer is behind; the inbox
                // then fills and callers are pushed back.
                if commit_tx.send_async(Pending::Batch { dataset, batch, message, reply }).await.is_err() {
                    break;
                }
            }
            Request::Get { dataset, reply } => {
                let cat = shard.catalog.borrow();
                let r = match cat.datasets.get(&dataset).filter(|d| d.durable) {
                    Some(d) => Ok((d.schema.clone(), d.batches.clone())),
                    None => Err(Error::NotFound(dataset)),
                };
                let _ = reply.send(r);
            }
            Request::Info { dataset, reply } => {
                let cat = shard.catalog.borrow();
                let r = match dataset {
                    Some(name) => cat.info(&name, shard.id).map(|i| vec![i]).ok_or(Error::NotFound(name)),
                    None => Ok(cat.datasets.keys().filter_map(|n| cat.info(n, shard.id)).collect()),
                };
                let _ = reply.send(r);
            }
            Request::Shutdown { reply } => {
                shutdown_reply = Some(reply);
                break;
            }
        }
    }
    drop(commit_tx);
    let closed = committer.await;
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(closed);
    }
}

enum Opened {
    Durable,
    Pending,
}

/// Checks an Open against the catalog. A new name is reserved at once, so a
/// concurrent Open with another schema is refused; it becomes visible when
/// its schema commit is durable.
fn open(cat: &mut Catalog, dataset: &str, schema: arrow::datatypes::SchemaRef) -> Result<Opened> {
    match cat.datasets.get(dataset) {
        Some(d) => {
            d.check_schema(dataset, &schema)?;
            Ok(if d.durable { Opened::Durable } else { Opened::Pending })
        }
        None => {
            crate::dataset::validate_schema(&schema)?;
            cat.datasets.insert(dataset.to_owned(), Dataset::new(schema));
            Ok(Opened::Pending)
        }
    }
}

async fn commit_loop(
    shard: ShardId,
    catalog: Rc<RefCell<Catalog>>,
    metrics: EngineMetrics,
    mut wal: Wal,
    rx: flume::Receiver<Pending>,
) -> Result<()> {
    let mut poisoned = false;
    let mut group: Vec<Pending> = Vec::new();
    while let Ok(first) = rx.recv_async().await {
        let mut bytes = first.bytes();
        group.push(first);
        while bytes < GROUP_COMMIT_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        if poisoned {
            for p in group.drain(..) {
                fail(p, Error::Poisoned { shard });
            }
            continue;
        }
        let schemas: Vec<Rc<[u8]>> = {
            let cat = catalog.borrow();
            let (known, missing): (Vec<_>, Vec<_>) =
                group.drain(..).partition(|p| cat.datasets.contains_key(p.dataset()));
            for p in missing {
                let name = p.dataset().to_owned();
                fail(p, Error::NotFound(name));
            }
            group = known;
            group.iter().map(|p| cat.datasets[p.dataset()].schema_message.clone()).collect()
        };
        if group.is_empty() {
            continue;
        }
        let records: Vec<Record<'_>> = group
            .iter()
            .zip(&schemas)
            .map(|(p, s)| Record { dataset: p.dataset(), schema_message: s, message: p.message() })
            .collect();
        let result = wal.append_synced(&records).await;
        drop(records);
        match result {
            Ok(first_lsn) => {
                metrics.wal_commit_batches.observe(group.len() as f64);
                let mut cat = catalog.borrow_mut();
                for (i, p) in group.drain(..).enumerate() {
                    let lsn = first_lsn + i as u64;
                    match p {
                        Pending::Create { dataset, reply } => {
                            if let Some(d) = cat.datasets.get_mut(&dataset) {
                                if !d.durable {
                                    metrics.datasets.inc();
                                }
                                d.durable = true;
                            }
                            let _ = reply.send(Ok(()));
                        }
                        Pending::Batch { dataset, batch, reply, .. } => {
                            let d = cat.datasets.get_mut(&dataset).expect("dataset of a committed batch");
                            let (rows, bytes) = d.push(batch);
                            metrics.rows_ingested.inc_by(rows);
                            metrics.batches_ingested.inc();
                            metrics.records.inc_by(rows as i64);
                            metrics.memory_bytes.inc_by(bytes as i64);
                            let _ = reply.send(Ok(lsn));
                        }
                    }
                }
            }
            Err(e) => {
                if wal.is_poisoned() {
                    tracing::error!(shard, error = %e, "fsync failed; shard stops accepting writes until restart");
                    poisoned = true;
                } else {
                    tracing::warn!(shard, error = %e, "WAL write failed; the writes in it were not acknowledged");
                }
                let message = e.to_string();
                let mut cat = catalog.borrow_mut();
                for p in group.drain(..) {
                    if let Pending::Create { dataset, .. } = &p {
                        // Never made durable: forget the reservation.
                        if cat.datasets.get(dataset).is_some_and(|d| !d.durable) {
                            cat.datasets.remove(dataset);
                        }
                    }
                    let err = if poisoned {
                        Error::Poisoned { shard }
                    } else {
                        Error::WalWrite { shard, message: message.clone() }
                    };
                    fail(p, err);
                }
            }
        }
    }
    if poisoned {
        return Err(Error::Poisoned { shard });
    }
    wal.close().await
}

fn fail(p: Pending, e: Error) {
    match p {
        Pending::Create { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Pending::Batch { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}
