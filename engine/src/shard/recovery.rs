//! Rebuilding a shard at startup: index the snapshot files of the datasets
//! it owns (their rows stay on disk until read), replay the WAL records the
//! snapshots do not cover, finish a segment a crash left unsealed, and open
//! a new segment.
//!
//! After a change of shard count the new shard replays every old shard's
//! directory, keeps the datasets it now owns, and logs what is not in
//! snapshots again into a new generation of segments in its own directory
//! (see `layout.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use arrow::buffer::Buffer;

use crate::dataset::{Catalog, Dataset, ProducerSeqs};
use crate::error::{Error, Result};
use crate::limits::GROUP_COMMIT_BYTES_MAX;
use crate::metrics::EngineMetrics;
use crate::record::{self, Op};
use crate::routing::shard_for;
use crate::snapshot::Manifest;
use crate::wal::format::FrameKind;
use crate::wal::free::FreeFiles;
use crate::wal::ipc::{self, Decoded};
use crate::wal::replay::{self, CorruptionPolicy, SegmentEnd, SegmentFile};
use crate::wal::{self, IpcMessage, Lsn, Record, SealedSegment, SegmentId, Wal};
use crate::ShardId;

pub(crate) struct Plan {
    pub storage: crate::io::StorageRef,
    pub shard: ShardId,
    pub shards: usize,
    /// This shard's WAL directory.
    pub dir: PathBuf,
    /// Generation of the segments on disk now.
    pub generation: u64,
    /// `Some(segments)`: the shard count changed; replay every old shard's
    /// segments (one list per old directory, listed before any shard
    /// started) and log the owned datasets again under `generation + 1`.
    pub migrate_from: Option<Vec<Vec<SegmentFile>>>,
    pub policy: CorruptionPolicy,
    pub segment_bytes_max: u64,
    /// Covered segments kept as free files for new segments.
    pub recycle_segments: usize,
    /// Snapshot manifests of the datasets this shard owns.
    pub manifests: Vec<Manifest>,
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryStats {
    pub segments: u64,
    pub frames: u64,
    /// Frames skipped because snapshots hold them.
    pub frames_in_snapshots: u64,
    pub bytes_read: u64,
    pub torn_tails: u64,
    pub snapshot_datasets: u64,
    pub seconds: f64,
}

pub(crate) struct Recovered {
    pub catalog: Catalog,
    pub wal: Wal,
    pub stats: RecoveryStats,
    /// Datasets whose snapshot directory belongs to a dropped incarnation.
    pub stale_snapshot_dirs: Vec<String>,
}

/// Replay state shared by all directories replayed by one shard.
struct Replay<'a> {
    storage: crate::io::StorageRef,
    catalog: Catalog,
    stats: RecoveryStats,
    stale: BTreeSet<String>,
    metrics: &'a EngineMetrics,
    policy: CorruptionPolicy,
    /// The snapshot manifests the catalog started from.
    manifests: &'a [Manifest],
}

pub(crate) async fn recover(plan: Plan, metrics: &EngineMetrics) -> Result<Recovered> {
    let started = Instant::now();
    let mut r = Replay {
        storage: plan.storage.clone(),
        catalog: Catalog::default(),
        stats: RecoveryStats::default(),
        stale: BTreeSet::new(),
        metrics,
        policy: plan.policy,
        manifests: &plan.manifests,
    };
    let mut lsn_floor = Lsn::ZERO;
    for m in &plan.manifests {
        let d = dataset_of(m)?;
        lsn_floor = lsn_floor.max(m.covered_lsn);
        r.catalog.datasets.insert(m.dataset.clone(), d);
        r.stats.snapshot_datasets += 1;
    }

    let storage = plan.storage.clone();
    crate::io::create_dir_durably(&*storage, &plan.dir).map_err(Error::io("creating WAL directory", &plan.dir, 0))?;
    let own = replay::list_segments(&*storage, &plan.dir)?;
    let file_bytes = wal::free::segment_file_bytes(plan.segment_bytes_max);
    let (free, free_max_id) = FreeFiles::open(storage.clone(), &plan.dir, file_bytes, plan.recycle_segments).await?;
    // IMPORTANT: above every id a free file may still hold frames of, so
    // that replay never takes a recycled file's old frames for new ones.
    let next_segment = own.last().map_or(SegmentId(1), |s| s.id.next()).max(free_max_id.next());

    let wal = match &plan.migrate_from {
        None => {
            let (last, mut sealed, resume) = r.replay_segments(&own, plan.generation, true, |_| true).await?;
            // IMPORTANT: LSNs never go back, even if every segment that
            // held the newest ones was deleted after a snapshot.
            let mut next_lsn = last.unwrap_or(Lsn::ZERO).max(lsn_floor) + 1;
            let resume = match resume {
                // Go on in the crashed segment: no space needed to start.
                Some(res) if res.next_lsn >= next_lsn => {
                    next_lsn = res.next_lsn;
                    Some(res)
                }
                // Snapshots cover LSNs beyond it (not expected): seal it
                // with its own next LSN, and go on above the snapshots.
                Some(res) => {
                    wal::seal_after_crash(
                        &*storage,
                        &res.path,
                        res.id,
                        res.valid_end,
                        res.block,
                        res.next_lsn,
                        metrics,
                    )
                    .await?;
                    sealed.push(SealedSegment { id: res.id, path: res.path, last_lsn: res.next_lsn });
                    None
                }
                None => None,
            };
            Wal::open(
                storage.clone(),
                &plan.dir,
                plan.shard,
                plan.generation,
                next_segment,
                next_lsn,
                metrics.clone(),
                sealed,
                resume,
                free,
            )
            .await?
        }
        Some(sources) => {
            let mut max_lsn = lsn_floor;
            for segments in sources {
                let owned = |name: &str| shard_for(name, plan.shards) == plan.shard;
                // Old directories are read, never repaired: they are deleted
                // once every shard has logged its datasets again.
                let (last, _, _) = r.replay_segments(segments, plan.generation, false, owned).await?;
                max_lsn = max_lsn.max(last.unwrap_or(Lsn::ZERO));
            }
            // Old generations' LSNs are all below the new ones, so what the
            // manifests cover stays below every new record.
            let mut wal = Wal::open(
                storage.clone(),
                &plan.dir,
                plan.shard,
                plan.generation + 1,
                next_segment,
                max_lsn + 1,
                metrics.clone(),
                Vec::new(),
                None,
                free,
            )
            .await?;
            relog(&mut wal, &mut r.catalog).await?;
            wal
        }
    };
    for d in r.catalog.datasets.values() {
        metrics.datasets.inc();
        metrics.records.inc_by(d.records as i64);
        metrics.memory_bytes.inc_by(d.bytes as i64);
    }
    r.stats.seconds = started.elapsed().as_secs_f64();
    metrics.wal_replay_seconds.observe(r.stats.seconds);
    let stale_snapshot_dirs = r.stale.into_iter().collect();
    Ok(Recovered { catalog: r.catalog, wal, stats: r.stats, stale_snapshot_dirs })
}

impl Replay<'_> {
    /// Replays one directory's segments, all of `generation`, oldest first.
    /// Returns the last LSN, the sealed segments and, when repairing, the
    /// newest segment if a crash left it unsealed (to go on in).
    async fn replay_segments(
        &mut self,
        segments: &[SegmentFile],
        generation: u64,
        repair: bool,
        owned: impl Fn(&str) -> bool,
    ) -> Result<(Option<Lsn>, Vec<SealedSegment>, Option<wal::Resume>)> {
        let mut last_lsn: Option<Lsn> = None;
        let mut sealed = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let newest = i + 1 == segments.len();
            let path = seg.path.clone();
            let (catalog, stats, stale, manifests) =
                (&mut self.catalog, &mut self.stats, &mut self.stale, self.manifests);
            let r = replay::replay_segment(
                &*self.storage,
                seg,
                last_lsn.map(|l| l + 1),
                newest,
                self.policy,
                |frame, offset| {
                    stats.frames += 1;
                    let corrupt = |reason: String| Error::Corrupt { path: path.clone(), offset, reason };
                    let name =
                        std::str::from_utf8(frame.dataset).map_err(|_| corrupt("dataset name is not UTF-8".into()))?;
                    if !owned(name) {
                        return Ok(());
                    }
                    let lsn = frame.header.lsn;
                    if catalog.datasets.get(name).is_some_and(|d| d.has_manifest && lsn <= d.covered_lsn) {
                        stats.frames_in_snapshots += 1;
                        return Ok(());
                    }
                    if frame.header.kind == FrameKind::Drop {
                        if let Some(d) = catalog.datasets.remove(name) {
                            if d.has_manifest {
                                stale.insert(name.to_owned());
                            }
                        }
                        return Ok(());
                    }
                    if frame.header.kind == FrameKind::Forget {
                        // IMPORTANT: the rows went to the owner's table (or
                        // the owner dropped them); its table is not touched,
                        // and what this shard loaded of it stays.
                        if let Some(d) = catalog.datasets.remove(name) {
                            if d.has_manifest {
                                let m = manifests.iter().find(|m| m.dataset == name).expect("a manifest of its own");
                                catalog.datasets.insert(name.to_owned(), dataset_of(m)?);
                            }
                        }
                        return Ok(());
                    }
                    if frame.header.kind == FrameKind::Producers {
                        let state: BTreeMap<String, ProducerSeqs> = serde_json::from_slice(frame.payload)
                            .map_err(|e| corrupt(format!("producers' state: {e}")))?;
                        if let Some(d) = catalog.datasets.get_mut(name) {
                            merge_producers(&mut d.producers, &state);
                            d.last_lsn = d.last_lsn.max(lsn);
                        }
                        return Ok(());
                    }
                    let buf = Buffer::from_slice_ref(frame.payload);
                    let known = catalog.datasets.get(name).map(|d| d.schema.clone());
                    let mut decoded = Vec::new();
                    ipc::decode_payload(&buf, frame.payload_layout(), known, |m| decoded.push(m))
                        .map_err(|e| corrupt(format!("undecodable Arrow IPC payload: {e}")))?;
                    for m in decoded {
                        match m {
                            Decoded::Schema(schema) => {
                                catalog.datasets.entry(name.to_owned()).or_insert_with(|| {
                                    let mut d = Dataset::new(schema);
                                    d.durable = true;
                                    d
                                });
                            }
                            Decoded::Batch(batch) => {
                                catalog.datasets.get_mut(name).expect("schema precedes batches").push(lsn, batch);
                            }
                            Decoded::Producer { id, seq } => {
                                let d = catalog.datasets.get_mut(name).expect("schema precedes batches");
                                d.producers.entry(id).or_default().record(seq, lsn);
                            }
                        }
                    }
                    if let Some(d) = catalog.datasets.get_mut(name) {
                        d.last_lsn = d.last_lsn.max(lsn);
                    }
                    Ok(())
                },
            )
            .await?;
            if r.header.generation != generation {
                return Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: format!("segment of generation {} where {generation} was expected", r.header.generation),
                });
            }
            self.stats.segments += 1;
            self.stats.bytes_read += r.bytes_read;
            self.metrics.wal_replay_bytes.inc_by(r.bytes_read);
            last_lsn = r.last_lsn.or(last_lsn);
            match &r.end {
                SegmentEnd::Sealed => {}
                SegmentEnd::Torn { offset, reason } => {
                    self.stats.torn_tails += 1;
                    self.metrics.wal_torn_tails.inc();
                    tracing::warn!(file = %seg.path.display(), offset, reason, "torn WAL tail: the last, unacknowledged commit was cut short; truncating there");
                }
                SegmentEnd::Clean => {}
            }
            let seal_lsn = last_lsn.map_or(r.header.first_lsn, |l| l + 1);
            if r.end != SegmentEnd::Sealed && repair && newest {
                let block = r.header.block_bytes as u64;
                let resume = wal::Resume {
                    id: seg.id,
                    path: seg.path.clone(),
                    valid_end: r.valid_end,
                    block,
                    next_lsn: seal_lsn,
                };
                return Ok((last_lsn, sealed, Some(resume)));
            }
            if r.end != SegmentEnd::Sealed && repair {
                // IMPORTANT: seal before a new segment exists, so that every
                // segment but the newest ends with a seal frame.
                wal::seal_after_crash(
                    &*self.storage,
                    &seg.path,
                    seg.id,
                    r.valid_end,
                    r.header.block_bytes as u64,
                    seal_lsn,
                    self.metrics,
                )
                .await?;
                last_lsn = Some(seal_lsn);
            }
            sealed.push(SealedSegment {
                id: seg.id,
                path: seg.path.clone(),
                last_lsn: last_lsn.unwrap_or(r.header.first_lsn),
            });
        }
        Ok((last_lsn, sealed, None))
    }
}

/// Logs, into `wal`, what of each dataset of `catalog` is not in snapshot
/// files (after a shard-count change), and renumbers those batches.
async fn relog(wal: &mut Wal, catalog: &mut Catalog) -> Result<()> {
    for (name, d) in catalog.datasets.iter_mut() {
        let pending: Vec<usize> = (0..d.batches.len()).filter(|&i| d.batches[i].0 > d.covered_lsn).collect();
        if d.has_manifest && pending.is_empty() {
            continue;
        }
        let schema: Rc<[u8]> = d.schema_message.clone();
        let lsn = wal.append_synced(&[Record::new(name, &schema, &Op::Schema(d.schema.clone()))]).await?;
        d.last_lsn = lsn;
        let ops: Vec<Op> = pending
            .iter()
            .map(|&i| {
                let batch = d.batches[i].1.clone();
                Ok(Op::Batch(record::Batch { message: IpcMessage::from_batch(&batch)?, batch, producer: None }))
            })
            .collect::<Result<_>>()?;
        let len = |op: &Op| op.message().map_or(0, |m| m.encoded_len() as u64);
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < ops.len() && (end == start || bytes + len(&ops[end]) <= GROUP_COMMIT_BYTES_MAX) {
                bytes += len(&ops[end]);
                end += 1;
            }
            let records: Vec<Record<'_>> = ops[start..end].iter().map(|op| Record::new(name, &schema, op)).collect();
            let first = wal.append_synced(&records).await?;
            for (k, &i) in pending[start..end].iter().enumerate() {
                d.batches[i].0 = first + k as u64;
                d.last_lsn = first + k as u64;
            }
            start = end;
        }
        if !d.producers.is_empty() {
            // The producers' state moves with the dataset: the old
            // generation's frames and manifests that held it are about to go
            // (its manifest stays, but frames above `covered_lsn` held the
            // newest sequence numbers).
            let state = Op::Producers(serde_json::to_vec(&d.producers).expect("producers' state is JSON"));
            d.last_lsn = wal.append_synced(&[Record::new(name, &schema, &state)]).await?;
        }
    }
    Ok(())
}

/// Keeps, for each producer, the newer of two states.
/// A dataset as its snapshot table describes it: every row in the files
/// (evicted), up to the manifest's covered LSN.
pub(crate) fn dataset_of(m: &Manifest) -> Result<Dataset> {
    let schema = m.schema().map_err(|e| Error::Corrupt {
        path: PathBuf::from(&m.dataset),
        offset: 0,
        reason: format!("snapshot manifest schema: {e}"),
    })?;
    let mut d = Dataset::new(schema);
    d.durable = true;
    d.files = m.files.clone();
    d.covered_lsn = m.covered_lsn;
    d.evicted_lsn = m.covered_lsn;
    d.last_lsn = m.covered_lsn;
    d.has_manifest = true;
    d.producers = m.producers.clone();
    Ok(d)
}

pub(crate) fn merge_producers(into: &mut BTreeMap<String, ProducerSeqs>, from: &BTreeMap<String, ProducerSeqs>) {
    for (id, seqs) in from {
        into.entry(id.clone()).or_default().merge(seqs);
    }
}
