//! Starting and stopping the shards, and routing calls to them.
//!
//! `Engine::start` takes the data directory's lock, settles its layout (see
//! `layout.rs`), spawns one glommio executor per shard pinned to a core, and
//! returns once every shard has replayed its WAL. It is `Send + Sync + Clone`:
//! the gateway's tokio tasks call it directly.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::dataset::{validate_name, DatasetInfo};
use crate::error::{Error, Result};
use crate::io::{IoEngine, RealStorage, StorageRef};
use crate::layout::{self, DirLock, Layout};
use crate::limits::{SEGMENT_BYTES_MIN, SHARD_INBOX_DEPTH_MAX, SHARD_IO_MEMORY_BYTES, SHARD_RING_DEPTH};
use crate::memory::MemoryBudget;
use crate::metrics::{EngineMetrics, ShardLabel};
use crate::routing::shard_for;
use crate::shard::recovery::{self, Plan, RecoveryStats};
use crate::shard::request::{
    Committed, DatasetRead, ProducerSeq, PutStream, ScanFile, ScanRequest, ScanView, ShardStats, SnapshotReport,
};
use crate::shard::{self, ShardHandle, ShardSetup};
use crate::snapshot::{self as snapshots, SnapshotCompression};
use crate::wal::replay::CorruptionPolicy;
use crate::wal::IpcMessage;
use crate::ShardId;

/// A dataset's rows as [`Engine::scan`] streams them.
pub struct Scan {
    pub schema: SchemaRef,
    pub batches: BoxStream<'static, Result<RecordBatch>>,
}

/// Which datasets this engine owns, when it is one of several nodes
/// sharing a snapshot store: it loads only their tables.
#[derive(Clone)]
pub struct Owns(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Owns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owns(..)")
    }
}

/// Everything the engine needs; reads no environment.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_path: PathBuf,
    /// Root of the snapshots' Delta tables: a local directory (the slow
    /// volume), or an object-store URL (`s3://bucket/prefix`, `gs://`,
    /// `az://`) whose settings come from the standard environment variables.
    pub snapshot_path: PathBuf,
    /// With several nodes on one snapshot store: the datasets this one
    /// owns (`None`: all of them).
    pub owns: Option<Owns>,
    /// The object store a remote `snapshot_path` names, instead of one
    /// built from the environment (tests: the simulated store).
    pub snapshot_store: Option<Arc<dyn object_store::ObjectStore>>,
    /// How long files a compaction replaced stay for readers of older table
    /// versions before VACUUM deletes them.
    pub snapshot_retention: Duration,
    /// This node's name in the snapshots' `txn` app ids.
    pub node: String,
    pub snapshot_interval: Duration,
    pub snapshot_compression: SnapshotCompression,
    /// Bytes of Arrow data held in memory across all shards (0 = no limit).
    pub max_memory: u64,
    pub shards: usize,
    /// Length of every WAL segment file (preallocated); a commit that would
    /// not fit goes to the next segment.
    pub segment_bytes_max: u64,
    /// Sealed segments that snapshots covered are kept, up to this many per
    /// shard, as free files for new segments instead of being deleted.
    pub wal_recycle_segments: usize,
    pub corruption: CorruptionPolicy,
    /// Pin shard `k` to the `k`-th CPU this process may run on.
    pub pin_cores: bool,
    /// How long a write waits under the memory limit while snapshots free
    /// nothing, before it is refused with `Overloaded`.
    pub backpressure_timeout: Duration,
    /// How long an idle shard polls before it sleeps: a request arriving
    /// meanwhile skips the thread wake-up (tens of µs), at the price of a
    /// busy core for that long after each burst. Zero: sleep at once.
    pub shard_spin: Duration,
    /// The WAL volume's file system (`io::RealStorage`, or the simulator
    /// in tests).
    pub storage: StorageRef,
    /// glommio `io_memory` per shard: registered DMA buffers for commits
    /// and reads (pinned at start). The simulator uses none.
    pub io_memory_bytes: usize,
}

impl EngineConfig {
    /// A small config for tests: one shard per `shards`, 8 MiB segments.
    pub fn test_config(data_path: impl Into<PathBuf>, shards: usize) -> Self {
        let data_path: PathBuf = data_path.into();
        Self {
            snapshot_path: data_path.join("snapshots"),
            snapshot_store: None,
            owns: None,
            snapshot_interval: Duration::from_secs(3600),
            snapshot_retention: snapshots::DEFAULT_RETENTION,
            node: "0".into(),
            snapshot_compression: SnapshotCompression::default(),
            max_memory: 0,
            data_path,
            shards,
            segment_bytes_max: 8 * crate::limits::MIB,
            wal_recycle_segments: crate::limits::WAL_RECYCLE_SEGMENTS_DEFAULT,
            corruption: CorruptionPolicy::Refuse,
            pin_cores: false,
            backpressure_timeout: Duration::from_secs(30),
            shard_spin: Duration::ZERO,
            storage: Arc::new(RealStorage::new(IoEngine::Auto)),
            io_memory_bytes: SHARD_IO_MEMORY_BYTES,
        }
    }
}

#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    shards: Vec<ShardHandle>,
    executors: Mutex<Vec<ExecutorJoinHandle<()>>>,
    metrics: EngineMetrics,
    budget: Arc<MemoryBudget>,
    recovery: Vec<RecoveryStats>,
    settings: Mutex<Settings>,
    health: tokio::sync::watch::Receiver<crate::health::Health>,
    snapshot_root: PathBuf,
    _lock: DirLock,
    _snapshot_lock: Option<DirLock>,
    /// Dropped after the shards (field order).
    _store: Arc<snapshots::SnapshotStore>,
}

/// The settings that can change while running (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub snapshot_interval: Duration,
    /// Bytes across all shards; 0 = no limit.
    pub max_memory: u64,
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
    pub fn start(mut config: EngineConfig, metrics: EngineMetrics) -> Result<Engine> {
        if config.shards == 0 {
            return Err(Error::Startup("the shard count must be at least 1".into()));
        }
        // IMPORTANT: glommio opens directories by absolute path only (a
        // relative one fails with EBADF), and the defaults are relative.
        config.data_path =
            std::path::absolute(&config.data_path).map_err(Error::io("resolving data path", &config.data_path, 0))?;
        let location = snapshots::Location::parse(&config.snapshot_path)?;
        if let snapshots::Location::Local(p) = &location {
            config.snapshot_path = std::path::absolute(p).map_err(Error::io("resolving snapshot path", p, 0))?;
        }
        let data = &config.data_path;
        let storage = config.storage.clone();
        tracing::info!(engine = storage.engine_name(), "WAL I/O engine");
        metrics.io_engine.get_or_create(&crate::metrics::EngineLabel { engine: storage.engine_name().into() }).set(1);
        let lock = layout::lock(&*storage, data)?;
        let current = match layout::read(&*storage, data)? {
            Some(l) => l,
            None => {
                let l = Layout { shards: config.shards, generation: 0 };
                layout::write(&*storage, data, l)?;
                l
            }
        };
        let remaining = layout::clean(&*storage, data, current.generation)?;
        let migrating = current.shards != config.shards;
        let sources = migrating.then(|| remaining.into_iter().map(|(_, segments)| segments).collect::<Vec<_>>());
        if migrating {
            tracing::info!(from = current.shards, to = config.shards, "shard count changed; redistributing datasets");
        }

        let mut snapshot_full = false;
        let mut snapshot_lock = None;
        if location.local().is_some() {
            std::fs::create_dir_all(&config.snapshot_path).map_err(Error::io(
                "creating snapshot directory",
                &config.snapshot_path,
                0,
            ))?;
            // Before the replay: a volume that cannot take a file stops the
            // start; a full one does not (snapshot::probe_root says why).
            snapshot_full = match snapshots::probe_root(&config.snapshot_path)? {
                snapshots::RootProbe::Writable => false,
                snapshots::RootProbe::Full(e) => {
                    tracing::warn!(
                        path = %config.snapshot_path.display(),
                        error = %e,
                        "the snapshot volume is full: starting, but snapshots fail (and the WAL is kept) until space \
                         is freed; longbow_snapshot_failing is 1"
                    );
                    true
                }
            };
            // IMPORTANT: before the tables are read, which finishes
            // interrupted drops: another server's snapshot in progress.
            snapshot_lock = Some(snapshots::lock_root(&config.snapshot_path)?);
        }
        for k in 0..config.shards {
            metrics.snapshot_failing.get_or_create(&ShardLabel { shard: k as u32 }).set(snapshot_full as i64);
        }
        let store = snapshots::SnapshotStore::open(
            if location.local().is_some() {
                snapshots::Location::Local(config.snapshot_path.clone())
            } else {
                location
            },
            config.snapshot_store.clone(),
            &config.node,
            config.snapshot_retention,
            config.snapshot_compression,
        )?;
        if store.location().local().is_some() {
            let migrated = snapshots::migrate(&config.snapshot_path, &store, config.shards)?;
            if !migrated.is_empty() {
                tracing::info!(datasets = migrated.len(), "migrated snapshot directories into Delta tables");
            }
        }
        let mut manifests: Vec<Vec<snapshots::Manifest>> = vec![Vec::new(); config.shards];
        for t in store.block_on(store.clone().load_all(config.owns.clone(), config.shards))? {
            manifests[shard_for(&t.manifest.dataset, config.shards).index()].push(t.manifest);
        }
        let budget = Arc::new(MemoryBudget::new(config.max_memory, config.backpressure_timeout));
        metrics.memory_limit_bytes.set(config.max_memory as i64);

        let (health_tx, health) = crate::health::HealthTx::new();
        let cpus = allowed_cpus();
        let (report_tx, report_rx) = mpsc::channel::<(ShardId, Result<RecoveryStats>)>();
        let mut handles = Vec::with_capacity(config.shards);
        let mut executors = Vec::with_capacity(config.shards);
        for k in 0..config.shards {
            let id = ShardId(k as u32);
            let (tx, inbox) = flume::bounded(SHARD_INBOX_DEPTH_MAX);
            handles.push(ShardHandle { id, tx, backpressure_timeout: config.backpressure_timeout });
            let plan = Plan {
                storage: storage.clone(),
                shard: id,
                shards: config.shards,
                dir: layout::shard_dir(data, k),
                generation: current.generation,
                migrate_from: sources.clone(),
                policy: config.corruption,
                segment_bytes_max: config.segment_bytes_max.max(SEGMENT_BYTES_MIN),
                recycle_segments: config.wal_recycle_segments,
                manifests: std::mem::take(&mut manifests[k]),
            };
            let setup = ShardSetup {
                id,
                metrics: metrics.clone(),
                snapshot_root: config.snapshot_path.clone(),
                store: store.clone(),
                snapshot_interval: config.snapshot_interval,
                budget: budget.clone(),
                wal_dir: layout::shard_dir(data, k),
                health: health_tx.clone(),
                dropping: Vec::new(),
            };
            let placement = if config.pin_cores { Placement::Fixed(cpus[k % cpus.len()]) } else { Placement::Unbound };
            let metrics = metrics.clone();
            let report = report_tx.clone();
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{k}"))
                .io_memory(config.io_memory_bytes)
                .ring_depth(SHARD_RING_DEPTH)
                .spin_before_park(config.shard_spin)
                // Snapshot encoding runs there: let the OS place it, not on
                // the shard's own core.
                .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
                .spawn(move || async move {
                    // Marks the shard down when this thread ends, by a
                    // return or a panic: health turns NOT_SERVING.
                    let _guard = setup.health.guard(id);
                    match recovery::recover(plan, &metrics).await {
                        Ok(r) => {
                            let mut setup = setup;
                            for name in &r.stale_snapshot_dirs {
                                // Files of a dropped dataset whose removal a crash interrupted.
                                if let Err(e) = setup.store.io(setup.store.clone().drop_table(name.clone())).await {
                                    tracing::warn!(dataset = name, error = %e, "could not remove a dropped dataset's snapshot table; retried, and the name cannot be created again until then");
                                    setup.dropping.push((name.clone(), Arc::new(e)));
                                }
                            }
                            let _ = report.send((id, Ok(r.stats)));
                            // Let the engine see a channel error if another shard dies.
                            drop(report);
                            shard::serve(setup, r.catalog, r.wal, inbox).await;
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
                    return Err(Error::startup(
                        format!(
                            "cannot start shard {k} (a glommio executor needs io_uring and locked memory; \
                             check that the kernel allows io_uring and that RLIMIT_MEMLOCK is at least 512 KiB)"
                        ),
                        e.to_string(),
                    ));
                }
            }
        }
        drop(report_tx);

        let mut recovery = vec![RecoveryStats::default(); config.shards];
        let mut failure = None;
        for _ in 0..config.shards {
            match report_rx.recv() {
                Ok((id, Ok(stats))) => recovery[id.index()] = stats,
                Ok((id, Err(e))) => {
                    tracing::error!(shard = %id, error = %e, "shard recovery failed");
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
            layout::write(&*storage, data, next)?;
            // Not `clean`: the shards run, and may be preallocating files.
            layout::remove_other_generations(&*storage, data, next.generation)?;
            layout::remove_retired_dirs(&*storage, data, next.shards)?;
            tracing::info!(shards = next.shards, generation = next.generation, "shard-count change complete");
        }
        let settings =
            Mutex::new(Settings { snapshot_interval: config.snapshot_interval, max_memory: config.max_memory });
        Ok(Engine(Arc::new(Inner {
            shards: handles,
            executors: Mutex::new(executors),
            metrics,
            budget,
            recovery,
            settings,
            health,
            snapshot_root: config.snapshot_path.clone(),
            _lock: lock,
            _snapshot_lock: snapshot_lock,
            _store: store,
        })))
    }

    /// Which shards do not serve; changes as soon as one is poisoned,
    /// exits or panics.
    pub fn health(&self) -> tokio::sync::watch::Receiver<crate::health::Health> {
        self.0.health.clone()
    }

    /// Makes the shard owning `dataset` panic (tests of what a panic does).
    #[cfg(feature = "fault-injection")]
    pub fn panic_shard(&self, dataset: &str) -> Result<()> {
        self.shard(dataset)?.tx.try_send(crate::shard::request::Request::Panic).map_err(|_| Error::ShuttingDown)
    }

    /// The snapshot store seen from its root: `<dataset>/<file>` paths,
    /// local or on object storage.
    pub fn snapshot_objects(&self) -> Arc<dyn object_store::ObjectStore> {
        self.0._store.rooted()
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
        Ok(&self.0.shards[shard_for(dataset, self.0.shards.len()).index()])
    }

    /// Creates `dataset` with `schema` (durably) or checks that it matches.
    pub async fn open(&self, dataset: &str, schema: SchemaRef) -> Result<()> {
        self.shard(dataset)?.open(dataset.to_owned(), schema).await
    }

    /// Queues a batch of `stream` (with its idempotent producer's sequence
    /// number, if any); the outer future resolves once the shard accepted
    /// it, the inner one once it is durable, with its LSN.
    pub async fn append(
        &self,
        dataset: &str,
        batch: RecordBatch,
        message: IpcMessage,
        producer: Option<ProducerSeq>,
        stream: &PutStream,
    ) -> Result<impl std::future::Future<Output = Result<Committed>> + Send + 'static> {
        self.shard(dataset)?.append(dataset.to_owned(), batch, message, producer, stream.clone()).await
    }

    /// The memory budget all shards share.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.0.budget
    }

    /// Every row of `dataset` as of now, in LSN order: evicted rows read
    /// back from its snapshot table's files (ranged reads, a row group at a
    /// time, decoded as the stream is polled; files a compaction replaced
    /// stay readable for the retention period), then the batches in
    /// memory. The stream holds a row group at most and stops reading when
    /// dropped.
    pub async fn scan(&self, dataset: &str) -> Result<Scan> {
        let DatasetRead { schema, files, batches } = self.shard(dataset)?.get(dataset.to_owned()).await?;
        let cold = snapshots::read_objects(files, schema.clone());
        let hot = futures::stream::iter(batches.into_iter().map(Ok));
        Ok(Scan { schema, batches: cold.chain(hot).boxed() })
    }

    /// The rows of one snapshot file of a [`ScanView`], read as
    /// [`Engine::scan`] reads them, checked against the row count its
    /// table records.
    pub async fn read_file(&self, schema: SchemaRef, file: &ScanFile) -> Result<Vec<RecordBatch>> {
        let object = snapshots::SnapshotObject {
            store: self.snapshot_objects(),
            path: object_store::path::Path::from(file.path.as_str()),
            bytes: file.bytes,
        };
        let batches: Vec<RecordBatch> = snapshots::read_objects(vec![object], schema).try_collect().await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows as u64 != file.rows {
            return Err(Error::Corrupt {
                path: PathBuf::from(&file.path),
                offset: 0,
                reason: format!("holds {rows} rows, its table says {}", file.rows),
            });
        }
        Ok(batches)
    }

    /// A consistent view of `dataset` for a query or a change feed: its
    /// evicted rows' snapshot files and its batches in memory, with LSNs.
    pub async fn view(&self, dataset: &str, scan: ScanRequest) -> Result<ScanView> {
        self.shard(dataset)?.scan(dataset.to_owned(), scan).await
    }

    /// The snapshot root: [`ScanFile::path`](crate::shard::request::ScanFile)s are relative to it.
    pub fn snapshot_root(&self) -> &std::path::Path {
        &self.0.snapshot_root
    }

    /// Snapshots one dataset or all; returns once the files are durable.
    pub async fn snapshot(&self, dataset: Option<&str>) -> Result<SnapshotReport> {
        let reports = match dataset {
            Some(name) => vec![self.shard(name)?.snapshot(Some(name.to_owned())).await?],
            None => futures::future::try_join_all(self.0.shards.iter().map(|s| s.snapshot(None))).await?,
        };
        Ok(reports.into_iter().fold(SnapshotReport::default(), |mut a, r| {
            a.datasets += r.datasets;
            a.files_written += r.files_written;
            a.rows_written += r.rows_written;
            a.bytes_written += r.bytes_written;
            a.segments_deleted += r.segments_deleted;
            a.bytes_evicted += r.bytes_evicted;
            a
        }))
    }

    /// Hands a dataset another node owns now over to it: what its table
    /// lacks of the rows here is committed to it, then this node forgets the
    /// dataset with a forget record in the WAL, so that a restart does not
    /// replay the records (they go with the next covered segments). Run
    /// again after a failure it commits nothing twice (the table's `txn` of
    /// this shard).
    pub async fn hand_over(&self, dataset: &str) -> Result<()> {
        self.shard(dataset)?.hand_over(dataset.to_owned()).await
    }

    /// Forgets a dataset another node owns now without handing its rows
    /// here over: the owner is dropping it. Durable (a forget record in the
    /// WAL, so a restart does not replay the rows and hand them over into a
    /// table made again since), and ordered after any handover or snapshot
    /// of it that is under way. `true` if this node held rows of it.
    pub async fn forget(&self, dataset: &str) -> Result<bool> {
        self.shard(dataset)?.forget(dataset.to_owned()).await
    }

    /// Reads a dataset's table again, after another node handed rows over
    /// into it: its files join what this node serves (as evicted rows).
    pub async fn refresh(&self, dataset: &str) -> Result<()> {
        self.shard(dataset)?.refresh(dataset.to_owned()).await
    }

    /// Drops a dataset durably: WAL tombstone, memory, snapshot files.
    pub async fn drop_dataset(&self, dataset: &str) -> Result<()> {
        self.shard(dataset)?.drop_dataset(dataset.to_owned()).await
    }

    /// Per-shard figures, indexed by shard.
    pub async fn shard_stats(&self) -> Result<Vec<ShardStats>> {
        futures::future::try_join_all(self.0.shards.iter().map(|s| s.stats())).await
    }

    pub fn settings(&self) -> Settings {
        *self.0.settings.lock().expect("settings lock")
    }

    /// Applies new reloadable settings to every shard.
    pub async fn reconfigure(&self, new: Settings) -> Result<()> {
        *self.0.settings.lock().expect("settings lock") = new;
        self.0.metrics.memory_limit_bytes.set(new.max_memory as i64);
        self.0.budget.set_limit(new.max_memory);
        for s in &self.0.shards {
            s.configure(new.snapshot_interval).await?;
        }
        Ok(())
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
        // IMPORTANT: before the snapshot root's lock goes (with the engine).
        self.0._store.shutdown(Duration::from_secs(30));
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
