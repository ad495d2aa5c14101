//! Rebuilding a shard at startup: replay WAL segments in order into the
//! catalog, finish a segment a crash left unsealed, and open a new segment.
//!
//! After a change of shard count the new shard replays every old shard's
//! directory, keeps the datasets it now owns, and logs them again into a new
//! generation of segments in its own directory (see `layout.rs`).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use arrow::buffer::Buffer;

use crate::dataset::{Catalog, Dataset};
use crate::error::{Error, Result};
use crate::limits::GROUP_COMMIT_BYTES_MAX;
use crate::metrics::EngineMetrics;
use crate::routing::shard_for;
use crate::wal::ipc::{self, Decoded};
use crate::wal::replay::{self, CorruptionPolicy, SegmentEnd, SegmentFile};
use crate::wal::{self, IpcMessage, Lsn, Record, Wal};
use crate::ShardId;

pub(crate) struct Plan {
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
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryStats {
    pub segments: u64,
    pub frames: u64,
    pub bytes_read: u64,
    pub torn_tails: u64,
    pub seconds: f64,
}

pub(crate) async fn recover(plan: Plan, metrics: &EngineMetrics) -> Result<(Catalog, Wal, RecoveryStats)> {
    let started = Instant::now();
    let mut catalog = Catalog::default();
    let mut stats = RecoveryStats::default();
    std::fs::create_dir_all(&plan.dir).map_err(Error::io("creating WAL directory", &plan.dir, 0))?;
    let own = replay::list_segments(&plan.dir)?;
    let next_segment = own.last().map_or(1, |s| s.id + 1);

    let wal = match &plan.migrate_from {
        None => {
            let replayed =
                replay_segments(&own, plan.generation, &mut catalog, &mut stats, plan.policy, true, |_| true, metrics)
                    .await?;
            let next_lsn = replayed.map_or(1, |l| l + 1);
            Wal::create(
                &plan.dir,
                plan.shard,
                plan.generation,
                next_segment,
                next_lsn,
                plan.segment_bytes_max,
                metrics.clone(),
            )
            .await?
        }
        Some(sources) => {
            let mut max_lsn = 0;
            for segments in sources {
                let owned = |name: &str| shard_for(name, plan.shards) == plan.shard;
                // Old directories are read, never repaired: they are deleted
                // once every shard has logged its datasets again.
                let last = replay_segments(
                    segments,
                    plan.generation,
                    &mut catalog,
                    &mut stats,
                    plan.policy,
                    false,
                    owned,
                    metrics,
                )
                .await?;
                max_lsn = max_lsn.max(last.unwrap_or(0));
            }
            let mut wal = Wal::create(
                &plan.dir,
                plan.shard,
                plan.generation + 1,
                next_segment,
                max_lsn + 1,
                plan.segment_bytes_max,
                metrics.clone(),
            )
            .await?;
            relog(&mut wal, &catalog).await?;
            wal
        }
    };
    for d in catalog.datasets.values() {
        metrics.datasets.inc();
        metrics.records.inc_by(d.records as i64);
        metrics.memory_bytes.inc_by(d.bytes as i64);
    }
    stats.seconds = started.elapsed().as_secs_f64();
    metrics.wal_replay_seconds.observe(stats.seconds);
    Ok((catalog, wal, stats))
}

/// Replays one directory's segments, all of `generation`, oldest first.
/// Returns the last LSN.
#[allow(clippy::too_many_arguments)]
async fn replay_segments(
    segments: &[SegmentFile],
    generation: u64,
    catalog: &mut Catalog,
    stats: &mut RecoveryStats,
    policy: CorruptionPolicy,
    repair: bool,
    owned: impl Fn(&str) -> bool,
    metrics: &EngineMetrics,
) -> Result<Option<Lsn>> {
    let mut last_lsn: Option<Lsn> = None;
    for (i, seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let mut frames = 0u64;
        let path = seg.path.clone();
        let r = replay::replay_segment(seg, last_lsn.map(|l| l + 1), newest, policy, |frame, offset| {
            frames += 1;
            let corrupt = |reason: String| Error::Corrupt { path: path.clone(), offset, reason };
            let name = std::str::from_utf8(frame.dataset).map_err(|_| corrupt("dataset name is not UTF-8".into()))?;
            if !owned(name) {
                return Ok(());
            }
            let buf = Buffer::from_slice_ref(frame.payload);
            let known = catalog.datasets.get(name).map(|d| d.schema.clone());
            let mut decoded = Vec::new();
            ipc::decode_payload(&buf, known, |m| decoded.push(m))
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
                        catalog.datasets.get_mut(name).expect("schema precedes batches").push(batch);
                    }
                }
            }
            Ok(())
        })
        .await?;
        if r.header.generation != generation {
            return Err(Error::Corrupt {
                path: seg.path.clone(),
                offset: 0,
                reason: format!("segment of generation {} where {generation} was expected", r.header.generation),
            });
        }
        stats.segments += 1;
        stats.frames += frames;
        stats.bytes_read += r.bytes_read;
        metrics.wal_replay_bytes.inc_by(r.bytes_read);
        last_lsn = r.last_lsn.or(last_lsn);
        match &r.end {
            SegmentEnd::Sealed => {}
            SegmentEnd::Torn { offset, reason } => {
                stats.torn_tails += 1;
                metrics.wal_torn_tails.inc();
                tracing::warn!(file = %seg.path.display(), offset, reason, "torn WAL tail: the last, unacknowledged commit was cut short; truncating there");
            }
            SegmentEnd::Clean => {}
        }
        if r.end != SegmentEnd::Sealed && repair {
            // IMPORTANT: seal before a new segment exists, so that every
            // segment but the newest ends with a seal frame.
            let seal_lsn = last_lsn.map_or(r.header.first_lsn, |l| l + 1);
            wal::seal_after_crash(&seg.path, seg.id, r.valid_end, r.header.block_bytes as u64, seal_lsn, metrics)
                .await?;
            last_lsn = Some(seal_lsn);
        }
    }
    Ok(last_lsn)
}

/// Logs every dataset of `catalog` into `wal` (after a shard-count change).
async fn relog(wal: &mut Wal, catalog: &Catalog) -> Result<()> {
    for (name, d) in &catalog.datasets {
        let schema: Rc<[u8]> = d.schema_message.clone();
        wal.append_synced(&[Record { dataset: name, schema_message: &schema, message: None }]).await?;
        let messages: Vec<IpcMessage> = d.batches.iter().map(IpcMessage::from_batch).collect::<Result<_>>()?;
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < messages.len()
                && (end == start || bytes + messages[end].encoded_len() as u64 <= GROUP_COMMIT_BYTES_MAX)
            {
                bytes += messages[end].encoded_len() as u64;
                end += 1;
            }
            let records: Vec<Record<'_>> = messages[start..end]
                .iter()
                .map(|m| Record { dataset: name, schema_message: &schema, message: Some(m) })
                .collect();
            wal.append_synced(&records).await?;
            start = end;
        }
    }
    Ok(())
}
