//! The cold tier as Delta Lake tables: one table per dataset at
//! `<root>/<dataset>/`, on any `object_store` (a local directory, `s3://`,
//! `gs://`, `az://`).
//!
//! ```text
//! <root>/<dataset>/_delta_log/<version, 20 digits>.json   the commits
//! <root>/<dataset>/part-<min lsn>-<max lsn>-n<node>.parquet  rows a node logged in that range
//! <root>/<dataset>/_longbow_dropped                          a drop in progress
//! ```
//!
//! Longbow writes its own Parquet files and commits them itself
//! (`CommitBuilder`), without DataFusion:
//! - a **snapshot** uploads one file (multipart past 5 MiB) and commits
//!   its `add` with a `txn` action whose app id names this node and shard
//!   and whose version is the covered LSN. A retried commit whose first try
//!   landed after all (a lost reply, a crash) finds that version and adds
//!   nothing; two commits of the same app racing are refused by Delta's
//!   conflict checker, and the loser finds the winner's version.
//! - the commit's `commitInfo` carries `longbow`: the dataset's Arrow
//!   schema, the covered LSN the WAL may drop up to, and the idempotent
//!   producers' newest sequence numbers (the manifest of earlier versions,
//!   without its file list: Delta's active files are the list).
//! - a **compaction** is a rewrite commit: `add` of the merged file and
//!   `remove` of its sources, `dataChange: false`. Removed files stay for
//!   the retention period and are deleted by VACUUM after it, so a reader
//!   on an older version never loses a file.
//! - a **drop** writes `_longbow_dropped`, deletes the log, then the files,
//!   then the marker: a start that finds the marker finishes the drop, and
//!   a half-deleted log is never loaded.
//!
//! Everything here runs on the store's own small tokio runtime (the object
//! stores' HTTP clients need tokio; shards are glommio): a shard awaits
//! [`SnapshotStore::io`]. Its threads run at nice 10, as the encoding of
//! snapshots always did.
//!
//! On a local directory `object_store` does not fsync, so the store does:
//! each data file before its commit, each commit file and `_delta_log`
//! after it. Only then may the WAL drop what the commit covers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::logstore::{default_logstore, logstore_factories, LogStoreFactory, LogStoreRef, StorageConfig};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
#[allow(deprecated)] // its replacement (`SpawnedReader`) is not released yet
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_writer::AsyncArrowWriter;
use url::Url;

use super::{Manifest, SnapshotCompression};
use crate::dataset::{ProducerSeqs, SnapshotFile};
use crate::error::{Error, Result};
use crate::wal::Lsn;

mod compact;
mod read;
mod write;

pub use compact::{compaction_run, CompactionWrite, COMPACT_FILE_BYTES, COMPACT_RUN_FILES};
pub use read::{file_schema, read_objects};
pub use write::{SnapshotOutcome, SnapshotWrite};

/// The key of Longbow's entry in a commit's `commitInfo`.
const COMMIT_INFO_KEY: &str = "longbow";
/// Written first and deleted last by a drop.
const DROP_MARKER: &str = "_longbow_dropped";
/// Threads of the store's runtime: uploads are I/O bound, encoding is not,
/// and both yield to the shards (nice 10).
const IO_THREADS: usize = 2;
/// How long a removed file outlives its removal by default (VACUUM).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(15 * 60);
/// Size of an upload's multipart parts (S3's minimum is 5 MiB); a file
/// smaller than this is one plain PUT.
const UPLOAD_PART_BYTES: usize = 5 << 20;
/// Parts of one upload in flight at once.
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;
/// Rows per batch read back.
const READ_BATCH_ROWS: usize = 8192;
/// Commits a snapshot looks back through for Longbow's `commitInfo`
/// (others are VACUUM's, or a foreign writer's).
const HISTORY_LOOKBACK: usize = 64;

/// Where the snapshots live: a local directory or an object-store URL.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Url),
}

impl Location {
    /// `s3://`, `gs://`, `az://`, `abfss://`, `azure://` and `file://` are
    /// URLs; anything else is a local path.
    pub fn parse(path: &std::path::Path) -> Result<Self> {
        let s = path.to_string_lossy();
        let remote = ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://", "azure://"];
        if remote.iter().any(|p| s.starts_with(p)) {
            let url = Url::parse(s.trim_end_matches('/'))
                .map_err(|e| Error::startup(format!("LONGBOW_SNAPSHOT_PATH {s} is not a valid URL"), e))?;
            return Ok(Self::Remote(url));
        }
        if let Some(p) = s.strip_prefix("file://") {
            return Ok(Self::Local(PathBuf::from(p)));
        }
        Ok(Self::Local(path.to_owned()))
    }

    pub fn local(&self) -> Option<&std::path::Path> {
        match self {
            Self::Local(p) => Some(p),
            Self::Remote(_) => None,
        }
    }
}

/// A snapshot file as a reader needs it.
#[derive(Debug, Clone)]
pub struct SnapshotObject {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
    pub bytes: u64,
}

/// What a table says about its dataset at startup.
pub struct TableState {
    pub manifest: Manifest,
    pub version: u64,
}

/// The object store holding every dataset's table, and the runtime its
/// I/O runs on.
pub struct SnapshotStore {
    location: Location,
    /// Rooted at the bucket (or the filesystem root).
    store: Arc<dyn ObjectStore>,
    /// The snapshot root inside `store`.
    prefix: ObjectPath,
    /// The root as a URL, without a trailing slash.
    root_url: Url,
    /// This node's name in commits and file names.
    node: String,
    /// `longbow-<node>-shard-` ; the shard's number follows.
    app_prefix: String,
    pub retention: Duration,
    pub compression: SnapshotCompression,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Loaded tables, newest state this process committed or read.
    tables: Mutex<HashMap<String, DeltaTable>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").field("root", &self.root_url.as_str()).finish()
    }
}

impl SnapshotStore {
    /// Stops the store's runtime once the work in flight (an upload, a
    /// commit's file writes) has finished, up to `timeout`. Called at
    /// shutdown before the snapshot root's lock is released: a commit
    /// still landing after that could be missed by the next server, which
    /// read the table a moment before (the power-loss simulation caught
    /// one: the restarted engine loaded version 3 while the old one's
    /// version 4 landed). On its own thread, since a runtime cannot be shut
    /// down from within an asynchronous context.
    pub fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::thread::spawn(move || rt.shutdown_timeout(timeout)).join();
        }
    }
}

impl Drop for SnapshotStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

/// Delta's log store for schemes `deltalake` knows only through its cloud
/// crates (which would bring the AWS SDK): the default one, with
/// conditional puts (`If-None-Match`) for commits.
struct PlainLogStores;

impl LogStoreFactory for PlainLogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

fn delta_err<'a>(op: &'static str, dataset: &'a str) -> impl FnOnce(DeltaTableError) -> Error + 'a {
    move |e| Error::store(format!("{op} of {dataset}"), e)
}

fn store_err<'a>(op: &'static str, path: &'a ObjectPath) -> impl FnOnce(object_store::Error) -> Error + 'a {
    move |e| Error::store(format!("{op} {path}"), e)
}

fn parquet_err<'a>(op: &'static str, path: &'a ObjectPath) -> impl FnOnce(parquet::errors::ParquetError) -> Error + 'a {
    move |e| Error::store(format!("{op} {path}"), e)
}

/// `part-<min>-<max>-n<node>.parquet` (and `part-<min>-<max>.parquet` and
/// `part-<max>.parquet` of earlier versions): `(min, max)`, `min` 0 when
/// unnamed.
pub fn parse_file_name(name: &str) -> Option<(Lsn, Lsn)> {
    let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = stem.splitn(3, '-');
    let a: Lsn = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some((Lsn::ZERO, a)),
        Some(b) => Some((a, b.parse().ok()?)),
    }
}

/// A file of `node` holding the rows logged from `min_lsn` to `max_lsn`.
/// The node is in the name because LSNs are a node's own: after a dataset
/// moved between nodes, both write into its table.
pub fn file_name(node: &str, min_lsn: Lsn, max_lsn: Lsn) -> String {
    format!("part-{min_lsn:020}-{max_lsn:020}-n{node}.parquet")
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl SnapshotStore {
    /// Opens the store at `location` (the object store's settings come from
    /// the standard environment variables: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`). `node` names this server
    /// in the commits' app ids. `store`, if given, is the object store a
    /// remote location names (the environment is not read then), or for a
    /// local one a store over the local file system by absolute paths.
    pub fn open(
        location: Location,
        store: Option<Arc<dyn ObjectStore>>,
        node: &str,
        retention: Duration,
        compression: SnapshotCompression,
    ) -> Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("longbow-snapshot-io")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()
            .map_err(|e| Error::startup("starting the snapshot I/O runtime", e))?;
        let handle = runtime.handle().clone();
        let (store, prefix, root_url): (Arc<dyn ObjectStore>, ObjectPath, Url) = match &location {
            Location::Local(path) => {
                std::fs::create_dir_all(path).map_err(Error::io("creating snapshot directory", path, 0))?;
                let abs = std::fs::canonicalize(path).map_err(Error::io("resolving snapshot directory", path, 0))?;
                let url = Url::from_directory_path(&abs)
                    .map_err(|()| Error::Startup(format!("snapshot path {} is not absolute", abs.display())))?;
                let prefix = ObjectPath::from_absolute_path(&abs)
                    .map_err(|e| Error::startup(format!("snapshot path {}", abs.display()), e))?;
                let url = Url::parse(url.as_str().trim_end_matches('/')).expect("a file URL");
                (store.unwrap_or_else(|| Arc::new(object_store::local::LocalFileSystem::new())), prefix, url)
            }
            Location::Remote(url) => {
                let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match (store, url.scheme())
                {
                    (Some(given), _) => Ok(given),
                    (None, "s3" | "s3a") => object_store::aws::AmazonS3Builder::from_env()
                        .with_url(url.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                    (None, "gs") => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                    (None, _) => object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                };
                let store = built.map_err(|e| Error::startup(format!("snapshot store {url}"), e))?;
                let prefix = ObjectPath::from_url_path(url.path())
                    .map_err(|e| Error::startup(format!("snapshot store {url}"), e))?;
                let scheme = Url::parse(&format!("{}://", url.scheme())).expect("a scheme");
                logstore_factories().insert(scheme, Arc::new(PlainLogStores));
                (store, prefix, url.clone())
            }
        };
        let app_prefix = format!("longbow-{node}-shard-");
        Ok(Arc::new(Self {
            location,
            store,
            prefix,
            root_url,
            node: node.to_owned(),
            app_prefix,
            retention,
            compression,
            runtime: Mutex::new(Some(runtime)),
            handle,
            tables: Mutex::new(HashMap::new()),
        }))
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store seen from the snapshot root: paths `<dataset>/<file>`,
    /// on a local directory or a bucket alike (the SQL tables read the
    /// files through it).
    pub fn rooted(&self) -> Arc<dyn ObjectStore> {
        Arc::new(object_store::prefix::PrefixStore::new(self.store.clone(), self.prefix.clone()))
    }

    pub fn root_url(&self) -> &Url {
        &self.root_url
    }

    /// The `txn` app id of a shard.
    pub fn app_id(&self, shard: crate::ShardId) -> String {
        format!("{}{shard}", self.app_prefix)
    }

    /// Runs `fut` on the store's runtime; awaitable from any executor.
    pub async fn io<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Runs `fut` on the store's runtime and blocks for it (startup, tools).
    pub fn block_on<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or(Err(Error::ShuttingDown))
    }

    fn table_path(&self, dataset: &str) -> ObjectPath {
        self.prefix.clone().join(dataset)
    }

    fn file_path(&self, dataset: &str, name: &str) -> ObjectPath {
        self.table_path(dataset).clone().join(name)
    }

    pub fn table_url(&self, dataset: &str) -> Url {
        Url::parse(&format!("{}/{dataset}", self.root_url)).expect("a table URL")
    }

    /// A local file's path, for fsync.
    fn local_path(&self, path: &ObjectPath) -> Option<PathBuf> {
        self.location.local().map(|_| PathBuf::from(format!("/{path}")))
    }

    /// What a reader of `dataset`'s file needs.
    pub fn object(&self, dataset: &str, file: &SnapshotFile) -> SnapshotObject {
        SnapshotObject { store: self.store.clone(), path: self.file_path(dataset, &file.name), bytes: file.bytes }
    }

    fn log_store(&self, dataset: &str) -> Result<LogStoreRef> {
        let url = self.table_url(dataset);
        deltalake::DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.with_storage_backend(self.store.clone(), url).build_storage())
            .map_err(delta_err("opening the table", dataset))
    }

    /// The dataset's table, loaded if not cached; `None` if there is none.
    async fn table(&self, dataset: &str) -> Result<Option<DeltaTable>> {
        if let Some(t) = self.tables.lock().expect("tables").get(dataset) {
            return Ok(Some(t.clone()));
        }
        // An empty or missing `_delta_log`: no table (the kernel reports a
        // missing local directory as an invalid location, not as no table).
        let log = self.table_path(dataset).join("_delta_log");
        let mut listed = self.store.list(Some(&log));
        match listed.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(store_err("listing", &log)(e)),
            Some(Ok(_)) => {}
        }
        drop(listed);
        let mut table = DeltaTable::new(self.log_store(dataset)?);
        match table.load().await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(delta_err("loading the table", dataset)(e)),
        }
        self.tables.lock().expect("tables").insert(dataset.to_owned(), table.clone());
        Ok(Some(table))
    }

    /// The table as of its latest version. The cached one is as of this
    /// store's own last commit: another writer's, or one of an earlier try
    /// whose answer was lost, may have landed since.
    async fn current_table(&self, dataset: &str) -> Result<Option<DeltaTable>> {
        let Some(mut table) = self.table(dataset).await? else { return Ok(None) };
        table.update_state().await.map_err(delta_err("updating the table", dataset))?;
        self.remember(dataset, table.clone());
        Ok(Some(table))
    }

    fn forget(&self, dataset: &str) {
        self.tables.lock().expect("tables").remove(dataset);
    }

    fn remember(&self, dataset: &str, table: DeltaTable) {
        self.tables.lock().expect("tables").insert(dataset.to_owned(), table);
    }

    /// Creates the dataset's table (Delta schema from the Arrow one) if none.
    async fn create_table(&self, dataset: &str, schema: &SchemaRef) -> Result<DeltaTable> {
        use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
        let delta_schema = StructType::try_from_arrow(schema.as_ref())
            .map_err(|e| Error::store(format!("dataset {dataset}: its schema has no Delta Lake equivalent"), e))?;
        let table = DeltaTable::new(self.log_store(dataset)?)
            .create()
            .with_columns(delta_schema.fields().cloned())
            .with_table_name(dataset)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(delta_err("creating the table", dataset))?;
        self.sync_log(dataset, table.version()).await?;
        Ok(table)
    }

    /// On a local directory: makes commit `version` and `_delta_log`
    /// durable (object_store's LocalFileSystem does not fsync).
    async fn sync_log(&self, dataset: &str, version: Option<u64>) -> Result<()> {
        let (Some(dir), Some(version)) = (self.local_path(&self.table_path(dataset)), version) else { return Ok(()) };
        tokio::task::spawn_blocking(move || {
            let log = dir.join("_delta_log");
            let commit = log.join(format!("{version:020}.json"));
            let f = std::fs::File::open(&commit).map_err(Error::io("opening Delta commit", &commit, 0))?;
            f.sync_all().map_err(Error::io("fsyncing Delta commit", &commit, 0))?;
            crate::layout::sync_real_dir(&log)?;
            crate::layout::sync_real_dir(&dir)?;
            if let Some(root) = dir.parent() {
                crate::layout::sync_real_dir(root)?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.into()))
    }

    /// Removes the dataset's table: marker, log, files, marker.
    pub async fn drop_table(self: Arc<Self>, dataset: String) -> Result<()> {
        self.forget(&dataset);
        let table = self.table_path(&dataset);
        let marker = table.clone().join(DROP_MARKER);
        let listed: Vec<_> = self
            .store
            .list(Some(&table))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(store_err("listing", &table))?;
        if listed.is_empty() {
            return Ok(());
        }
        self.store.put(&marker, bytes::Bytes::new().into()).await.map_err(store_err("writing", &marker))?;
        self.sync_local(&marker).await?;
        let log = table.clone().join("_delta_log");
        let (log_files, data): (Vec<_>, Vec<_>) =
            listed.into_iter().filter(|p| *p != marker).partition(|p| p.prefix_matches(&log));
        for batch in [log_files, data] {
            let mut deleted = self.store.delete_stream(futures::stream::iter(batch.into_iter().map(Ok)).boxed());
            while let Some(r) = deleted.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err("deleting under", &table)(e)),
                }
            }
        }
        self.store.delete(&marker).await.map_err(store_err("deleting", &marker))?;
        if let Some(dir) = self.local_path(&table) {
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
                match dir.parent() {
                    Some(root) => crate::layout::sync_real_dir(root),
                    None => Ok(()),
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.into()))?;
        }
        Ok(())
    }

    async fn sync_local(&self, path: &ObjectPath) -> Result<()> {
        let Some(local) = self.local_path(path) else { return Ok(()) };
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&local).map_err(Error::io("opening", &local, 0))?;
            f.sync_all().map_err(Error::io("fsyncing", &local, 0))?;
            crate::layout::sync_real_dir(local.parent().expect("a parent"))
        })
        .await
        .unwrap_or_else(|e| Err(e.into()))
    }

    /// The datasets that have a table (or a drop marker) under the root.
    pub async fn list_datasets(self: Arc<Self>) -> Result<Vec<String>> {
        let listed =
            self.store.list_with_delimiter(Some(&self.prefix)).await.map_err(store_err("listing", &self.prefix))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|n| !n.starts_with('.') && !n.starts_with('_'))
            .collect())
    }

    /// Reads every table under the root (at startup), or those `owns` keeps:
    /// what each dataset's recovery needs (`shards`: this node's shard
    /// count, which picks each dataset's app id). A drop a crash
    /// interrupted is finished; a directory with no Delta log is skipped.
    pub async fn load_all(
        self: Arc<Self>,
        owns: Option<crate::engine::Owns>,
        shards: usize,
    ) -> Result<Vec<TableState>> {
        let mut out = Vec::new();
        for name in self.clone().list_datasets().await? {
            // Another node's table: that node loads it (and finishes its drop).
            if owns.as_ref().is_some_and(|o| !(o.0)(&name)) {
                continue;
            }
            let marker = self.table_path(&name).clone().join(DROP_MARKER);
            if self.store.head(&marker).await.is_ok() {
                tracing::info!(dataset = name, "finishing a drop a crash interrupted");
                self.clone().drop_table(name).await?;
                continue;
            }
            if let Err(e) = self.vacuum_full(&name).await {
                tracing::warn!(dataset = name, error = %e, "vacuum at start failed; retried at the next");
            }
            if let Some(state) = self.load(&name, Some(crate::routing::shard_for(&name, shards))).await? {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// One table's state as `shard` of this node sees it: its active files,
    /// the newest Longbow commit's schema and producers, and the LSN up to
    /// which this node's rows are in the table.
    ///
    /// LSNs are a node's own. When the newest commit is another node's (the
    /// dataset moved here), the covered LSN is this shard's `txn` version
    /// (zero if it never wrote), and files whose LSNs lie above it are
    /// another node's: they get LSN 0, below every row of this node, so
    /// they count as evicted rows and are read, never taken for rows still
    /// in memory. `shard` `None`: the table as its newest commit describes
    /// it (tools).
    pub async fn load(&self, dataset: &str, shard: Option<crate::ShardId>) -> Result<Option<TableState>> {
        let Some(table) = self.current_table(dataset).await? else { return Ok(None) };
        let mut info = None;
        for limit in [Some(HISTORY_LOOKBACK), None] {
            let history: Vec<_> =
                table.history(limit).try_collect().await.map_err(delta_err("reading the history", dataset))?;
            info = history.into_iter().find_map(|c| c.info.get(COMMIT_INFO_KEY).cloned());
            if info.is_some() {
                break;
            }
        }
        let Some(info) = info else {
            tracing::warn!(dataset, "a Delta table no Longbow server wrote: not served");
            return Ok(None);
        };
        let mut manifest: Manifest = serde_json::from_value(info).map_err(|e| Error::Corrupt {
            path: PathBuf::from(self.table_url(dataset).as_str()),
            offset: 0,
            reason: format!("Longbow's commitInfo: {e}"),
        })?;
        if let Some(shard) = shard.filter(|_| manifest.node.as_ref().is_some_and(|n| *n != self.node)) {
            let own = Self::committed_version(&table, &self.app_id(shard)).await?;
            manifest.covered_lsn = own.map_or(Lsn::ZERO, Lsn::from_i64);
        }
        let snapshot = table.snapshot().map_err(delta_err("reading the table", dataset))?;
        let mut files = Vec::new();
        for f in snapshot.log_data().iter() {
            let name = f.path().into_owned();
            let rows = f
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|s| s.get("numRecords").and_then(|n| n.as_u64()))
                .unwrap_or(0);
            let (min_lsn, max_lsn) = parse_file_name(&name).unwrap_or((Lsn::ZERO, Lsn::ZERO));
            files.push(SnapshotFile { name, rows, bytes: f.size() as u64, min_lsn, max_lsn });
        }
        files.sort_by_key(|f| (f.max_lsn, f.min_lsn));
        // Files named by their upper LSN only follow the previous file.
        for i in 0..files.len() {
            if files[i].min_lsn == Lsn::ZERO {
                files[i].min_lsn = if i == 0 { Lsn(1) } else { files[i - 1].max_lsn + 1 };
            }
        }
        for f in files.iter_mut().filter(|f| f.max_lsn > manifest.covered_lsn) {
            (f.min_lsn, f.max_lsn) = (Lsn::ZERO, Lsn::ZERO);
        }
        files.sort_by_key(|f| (f.max_lsn, f.min_lsn));
        manifest.dataset = dataset.to_owned();
        manifest.files = files;
        Ok(Some(TableState { manifest, version: snapshot.version() }))
    }
}

/// Snapshot encoding yields the CPU to acknowledgements: the calling
/// (blocking-pool) thread gets nice 10. Idempotent; failures are ignored
/// (the work still gets done, just at normal priority).
pub(crate) fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = nix::libc::gettid();
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t, SNAPSHOT_NICE);
    }
}

/// Nice value of the thread that encodes snapshots.
const SNAPSHOT_NICE: i32 = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use arrow::array::{ArrayRef, Int64Array};

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef)]).unwrap()
    }

    fn write(min: u64, max: u64, ids: std::ops::Range<i64>) -> SnapshotWrite {
        let (min, max) = (Lsn(min), Lsn(max));
        let b = batch(ids);
        SnapshotWrite {
            dataset: "t".into(),
            schema: b.schema(),
            batches: vec![(min, b)],
            min_lsn: min,
            covered_lsn: max,
            producers: BTreeMap::new(),
        }
    }

    fn rows(store: &Arc<SnapshotStore>) -> Vec<i64> {
        let s = store.clone();
        let state = store.block_on(async move { s.load("t", None).await }).unwrap().unwrap();
        let objects: Vec<_> = state.manifest.files.iter().map(|f| store.object("t", f)).collect();
        let schema = batch(0..0).schema();
        let batches: Vec<RecordBatch> =
            store.block_on(async move { read_objects(objects, schema).try_collect().await }).unwrap();
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
            .collect();
        ids.sort();
        ids
    }

    fn commits(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("t/_delta_log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        v.sort();
        v
    }

    /// Two writers (two nodes' shards) commit to one table at once: each
    /// version has one winner, the loser retries on top of it, and every
    /// row is in the table once.
    #[test]
    fn two_writers_racing_on_one_table_each_win_a_version_and_duplicate_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let open = |node| {
            SnapshotStore::open(
                Location::Local(dir.path().to_owned()),
                None,
                node,
                DEFAULT_RETENTION,
                Default::default(),
            )
            .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(a.clone().snapshot(ShardId(0), write(1, 1, 0..10))).unwrap();
        for i in 0..6i64 {
            let wa = write(10 + i as u64, 10 + i as u64, i * 100..i * 100 + 10);
            let wb = write(1000 + i as u64, 1000 + i as u64, 10_000 + i * 100..10_000 + i * 100 + 10);
            let (ra, rb) = rt.block_on(async {
                tokio::join!(a.clone().snapshot(ShardId(0), wa), b.clone().snapshot(ShardId(0), wb))
            });
            assert!(ra.unwrap().file.is_some() && rb.unwrap().file.is_some(), "both land, one after the other");
        }
        let mut expected_sorted: Vec<i64> = (0..10)
            .chain((0..6).flat_map(|i| i * 100..i * 100 + 10))
            .chain((0..6).flat_map(|i| 10_000 + i * 100..10_000 + i * 100 + 10))
            .collect();
        expected_sorted.sort();
        assert_eq!(rows(&a), expected_sorted);
        // Versions 0 (create), 1, then two per round: contiguous, one commit each.
        let names = commits(dir.path());
        assert_eq!(names, (0..14).map(|v| format!("{v:020}.json")).collect::<Vec<_>>());

        // The same app racing itself (a retried commit of a crashed node
        // alongside its restart): one wins, the other finds its txn.
        let (c, d) = (open("a"), open("a"));
        let (rc, rd) = rt.block_on(async {
            tokio::join!(
                c.clone().snapshot(ShardId(0), write(2000, 2000, 50_000..50_010)),
                d.clone().snapshot(ShardId(0), write(2000, 2000, 50_000..50_010))
            )
        });
        let landed = [rc.unwrap(), rd.unwrap()].iter().filter(|r| r.file.is_some()).count();
        assert_eq!(landed, 1, "exactly one commit of txn (a, 2000)");
        expected_sorted.extend(50_000..50_010);
        assert_eq!(rows(&c), expected_sorted);
        // And a plain retry after it landed adds nothing.
        assert!(rt.block_on(c.clone().snapshot(ShardId(0), write(2000, 2000, 50_000..50_010))).unwrap().file.is_none());
        assert_eq!(rows(&c), expected_sorted);
        // A commit `b` makes alone, after `a`'s last: `a`'s view of the
        // table is behind it, and a load still sees it.
        expected_sorted.extend(60_000..60_010);
        rt.block_on(b.clone().snapshot(ShardId(0), write(3000, 3000, 60_000..60_010))).unwrap();
        expected_sorted.sort();
        assert_eq!(rows(&a), expected_sorted);
    }

    /// A retry that covers more than a commit of the same app it did not
    /// hear of (an earlier try whose answer was lost) writes only the
    /// batches after that commit: no row is in the table twice.
    #[test]
    fn a_retry_covering_more_than_an_unanswered_commit_writes_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            SnapshotStore::open(
                Location::Local(dir.path().to_owned()),
                None,
                "a",
                DEFAULT_RETENTION,
                Default::default(),
            )
            .unwrap()
        };
        let (first_try, retry) = (open(), open());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(retry.clone().snapshot(ShardId(0), write(1, 1, 0..10))).unwrap();
        // The first try lands lsn 2; the retry does not know and covers 2 and 3.
        rt.block_on(first_try.clone().snapshot(ShardId(0), write(2, 2, 10..20))).unwrap();
        let mut w = write(2, 3, 10..20);
        w.batches.push((Lsn(3), batch(20..30)));
        let outcome = rt.block_on(retry.clone().snapshot(ShardId(0), w)).unwrap();
        assert!(outcome.table_ahead, "the retry says its list of files is stale");
        let file = outcome.file.expect("lsn 3 is written");
        assert_eq!((file.min_lsn, file.max_lsn, file.rows, outcome.rows), (Lsn(3), Lsn(3), 10, 10));
        assert_eq!(rows(&retry), (0..30).collect::<Vec<_>>());
    }
}
