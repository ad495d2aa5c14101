//! A shard's in-memory datasets. No I/O here.

use std::collections::BTreeMap;
use std::rc::Rc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef};

use crate::error::{Error, Result};
use crate::limits::{DATASET_NAME_BYTES_MAX, PRODUCER_WINDOW};
use crate::wal::Lsn;
use crate::ShardId;

/// Checks a dataset name: `[A-Za-z0-9_.-]{1,128}`, not starting with a dot,
/// so that it is always a safe single path component.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidName { name: name.chars().take(200).collect(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > DATASET_NAME_BYTES_MAX {
        return bad("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return bad("only ASCII letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Refuses column types the WAL cannot carry as they arrive: dictionary
/// columns need dictionary messages, which the engine does not log yet.
pub fn validate_schema(schema: &arrow::datatypes::Schema) -> Result<()> {
    fn check(f: &Field) -> Result<()> {
        match f.data_type() {
            DataType::Dictionary(_, _) => Err(Error::InvalidInput(format!(
                "column {:?} is dictionary-encoded, which is not supported; cast it to its value type",
                f.name()
            ))),
            DataType::List(c) | DataType::LargeList(c) | DataType::FixedSizeList(c, _) | DataType::Map(c, _) => {
                check(c)
            }
            DataType::Struct(fields) => fields.iter().try_for_each(|c| check(c)),
            _ => Ok(()),
        }
    }
    schema.fields().iter().try_for_each(|f| check(f))
}

#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub name: String,
    pub schema: SchemaRef,
    /// Rows in all: in memory plus those only in snapshot files.
    pub records: u64,
    /// Arrow bytes held in memory.
    pub bytes: u64,
    pub batches: u64,
    /// Rows in this dataset's snapshot files.
    pub snapshot_rows: u64,
    pub snapshot_files: u64,
    pub shard: ShardId,
}

/// One Parquet file of a dataset's snapshot: the rows logged with LSNs in
/// `min_lsn..=max_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
}

/// Sequence numbers of one idempotent producer in one dataset: the newest
/// [`PRODUCER_WINDOW`] stored, each with the LSN that logged it, so that a
/// retried batch is acknowledged again with its original LSN.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerSeqs {
    /// `(seq, lsn)`, ascending and contiguous in `seq`.
    pub recent: std::collections::VecDeque<(u64, Lsn)>,
}

/// What a producer's sequence number means for a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next one (or the producer's first): store it.
    Next,
    /// Already stored, with this LSN: acknowledge again, store nothing.
    Stored(Lsn),
    /// Stored long ago: below the window this server remembers.
    TooOld { oldest: u64 },
    /// A gap: `expected` is the next sequence number.
    Gap { expected: u64 },
}

impl ProducerSeqs {
    pub fn last(&self) -> Option<u64> {
        self.recent.back().map(|(s, _)| *s)
    }

    pub fn check(&self, seq: u64) -> SeqCheck {
        let Some(last) = self.last() else { return SeqCheck::Next };
        if seq == last + 1 {
            return SeqCheck::Next;
        }
        if seq > last {
            return SeqCheck::Gap { expected: last + 1 };
        }
        let oldest = self.recent.front().map_or(last, |(s, _)| *s);
        if seq < oldest {
            return SeqCheck::TooOld { oldest };
        }
        SeqCheck::Stored(self.recent[(seq - oldest) as usize].1)
    }

    /// Records a stored sequence number (replay may see one again: ignored).
    pub fn record(&mut self, seq: u64, lsn: Lsn) {
        if let Some(last) = self.last() {
            if seq <= last {
                return;
            }
            if seq != last + 1 {
                // A restart point (the producer's state was lost or it began
                // again): the window starts over.
                self.recent.clear();
            }
        }
        self.recent.push_back((seq, lsn));
        while self.recent.len() > PRODUCER_WINDOW {
            self.recent.pop_front();
        }
    }

    /// Keeps the newer of two states of the same producer.
    pub fn merge(&mut self, other: &ProducerSeqs) {
        for (seq, lsn) in &other.recent {
            self.record(*seq, *lsn);
        }
    }
}

pub struct Dataset {
    pub schema: SchemaRef,
    /// The encapsulated IPC schema message, written once per segment.
    pub schema_message: Rc<[u8]>,
    /// Batches in memory with the LSN that logged each, ascending. All have
    /// LSNs above `evicted_lsn`.
    pub batches: Vec<(Lsn, RecordBatch)>,
    /// Rows and Arrow bytes in memory.
    pub records: u64,
    pub bytes: u64,
    /// Whether the schema has been made durable.
    pub durable: bool,
    /// LSN of the newest record (schema or batch) of this dataset.
    pub last_lsn: Lsn,
    /// Snapshot files, oldest first; together they hold every row logged up
    /// to `covered_lsn`.
    pub files: Vec<SnapshotFile>,
    pub covered_lsn: Lsn,
    /// Whether a manifest exists for this dataset (even one with no files).
    pub has_manifest: bool,
    /// Rows up to this LSN were dropped from memory and are read from the
    /// snapshot files. A file boundary, at most `covered_lsn`.
    pub evicted_lsn: Lsn,
    /// Idempotent producers' stored sequence numbers, by producer id.
    pub producers: BTreeMap<String, ProducerSeqs>,
}

impl Dataset {
    pub fn new(schema: SchemaRef) -> Self {
        let schema_message = crate::wal::ipc::schema_message(&schema).into();
        Self {
            schema,
            schema_message,
            batches: Vec::new(),
            records: 0,
            bytes: 0,
            durable: false,
            last_lsn: Lsn::ZERO,
            files: Vec::new(),
            covered_lsn: Lsn::ZERO,
            has_manifest: false,
            evicted_lsn: Lsn::ZERO,
            producers: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, lsn: Lsn, batch: RecordBatch) -> (u64, u64) {
        assert!(lsn >= self.last_lsn, "batch lsn {lsn} before {}", self.last_lsn);
        // Batches carry the dataset's schema (field metadata from a later
        // writer may differ; check_schema already compared the fields).
        let batch = if SchemaRef::ptr_eq(&self.schema, &batch.schema()) {
            batch
        } else {
            let schema = self.schema.clone();
            batch.clone().with_schema(schema).unwrap_or(batch)
        };
        let rows = batch.num_rows() as u64;
        let bytes = batch_bytes(&batch);
        self.records += rows;
        self.bytes += bytes;
        self.last_lsn = lsn;
        self.batches.push((lsn, batch));
        (rows, bytes)
    }

    /// Rows that are only in snapshot files (evicted from memory).
    pub fn evicted_rows(&self) -> u64 {
        self.files.iter().filter(|f| f.max_lsn <= self.evicted_lsn).map(|f| f.rows).sum()
    }

    /// Whether snapshot files hold every record logged for it (its schema
    /// included: a manifest exists).
    pub fn all_snapshotted(&self) -> bool {
        self.has_manifest && self.covered_lsn >= self.last_lsn
    }

    /// Batches not yet in any snapshot file.
    pub fn unsnapshotted(&self) -> impl Iterator<Item = &(Lsn, RecordBatch)> {
        let covered = self.covered_lsn;
        self.batches.iter().filter(move |(l, _)| *l > covered)
    }

    /// The oldest LSN whose record the WAL must keep for this dataset, if
    /// any: everything up to `covered_lsn` is in snapshot files.
    pub fn wal_needed_from(&self) -> Option<Lsn> {
        if self.all_snapshotted() {
            return None;
        }
        if !self.has_manifest {
            return Some(Lsn::ZERO); // its schema record is only in the WAL
        }
        self.unsnapshotted().next().map(|(l, _)| *l).or(Some(self.covered_lsn + 1))
    }

    /// Drops batches covered by snapshot files from memory; returns the
    /// bytes freed.
    pub fn evict(&mut self) -> u64 {
        let Some(boundary) = self.files.last().map(|f| f.max_lsn) else { return 0 };
        let keep = self.batches.partition_point(|(l, _)| *l <= boundary);
        let mut freed = 0;
        for (_, b) in self.batches.drain(..keep) {
            self.records -= b.num_rows() as u64;
            let bytes = batch_bytes(&b);
            self.bytes -= bytes;
            freed += bytes;
        }
        self.evicted_lsn = self.evicted_lsn.max(boundary);
        freed
    }

    /// Compares the schema of incoming data with the dataset's.
    pub fn check_schema(&self, name: &str, offered: &SchemaRef) -> Result<()> {
        if SchemaRef::ptr_eq(&self.schema, offered) || fields_match(&self.schema, offered) {
            return Ok(());
        }
        Err(Error::SchemaMismatch {
            dataset: name.to_owned(),
            existing: describe(&self.schema),
            offered: describe(offered),
        })
    }
}

/// Field names, types and nullability must match; schema metadata may differ.
fn fields_match(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields().iter()).all(|(x, y)| {
            x.name() == y.name() && x.data_type().equals_datatype(y.data_type()) && x.is_nullable() == y.is_nullable()
        })
}

fn describe(s: &SchemaRef) -> String {
    let cols: Vec<String> = s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
    format!("({})", cols.join(", "))
}

/// The bytes a batch holds: the sum of its columns' slices. Not
/// `get_array_memory_size`, which counts a buffer the columns share (a
/// batch decoded from one IPC message shares one) once per column: 3-4x
/// too much.
pub fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64)
        .sum()
}

#[derive(Default)]
pub struct Catalog {
    pub datasets: BTreeMap<String, Dataset>,
}

impl Catalog {
    pub fn info(&self, name: &str, shard: ShardId) -> Option<DatasetInfo> {
        self.datasets.get(name).filter(|d| d.durable).map(|d| DatasetInfo {
            name: name.to_owned(),
            schema: d.schema.clone(),
            records: d.records + d.evicted_rows(),
            bytes: d.bytes,
            batches: d.batches.len() as u64,
            snapshot_rows: d.files.iter().map(|f| f.rows).sum(),
            snapshot_files: d.files.len() as u64,
            shard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vectors", "A-b_c.1", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b", "é", "a b", &"x".repeat(129), "../etc"] {
            assert!(matches!(validate_name(bad), Err(Error::InvalidName { .. })), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any string is accepted exactly when it follows the documented
        /// rule, and never panics the check.
        #[test]
        fn names_follow_the_rule(name in "\\PC{0,140}|[A-Za-z0-9_.-]{0,140}") {
            let rule = (1..=128).contains(&name.len())
                && !name.starts_with('.')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            proptest::prop_assert_eq!(validate_name(&name).is_ok(), rule, "{:?}", name);
        }
    }
}

#[cfg(test)]
mod producer_tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_checked_against_the_window() {
        let mut p = ProducerSeqs::default();
        assert_eq!(p.check(7), SeqCheck::Next, "a new producer starts anywhere");
        p.record(7, Lsn(100));
        p.record(8, Lsn(105));
        assert_eq!(p.check(9), SeqCheck::Next);
        assert_eq!(p.check(8), SeqCheck::Stored(Lsn(105)));
        assert_eq!(p.check(7), SeqCheck::Stored(Lsn(100)));
        assert_eq!(p.check(6), SeqCheck::TooOld { oldest: 7 });
        assert_eq!(p.check(11), SeqCheck::Gap { expected: 9 });
        p.record(8, Lsn(999));
        assert_eq!(p.check(8), SeqCheck::Stored(Lsn(105)), "replaying a stored one changes nothing");
        for s in 9..9 + PRODUCER_WINDOW as u64 {
            p.record(s, Lsn(1000 + s));
        }
        assert_eq!(p.recent.len(), PRODUCER_WINDOW);
        assert!(matches!(p.check(8), SeqCheck::TooOld { .. }));
        let mut q = ProducerSeqs::default();
        q.record(5, Lsn(1));
        q.merge(&p);
        assert_eq!(q.last(), p.last());
    }
}
