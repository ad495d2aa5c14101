//! Starting and stopping the shards, and routing calls to them.
//!
//! `Engine::start` takes the data directory's lock, settles its layout (see
//! `layout.rs`), spawns one glommio executor per shard pinned to a core, and
//! returns once every shard has replayed its WAL. It is `Send + Sync + Clone`:
//! the gateway's tokio tasks call it directly.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::dataset::{validate_name, DatasetInfo};
use crate::error::{Error, Result};
use crate::layout::{self, DirLock, Layout};
use crate::limits::{SEGMENT_BYTES_MIN, SHARD_INBOX_DEPTH_MAX, SHARD_IO_MEMORY_BYTES, SHARD_RING_DEPTH};
use crate::metrics::EngineMetrics;
use crate::routing::shard_for;
use crate::shard::recovery::{self, Plan, RecoveryStats};
use crate::shard::{self, Shard, ShardHandle};
use crate::wal::replay::CorruptionPolicy;
use crate::wal::{IpcMessage, Lsn};
use crate::ShardId;

/// Everything the engine needs; reads no environment.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_path: PathBuf,
    pub shards: usize,
    /// Segments rotate once they would grow past this.
    pub segment_bytes_max: u64,
    pub corruption: CorruptionPolicy,
    /// Pin shard `k` to the `k`-th CPU this process may run on.
    pub pin_cores: bool,
}

impl EngineConfig {
    /// A small config for tests: one shard per `shards`, 8 MiB segments.
    pub fn test_config(data_path: impl Into<PathBuf>, shards: usize) -> Self {
        Self {
            data_path: data_path.into(),
            shards,
            segment_bytes_max: 8 * crate::limits::MIB,
            corruption: CorruptionPolicy::Refuse,
            pin_cores: false,
        }
    }
}

#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    shards: Vec<ShardHandle>,
    executors: Mutex<Vec<ExecutorJoinHandle<()>>>,
    metrics: EngineMetrics,
    recovery: Vec<RecoveryStats>,
    _lock: DirLock,
}

/// CPUs this process may run on, ascending.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Shards to run when none are configured: one per CPU this process may use.
pub fn default_shards() -> usize {
    allowed_cpus().len().max(1)
}

impl Engine {
    /// Starts the shards and waits for their recovery. Blocking.
    pub fn start(config: EngineConfig, metrics: EngineMetrics) -> Result<Engine> {
        if config.shards == 0 {
            return Err(Error::Startup("the shard count must be at least 1".into()));
        }
        let data = &config.data_path;
        let lock = layout::lock(data)?;
        let current = match layout::read(data)? {
            Some(l) => l,
            None => {
                let l = Layout { shards: config.shards, generation: 0 };
                layout::write(data, l)?;
                l
            }
        };
        let remaining = layout::clean(data, current.generation)?;
        let migrating = current.shards != config.shards;
        let sources = migrating.then(|| remaining.into_iter().map(|(_, segments)| segments).collect::<Vec<_>>());
        if migrating {
            tracing::info!(from = current.shards, to = config.shards, "shard count changed; redistributing datasets");
        }

        let cpus = allowed_cpus();
        let (report_tx, report_rx) = mpsc::channel::<(ShardId, Result<RecoveryStats>)>();
        let mut handles = Vec::with_capacity(config.shards);
        let mut executors = Vec::with_capacity(config.shards);
        for k in 0..config.shards {
            let id = k as ShardId;
            let (tx, inbox) = flume::bounded(SHARD_INBOX_DEPTH_MAX);
            handles.push(ShardHandle { id, tx });
            let plan = Plan {
                shard: id,
                shards: config.shards,
                dir: layout::shard_dir(data, k),
                generation: current.generation,
                migrate_from: sources.clone(),
                policy: config.corruption,
                segment_bytes_max: config.segment_bytes_max.max(SEGMENT_BYTES_MIN),
            };
            let placement = if config.pin_cores { Placement::Fixed(cpus[k % cpus.len()]) } else { Placement::Unbound };
            let metrics = metrics.clone();
            let report = report_tx.clone();
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{k}"))
                .io_memory(SHARD_IO_MEMORY_BYTES)
                .ring_depth(SHARD_RING_DEPTH)
                .spawn(move || async move {
                    match recovery::recover(plan, &metrics).await {
                        Ok((catalog, wal, stats)) => {
                            let _ = report.send((id, Ok(stats)));
                            let shard =
                                Shard { id, catalog: std::rc::Rc::new(std::cell::RefCell::new(catalog)), metrics };
                            shard::serve(shard, wal, inbox).await;
                        }
                        Err(e) => {
                            let _ = report.send((id, Err(e)));
                        }
                    }
                });
            match spawned {
                Ok(h) => executors.push(h),
                Err(e) => {
                    drop(handles);
                    join_all(executors);
                    return Err(Error::Startup(format!(
                        "cannot start shard {k} (a glommio executor needs io_uring and locked memory; \
                         check that the kernel allows io_uring and that RLIMIT_MEMLOCK is at least 512 KiB): {e}"
                    )));
                }
            }
        }
        drop(report_tx);

        let mut recovery = vec![RecoveryStats::default(); config.shards];
        let mut failure = None;
        for _ in 0..config.shards {
            match report_rx.recv() {
                Ok((id, Ok(stats))) => recovery[id as usize] = stats,
                Ok((id, Err(e))) => {
                    tracing::error!(shard = id, error = %e, "shard recovery failed");
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(Error::Startup("a shard stopped during recovery".into()));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // Dropping the handles closes the inboxes; recovered shards seal
            // and stop.
            drop(handles);
            join_all(executors);
            return Err(e);
        }
        if migrating {
            // IMPORTANT: every shard has logged its datasets under the new
            // generation and synced; only now may the old one go.
            let next = Layout { shards: config.shards, generation: current.generation + 1 };
            layout::write(data, next)?;
            layout::clean(data, next.generation)?;
            layout::remove_retired_dirs(data, next.shards)?;
            tracing::info!(shards = next.shards, generation = next.generation, "shard-count change complete");
        }
        Ok(Engine(Arc::new(Inner {
            shards: handles,
            executors: Mutex::new(executors),
            metrics,
            recovery,
            _lock: lock,
        })))
    }

    pub fn shard_count(&self) -> usize {
        self.0.shards.len()
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.0.metrics
    }

    /// What each shard's recovery found, indexed by shard.
    pub fn recovery_stats(&self) -> &[RecoveryStats] {
        &self.0.recovery
    }

    /// The shard that owns `dataset`, after checking the name.
    pub fn shard(&self, dataset: &str) -> Result<&ShardHandle> {
        validate_name(dataset)?;
        Ok(&self.0.shards[shard_for(dataset, self.0.shards.len()) as usize])
    }

    /// Creates `dataset` with `schema` (durably) or checks that it matches.
    pub async fn open(&self, dataset: &str, schema: SchemaRef) -> Result<()> {
        self.shard(dataset)?.open(dataset.to_owned(), schema).await
    }

    /// Queues a batch; the outer future resolves once the shard accepted it,
    /// the inner one once it is durable, with its LSN.
    pub async fn append(
        &self,
        dataset: &str,
        batch: RecordBatch,
        message: IpcMessage,
    ) -> Result<impl std::future::Future<Output = Result<Lsn>> + Send + 'static> {
        self.shard(dataset)?.append(dataset.to_owned(), batch, message).await
    }

    pub async fn get(&self, dataset: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.shard(dataset)?.get(dataset.to_owned()).await
    }

    pub async fn info(&self, dataset: &str) -> Result<DatasetInfo> {
        let mut v = self.shard(dataset)?.info(Some(dataset.to_owned())).await?;
        v.pop().ok_or_else(|| Error::NotFound(dataset.to_owned()))
    }

    /// Every dataset, sorted by name.
    pub async fn list(&self) -> Result<Vec<DatasetInfo>> {
        let all = futures::future::try_join_all(self.0.shards.iter().map(|s| s.info(None))).await?;
        let mut out: Vec<DatasetInfo> = all.into_iter().flatten().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finishes queued writes, seals every WAL and stops the shards. Calls
    /// made afterwards fail with `ShuttingDown`. Waits for the executor
    /// threads, so call it from a blocking context or the end of `main`.
    pub async fn shutdown(&self) -> Result<()> {
        let results = futures::future::join_all(self.0.shards.iter().map(|s| s.shutdown())).await;
        let executors = std::mem::take(&mut *self.0.executors.lock().expect("executor list lock"));
        join_all(executors);
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
    }
}

fn join_all(executors: Vec<ExecutorJoinHandle<()>>) {
    for h in executors {
        if let Err(e) = h.join() {
            tracing::error!(error = %e, "shard thread ended abnormally");
        }
    }
}
