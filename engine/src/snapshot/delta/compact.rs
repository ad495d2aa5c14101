//! Compaction (a rewrite commit of small files into one) and VACUUM
//! (files removed longer ago than the retention period).

use super::write::add_action;
use super::*;

/// Files smaller than this are merged once enough of them pile up.
pub const COMPACT_FILE_BYTES: u64 = 64 << 20;

/// How many consecutive small files trigger a merge.
pub const COMPACT_RUN_FILES: usize = 8;

/// The first run of at least [`COMPACT_RUN_FILES`] consecutive small files
/// that lies wholly on one side of the eviction boundary `evicted_lsn`.
/// Files of another node (LSN 0 here, see `load`) are left as they are: a
/// merge of them alone would have no LSN range to name it by.
pub fn compaction_run(files: &[SnapshotFile], evicted_lsn: Lsn) -> Option<std::ops::Range<usize>> {
    let kept = |f: &SnapshotFile| f.bytes >= COMPACT_FILE_BYTES || f.max_lsn == Lsn::ZERO;
    let mut start = 0;
    for i in 0..=files.len() {
        let breaks = i == files.len()
            || kept(&files[i])
            || (i > start && (files[i - 1].max_lsn <= evicted_lsn) != (files[i].max_lsn <= evicted_lsn));
        if breaks {
            if i - start >= COMPACT_RUN_FILES {
                return Some(start..i);
            }
            start = if i < files.len() && kept(&files[i]) { i + 1 } else { i };
        }
    }
    None
}

/// What a compaction replaces.
pub struct CompactionWrite {
    pub dataset: String,
    pub schema: SchemaRef,
    pub sources: Vec<SnapshotFile>,
    pub covered_lsn: Lsn,
    pub producers: BTreeMap<String, ProducerSeqs>,
}

impl SnapshotStore {
    /// Merges `sources` (in order) into one file and commits the rewrite
    /// (add + remove, `dataChange: false`); the sources stay in storage for
    /// the retention period. Returns the merged file.
    pub async fn compact(self: Arc<Self>, c: CompactionWrite) -> Result<SnapshotFile> {
        let Some(mut table) = self.table(&c.dataset).await? else {
            return Err(Error::NotFound(c.dataset));
        };
        let first = c.sources.first().expect("a run of files");
        let last = c.sources.last().expect("a run of files");
        let merged_name = file_name(&self.node, first.min_lsn, last.max_lsn);
        let path = self.file_path(&c.dataset, &merged_name);
        let objects: Vec<_> = c.sources.iter().map(|f| self.object(&c.dataset, f)).collect();
        let bytes = self.upload(&path, c.schema.clone(), read_objects(objects, c.schema.clone())).await?;
        let rows: u64 = c.sources.iter().map(|f| f.rows).sum();
        let now = now_millis();
        let mut actions = vec![Action::Add(add_action(&merged_name, bytes, rows, false))];
        for f in &c.sources {
            actions.push(Action::Remove(Remove {
                path: f.name.clone(),
                data_change: false,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(true),
                partition_values: Some(HashMap::new()),
                size: Some(f.bytes as i64),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            }));
        }
        let manifest =
            Manifest { producers: c.producers, ..Manifest::new(&c.dataset, &c.schema, c.covered_lsn, vec![]) };
        let props = CommitProperties::default().with_metadata([self.commit_info(&manifest)]);
        let op = DeltaOperation::Optimize { predicate: None, target_size: bytes as i64 };
        let snapshot = table.snapshot().map_err(delta_err("reading the table", &c.dataset))?;
        match CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), table.log_store(), op).await {
            Ok(done) => {
                self.sync_log(&c.dataset, Some(done.version())).await?;
                table.state = Some(done.snapshot());
                self.remember(&c.dataset, table);
                Ok(SnapshotFile { name: merged_name, rows, bytes, min_lsn: first.min_lsn, max_lsn: last.max_lsn })
            }
            Err(e) => {
                // The commit may have landed (a lost answer): then the
                // merged file is the table's. If not (refused by a
                // concurrent rewrite of the same files), it is left to
                // VACUUM: a commit whose answer was lost could still land.
                self.forget(&c.dataset);
                if let Ok(Some(t)) = self.table(&c.dataset).await {
                    if Self::has_file(&t, &merged_name) {
                        tracing::info!(dataset = c.dataset, file = merged_name, "compaction commit found in the table");
                        return Ok(SnapshotFile {
                            name: merged_name,
                            rows,
                            bytes,
                            min_lsn: first.min_lsn,
                            max_lsn: last.max_lsn,
                        });
                    }
                }
                Err(delta_err("committing a compaction", &c.dataset)(e))
            }
        }
    }

    /// Deletes every file of the table's directory that no version within
    /// the retention period uses, older than the retention period: files
    /// compactions removed, and uploads whose commit never happened (a
    /// crash, a refused commit). Run at startup (it lists the table).
    pub(super) async fn vacuum_full(&self, dataset: &str) -> Result<u64> {
        let Some(table) = self.table(dataset).await? else { return Ok(0) };
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let (table, metrics) = table
            .vacuum()
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta_err("vacuum", dataset))?;
        if !metrics.files_deleted.is_empty() {
            self.sync_log(dataset, table.version()).await?;
            tracing::info!(dataset, files = metrics.files_deleted.len(), "vacuum deleted files no table version uses");
        }
        self.remember(dataset, table);
        Ok(metrics.files_deleted.len() as u64)
    }

    /// Deletes the files compactions removed more than the retention period
    /// ago; returns how many.
    pub async fn vacuum(self: Arc<Self>, dataset: String) -> Result<u64> {
        let Some(table) = self.table(&dataset).await? else { return Ok(0) };
        let has_tombstones = {
            let snapshot = table.snapshot().map_err(delta_err("reading the table", &dataset))?;
            let log_store = table.log_store();
            let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
            let now = now_millis();
            let retention = self.retention.as_millis() as i64;
            let mut due = false;
            while let Some(t) = tombstones.next().await {
                let t = t.map_err(delta_err("reading tombstones", &dataset))?;
                if t.deletion_timestamp().is_none_or(|ts| ts + retention <= now) {
                    due = true;
                    break;
                }
            }
            due
        };
        if !has_tombstones {
            return Ok(0);
        }
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let (table, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta_err("vacuum", &dataset))?;
        if let Some(v) = table.version() {
            self.sync_log(&dataset, Some(v)).await?;
        }
        self.remember(&dataset, table);
        Ok(metrics.files_deleted.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(i: u64, bytes: u64) -> SnapshotFile {
        SnapshotFile { name: format!("f{i}"), rows: 1, bytes, min_lsn: Lsn(i * 10 + 1), max_lsn: Lsn(i * 10 + 10) }
    }

    #[test]
    fn compaction_picks_runs_of_small_files_on_one_side_of_the_eviction_boundary() {
        let small: Vec<_> = (0..10).map(|i| file(i, 1000)).collect();
        assert_eq!(compaction_run(&small[..7], Lsn(0)), None);
        assert_eq!(compaction_run(&small, Lsn(0)), Some(0..10));
        // Evicted up to file 3 (lsn 40): runs 0..4 and 4..10; only the second is long enough.
        assert_eq!(compaction_run(&small, Lsn(40)), None);
        let more: Vec<_> = (0..14).map(|i| file(i, 1000)).collect();
        assert_eq!(compaction_run(&more, Lsn(40)), Some(4..14));
        // A big file breaks a run.
        let mut mixed = small.clone();
        mixed[5] = file(5, COMPACT_FILE_BYTES);
        assert_eq!(compaction_run(&mixed, Lsn(0)), None);
    }

    #[test]
    fn files_another_node_wrote_are_never_merged() {
        // Handed over: LSN 0 here, before this node's own files.
        let mut files: Vec<_> =
            (0..8).map(|i| SnapshotFile { min_lsn: Lsn(0), max_lsn: Lsn(0), ..file(i, 1) }).collect();
        assert_eq!(compaction_run(&files, Lsn(0)), None);
        files.extend((8..16).map(|i| file(i, 1000)));
        assert_eq!(compaction_run(&files, Lsn(200)), Some(8..16));
    }
}
