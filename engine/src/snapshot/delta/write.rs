//! Snapshots: a Parquet file uploaded, then committed with the
//! `txn` action that makes a retried commit a no-op; and the adoption of
//! a pre-Delta manifest.

use super::read::conform;
use super::*;

/// What a snapshot commits.
pub struct SnapshotWrite {
    pub dataset: String,
    pub schema: SchemaRef,
    /// The batches not yet in a snapshot, with their LSNs, ascending.
    pub batches: Vec<(Lsn, RecordBatch)>,
    pub min_lsn: Lsn,
    pub covered_lsn: Lsn,
    pub producers: BTreeMap<String, ProducerSeqs>,
}

/// What a snapshot did.
#[derive(Debug, Default)]
pub struct SnapshotOutcome {
    /// The file it wrote and committed, if it had rows to write.
    pub file: Option<SnapshotFile>,
    /// The rows in that file.
    pub rows: u64,
    /// The table held a commit of this shard that its caller did not know
    /// of (an earlier try whose answer was lost): what it covered was not
    /// written again, and the caller's list of the table's files is stale.
    pub table_ahead: bool,
}

pub(super) fn add_action(name: &str, bytes: u64, rows: u64, data_change: bool) -> Add {
    Add {
        path: name.to_owned(),
        partition_values: HashMap::new(),
        size: bytes as i64,
        modification_time: now_millis(),
        data_change,
        stats: Some(serde_json::json!({ "numRecords": rows }).to_string()),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

impl SnapshotStore {
    /// Encodes `batches` into a Parquet object at `path` (multipart past
    /// the writer's buffer) and, on a local directory, fsyncs it; returns
    /// its size.
    pub(super) async fn upload(
        &self,
        path: &ObjectPath,
        schema: SchemaRef,
        batches: impl futures::Stream<Item = Result<RecordBatch>>,
    ) -> Result<u64> {
        let target = file_schema(&schema);
        let props = crate::snapshot::properties(self.compression, &target);
        let dataset_schema = schema;
        let schema = target;
        // Multipart parts of UPLOAD_PART_BYTES, UPLOAD_PARTS_IN_FLIGHT at a
        // time: what an upload holds in memory besides the row group being
        // encoded (object_store's defaults, 10 MiB x 8, showed in RSS).
        let writer =
            object_store::buffered::BufWriter::with_capacity(self.store.clone(), path.clone(), UPLOAD_PART_BYTES)
                .with_max_concurrency(UPLOAD_PARTS_IN_FLIGHT);
        let mut w =
            AsyncArrowWriter::try_new(writer, schema.clone(), Some(props)).map_err(parquet_err("encoding", path))?;
        // The vector columns found full in every batch: named in the
        // file's metadata for readers that skip their levels.
        let mut full = crate::snapshot::float_list_columns(&dataset_schema);
        let mut rows = 0;
        let mut batches = std::pin::pin!(batches);
        while let Some(b) = batches.next().await {
            let b = b?;
            full.retain(|&i| crate::snapshot::full_float_list(&b, i));
            rows += b.num_rows();
            let b = conform(b, &schema)?;
            w.write(&b).await.map_err(parquet_err("uploading", path))?;
        }
        if rows > 0 && !full.is_empty() {
            let names: Vec<&str> = full.iter().map(|&i| dataset_schema.field(i).name().as_str()).collect();
            let value = serde_json::to_string(&names).expect("names serialize");
            w.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                crate::snapshot::FULL_FLOAT_LISTS_KEY.to_owned(),
                value,
            ));
        }
        w.finish().await.map_err(parquet_err("uploading", path))?;
        let bytes = w.bytes_written() as u64;
        if let Some(local) = self.local_path(path) {
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&local).map_err(Error::io("opening snapshot file", &local, 0))?;
                f.sync_all().map_err(Error::io("fsyncing snapshot file", &local, 0))
            })
            .await
            .unwrap_or_else(|e| Err(e.into()))?;
        }
        Ok(bytes)
    }

    pub(super) fn commit_info(&self, manifest: &Manifest) -> (String, serde_json::Value) {
        let manifest = Manifest { node: Some(self.node.clone()), ..manifest.clone() };
        (COMMIT_INFO_KEY.to_owned(), serde_json::to_value(&manifest).expect("manifest serializes"))
    }

    /// Whether `name` is one of the table's files.
    pub(super) fn has_file(table: &DeltaTable, name: &str) -> bool {
        table.snapshot().is_ok_and(|s| s.log_data().iter().any(|f| f.path() == name))
    }

    /// The covered LSN app `app_id` committed to `dataset`'s table, if any.
    pub(super) async fn committed_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
        let name = table.table_url().to_string();
        let snapshot = table.snapshot().map_err(delta_err("reading the table", &name))?;
        snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(delta_err("reading txn", &name))
    }

    /// Uploads the batches as one file and commits it with `txn(app_id,
    /// covered_lsn)`. What a commit of the same app already covers (an
    /// earlier try whose answer was lost, a concurrent one of the same app)
    /// is not written again: a retry that covers more writes only the
    /// batches after it.
    pub async fn snapshot(self: Arc<Self>, shard: crate::ShardId, mut w: SnapshotWrite) -> Result<SnapshotOutcome> {
        let app_id = self.app_id(shard);
        // Current, not cached: the `txn` read next must see every commit of
        // this app that landed, answered or not.
        let mut table = match self.current_table(&w.dataset).await? {
            Some(t) => t,
            None => self.create_table(&w.dataset, &w.schema).await?,
        };
        let committed = Self::committed_version(&table, &app_id).await?.map(Lsn::from_i64);
        if committed.is_some_and(|v| v >= w.covered_lsn) {
            return Ok(SnapshotOutcome { table_ahead: true, ..SnapshotOutcome::default() });
        }
        let mut min_lsn = w.min_lsn;
        let table_ahead = committed.is_some_and(|v| v >= w.min_lsn);
        if let Some(v) = committed.filter(|_| table_ahead) {
            tracing::info!(dataset = w.dataset, app_id, lsn = %v, "the table already holds a snapshot up to this LSN");
            w.batches.retain(|(lsn, _)| *lsn > v);
            min_lsn = w.batches.first().map_or(w.covered_lsn, |(lsn, _)| *lsn);
        }
        let rows: u64 = w.batches.iter().map(|(_, b)| b.num_rows() as u64).sum();
        let mut actions = Vec::new();
        let mut file = None;
        if rows > 0 {
            let name = file_name(&self.node, min_lsn, w.covered_lsn);
            let path = self.file_path(&w.dataset, &name);
            let batches = futures::stream::iter(w.batches.into_iter().map(|(_, b)| Ok(b)));
            let bytes = self.upload(&path, w.schema.clone(), batches).await?;
            actions.push(Action::Add(add_action(&name, bytes, rows, true)));
            file = Some(SnapshotFile { name, rows, bytes, min_lsn, max_lsn: w.covered_lsn });
        }
        let manifest =
            Manifest { producers: w.producers, ..Manifest::new(&w.dataset, &w.schema, w.covered_lsn, vec![]) };
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, w.covered_lsn.as_i64()))
            .with_metadata([self.commit_info(&manifest)]);
        let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        let snapshot = table.snapshot().map_err(delta_err("reading the table", &w.dataset))?;
        let committed =
            CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), table.log_store(), op).await;
        match committed {
            Ok(done) => {
                self.sync_log(&w.dataset, Some(done.version())).await?;
                table.state = Some(done.snapshot());
                self.remember(&w.dataset, table);
                Ok(SnapshotOutcome { file, rows, table_ahead })
            }
            Err(e) => {
                // Reload: the commit may have landed (a lost reply), or a
                // concurrent commit of this app may have won.
                self.forget(&w.dataset);
                if let Ok(Some(t)) = self.table(&w.dataset).await {
                    if Self::committed_version(&t, &app_id).await?.is_some_and(|v| v >= w.covered_lsn.as_i64()) {
                        tracing::info!(dataset = w.dataset, app_id, "snapshot commit found already in the table");
                        return Ok(SnapshotOutcome { table_ahead: true, ..SnapshotOutcome::default() });
                    }
                }
                Err(delta_err("committing a snapshot", &w.dataset)(e))
            }
        }
    }

    /// Makes `dataset`'s table from a manifest of an earlier version whose
    /// files are already in the table's directory (local roots): one commit
    /// adding them, with the manifest's covered LSN as `txn` of `app_id`.
    pub async fn adopt(self: Arc<Self>, manifest: Manifest, app_id: String) -> Result<()> {
        let dataset = manifest.dataset.clone();
        let schema = manifest.schema().map_err(|e| Error::Corrupt {
            path: PathBuf::from(&dataset),
            offset: 0,
            reason: format!("snapshot manifest schema: {e}"),
        })?;
        let mut table = match self.table(&dataset).await? {
            Some(t) => t,
            None => self.create_table(&dataset, &schema).await?,
        };
        if Self::committed_version(&table, &app_id).await?.is_some_and(|v| v >= manifest.covered_lsn.as_i64()) {
            return Ok(());
        }
        let actions = manifest.files.iter().map(|f| Action::Add(add_action(&f.name, f.bytes, f.rows, true))).collect();
        let info = Manifest { files: vec![], ..manifest.clone() };
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, manifest.covered_lsn.as_i64()))
            .with_metadata([self.commit_info(&info)]);
        let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        let snapshot = table.snapshot().map_err(delta_err("reading the table", &dataset))?;
        let done = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), op)
            .await
            .map_err(delta_err("adopting the snapshot files", &dataset))?;
        self.sync_log(&dataset, Some(done.version())).await?;
        table.state = Some(done.snapshot());
        self.remember(&dataset, table);
        Ok(())
    }
}
