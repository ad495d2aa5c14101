//! The engine on simulated storage that loses power.
//!
//! Each seed runs a random workload (appends from several writers into many
//! datasets, drops, forced snapshots that compact and release segments,
//! a memory limit that evicts, 1 MiB segments that rotate, recycle and are
//! preallocated, a shard count that changes between starts) on an
//! [`SimStorage`] WAL volume, cuts the power at a random operation, and
//! starts the engine again on what the simulated disk kept. Then:
//! - every acknowledged batch is there exactly once, byte for byte;
//! - no batch whose write was refused is there, and no dropped dataset;
//! - the engine starts; it may refuse (naming file and offset) only when a
//!   bit of synced data was flipped on purpose.
//!
//! `LONGBOW_SIM_SEEDS=N` runs N seeds (default 600), `LONGBOW_SIM_SEED=S`
//! runs seed S alone; a failing seed prints the command that reruns it.
//! The cold tier is, for three seeds in four, a simulated object store
//! (`io::sim_object`: object_store's in-memory store behind a client on
//! the simulated machine): the power cut can land between any two of a
//! snapshot's requests and loses uploads in flight, and faults fail
//! requests or lose the answer to a put that landed. The other seeds keep
//! the Delta tables on a real temporary directory, which the power cut
//! does not touch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, BinaryArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::executor::block_on;
use longbow_engine::io::sim::{Faults, SimStorage};
use longbow_engine::io::sim_object::SimObjectStore;
use longbow_engine::{Engine, EngineConfig, EngineMetrics, Error, IpcMessage, PutStream};
use object_store::memory::InMemory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DATASETS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("pad", DataType::Binary, false)]))
}

/// The payload a batch's row `id` carries: derived from the id, so a read
/// checks the bytes, not only the ids.
fn pad_of(id: i64, len: usize) -> Vec<u8> {
    let mut pad = vec![(id as u64).wrapping_mul(0x9e37_79b9) as u8; len];
    if let Some(last) = pad.last_mut() {
        *last = (id >> 8) as u8;
    }
    pad
}

fn batch(first: i64, rows: usize, pad: usize) -> RecordBatch {
    let ids: Vec<i64> = (first..first + rows as i64).collect();
    let pads: Vec<Vec<u8>> = ids.iter().map(|&id| pad_of(id, pad)).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(BinaryArray::from_iter_values(pads.iter().map(|p| p.as_slice()))),
        ],
    )
    .unwrap()
}

/// What the clients were told.
#[derive(Default)]
struct Model {
    /// Per dataset: ids of acknowledged batches' rows.
    acked: BTreeMap<String, BTreeSet<i64>>,
    /// Ids whose write was refused with an error (never stored).
    refused: BTreeSet<i64>,
    /// Ids whose write got no answer before the power cut (either way).
    unknown: BTreeSet<i64>,
    /// Datasets whose drop was acknowledged, with the ids they held then:
    /// none of those may come back.
    dropped: BTreeMap<String, BTreeSet<i64>>,
    /// Per dataset, the drops that got no answer, oldest first, each with
    /// the rows acknowledged between the drop before it and itself. A drop
    /// takes everything before it, so what a restart may serve is: the
    /// rows of drops `j..`, for some `j` (drops `..j` happened).
    drop_unknown: BTreeMap<String, Vec<BTreeSet<i64>>>,
    next_id: i64,
}

struct Run {
    rng: StdRng,
    snapshots: PathBuf,
    /// The simulated object store's remote side, if the cold tier is there
    /// (`snapshots` is then its URL).
    remote: Option<Arc<InMemory>>,
    data: PathBuf,
    /// Whether a bit of synced data was flipped before the last start.
    damaged: bool,
    /// What happened, for a failure's report.
    log: Vec<String>,
    /// Each start's metrics.
    metrics: Vec<EngineMetrics>,
}

/// Commits written while the one before them was being synced, over every
/// seed run: the workload must make some, or the check says nothing about
/// them.
static OVERLAPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn config(run: &mut Run, storage: &SimStorage) -> EngineConfig {
    let mut c = EngineConfig::test_config(&run.data, run.rng.random_range(1..=3));
    c.snapshot_path = run.snapshots.clone();
    c.snapshot_store = run.remote.as_ref().map(|r| Arc::new(SimObjectStore::new(r.clone(), storage.clone())) as _);
    c.segment_bytes_max = 1 << 20;
    c.wal_recycle_segments = run.rng.random_range(0..=2);
    c.max_memory = if run.rng.random_bool(0.3) { run.rng.random_range(2..=6) << 20 } else { 0 };
    c.backpressure_timeout = Duration::from_secs(2);
    c.storage = Arc::new(storage.clone());
    // The simulated files use no DMA buffers: pin next to nothing.
    c.io_memory_bytes = 64 << 10;
    run.log
        .push(format!("start: {} shards, recycle {}, max memory {}", c.shards, c.wal_recycle_segments, c.max_memory));
    c
}

/// Appends one batch per writer at once; records what each was told.
fn append_burst(engine: &Engine, storage: &SimStorage, run: &mut Run, model: &mut Model) {
    let writers = run.rng.random_range(1..=4);
    // Per writer, its dataset and batches: a writer sends them back to
    // back, as a DoPut stream does, and then waits for every answer, so
    // commits follow each other while the one before syncs.
    let mut writes = Vec::new();
    let mut jobs = Vec::new();
    for w in 0..writers {
        let name = DATASETS[run.rng.random_range(0..DATASETS.len())];
        let mut batches = Vec::new();
        for _ in 0..run.rng.random_range(1..=3) {
            // A pause before the batch, up to about a simulated sync.
            let pause = Duration::from_micros(run.rng.random_range(0..300));
            let rows = run.rng.random_range(1..=64);
            let pad = run.rng.random_range(0..=2048);
            let first = model.next_id;
            model.next_id += rows as i64;
            // Half the bodies arrive in aligned, padded memory, as the
            // gateway puts large ones: their frames (version 3) are
            // written in place.
            let aligned = run.rng.random_bool(0.5);
            batches.push((batch(first, rows, pad), aligned, pause));
            jobs.push((name, first, rows, w));
        }
        writes.push((name, batches));
    }
    let answers = block_on(futures::future::join_all(writes.iter().map(|(name, batches)| async move {
        let stream = PutStream::new();
        let mut durables = Vec::new();
        let mut opened = Some(engine.open(name, schema()).await);
        for (b, aligned, pause) in batches {
            // Blocks every writer of the burst a moment (they share this
            // thread); the shards go on meanwhile.
            std::thread::sleep(*pause);
            let queued = async {
                match opened.take() {
                    Some(Err(e)) => return Err(e),
                    // The first batch got the open's error: not sent.
                    None if durables.is_empty() || durables.iter().any(Result::is_err) => {
                        return Err(Error::NotStored { reason: "the dataset was not opened" })
                    }
                    _ => {}
                }
                let mut message = IpcMessage::from_batch(b)?;
                if *aligned {
                    message = IpcMessage::with_aligned_body(message.header.clone(), &message.body);
                }
                engine.append(name, b.clone(), message, None, &stream).await
            }
            .await;
            durables.push(queued);
        }
        let mut out = Vec::new();
        for d in durables {
            out.push(match d {
                Ok(durable) => durable.await,
                Err(e) => Err(e),
            });
        }
        out
    })));
    let outcomes: Vec<_> = answers.into_iter().flatten().collect();
    let jobs: Vec<_> = jobs.into_iter().map(|(name, first, rows, _)| (name, first, rows, (), ())).collect();
    // A failure reported once the power was gone would reach nobody: a
    // real client sees its connection drop. Those writes are in doubt.
    let power_lost = storage.crashed();
    for ((name, first, rows, _, _), outcome) in jobs.into_iter().zip(outcomes) {
        let ids = first..first + rows as i64;
        match outcome {
            Ok(_) => model.acked.entry(name.to_owned()).or_default().extend(ids),
            // Poisoned (the commit's fsync failed) or in doubt (the seal
            // over its failed write failed): whether it reached the disk is
            // unknown; docs/architecture.md says such a batch may come back.
            Err(Error::ShuttingDown | Error::Poisoned { .. } | Error::WalWriteInDoubt { .. }) => {
                model.unknown.extend(ids)
            }
            Err(_) if power_lost => model.unknown.extend(ids),
            Err(_) => model.refused.extend(ids),
        }
    }
}

fn drop_one(engine: &Engine, storage: &SimStorage, run: &mut Run, model: &mut Model) {
    let name = DATASETS[run.rng.random_range(0..DATASETS.len())];
    let held = model.acked.remove(name).unwrap_or_default();
    run.log.push(format!("drop {name} ({} rows), next id {}", held.len(), model.next_id));
    let outcome = block_on(engine.drop_dataset(name));
    match outcome {
        Err(Error::NotFound(_)) if storage.crashed() => {
            model.drop_unknown.entry(name.to_owned()).or_default().push(held)
        }
        Ok(()) | Err(Error::NotFound(_)) => {
            // It took every drop in doubt before it with it.
            let dropped = model.dropped.entry(name.to_owned()).or_default();
            dropped.extend(held);
            dropped.extend(model.drop_unknown.remove(name).unwrap_or_default().into_iter().flatten());
        }
        // Refused or unanswered: it may or may not have been logged.
        Err(_) => model.drop_unknown.entry(name.to_owned()).or_default().push(held),
    }
}

/// Every row id (with its payload checked) the engine serves for `name`.
fn rows_of(engine: &Engine, name: &str) -> Result<Vec<i64>, String> {
    let scan = match block_on(engine.scan(name)) {
        Ok(s) => s,
        Err(Error::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {name}: {e}")),
    };
    // Evicted rows come from the snapshot table's files, then memory.
    let batches: Vec<RecordBatch> = block_on(futures::TryStreamExt::try_collect(scan.batches))
        .map_err(|e| format!("reading {name}'s rows: {e}"))?;
    let mut ids = Vec::new();
    for b in batches {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().ok_or("id column")?;
        let pad = b.column(1).as_any().downcast_ref::<BinaryArray>().ok_or("pad column")?;
        for i in 0..b.num_rows() {
            let v = id.value(i);
            if pad.value(i) != pad_of(v, pad.value(i).len()).as_slice() {
                return Err(format!("{name}: row {v} came back with other bytes"));
            }
            ids.push(v);
        }
    }
    Ok(ids)
}

/// Checks what a restarted engine serves against what clients were told,
/// then settles what was in doubt: from now on it is what the disk holds
/// (a write in doubt that is there must stay, one that is not must never
/// come back; a drop in doubt happened or did not).
fn check(engine: &Engine, model: &mut Model, damaged: bool) -> Result<(), String> {
    let mut present: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for name in DATASETS {
        let ids = rows_of(engine, name)?;
        let mut once = BTreeSet::new();
        for id in &ids {
            if !once.insert(*id) {
                return Err(format!("{name}: row {id} is there twice"));
            }
        }
        let acked = model.acked.get(name).cloned().unwrap_or_default();
        if !damaged {
            let missing: Vec<i64> = acked.difference(&once).copied().collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{name}: {} acknowledged rows are missing, from {} to {} ({} rows there, {} acknowledged)",
                    missing.len(),
                    missing[0],
                    missing[missing.len() - 1],
                    once.len(),
                    acked.len()
                ));
            }
        }
        let in_doubt = model.drop_unknown.get(name).cloned().unwrap_or_default();
        // The drops in doubt that happened: those before the first set
        // still there; every set after it must be whole.
        let happened = in_doubt.iter().position(|rows| !rows.is_disjoint(&once)).unwrap_or(in_doubt.len());
        if !damaged {
            for rows in &in_doubt[happened..] {
                if let Some(missing) = rows.difference(&once).next() {
                    return Err(format!(
                        "{name}: drops in doubt left part of what they would take (row {missing} missing)"
                    ));
                }
            }
        }
        for id in &once {
            if model.refused.contains(id) {
                return Err(format!("{name}: row {id} was refused but came back"));
            }
            if model.dropped.get(name).is_some_and(|d| d.contains(id)) {
                return Err(format!("{name}: row {id} of a dropped incarnation came back"));
            }
            let known = acked.contains(id) || model.unknown.contains(id) || in_doubt.iter().any(|r| r.contains(id));
            if !known {
                return Err(format!("{name}: row {id} was never acknowledged to this dataset"));
            }
        }
        // Settled: what is there stays, what is not is dropped.
        for (k, rows) in in_doubt.into_iter().enumerate() {
            if k < happened {
                model.dropped.entry(name.to_owned()).or_default().extend(rows);
            } else {
                model.acked.entry(name.to_owned()).or_default().extend(rows);
            }
        }
        model.drop_unknown.remove(name);
        present.insert(name, once);
    }
    for id in std::mem::take(&mut model.unknown) {
        match present.iter().find(|(_, ids)| ids.contains(&id)) {
            Some((name, _)) => {
                model.acked.entry(name.to_string()).or_default().insert(id);
            }
            None => {
                model.refused.insert(id);
            }
        }
    }
    Ok(())
}

fn start(run: &mut Run, storage: &SimStorage) -> Result<Option<Engine>, String> {
    let metrics = EngineMetrics::default();
    run.metrics.push(metrics.clone());
    match Engine::start(config(run, storage), metrics) {
        Ok(e) => Ok(Some(e)),
        Err(Error::Corrupt { path, offset, reason }) if run.damaged => {
            assert!(!path.as_os_str().is_empty(), "a refusal names the file");
            let _ = (offset, reason);
            Ok(None)
        }
        Err(e) => {
            dump(storage);
            Err(format!(
                "the engine did not start: {e}\nlog: {:?}\nevents: {:?}\nfiles: {:?}",
                run.log,
                storage.events(),
                storage.files_under(Path::new("/sim"))
            ))
        }
    }
}

/// Writes the simulated files under /sim to `LONGBOW_SIM_DUMP`, if set, for
/// `longbow wal dump`.
fn dump(storage: &SimStorage) {
    use longbow_engine::io::Storage;
    let Some(to) = std::env::var_os("LONGBOW_SIM_DUMP") else { return };
    for (path, _) in storage.files_under(Path::new("/sim")) {
        let out = Path::new(&to).join(path.strip_prefix("/sim").unwrap());
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, storage.read(&path).unwrap()).unwrap();
    }
}

/// One seed: a few power cuts, each followed by a restart and the checks.
fn run_seed(seed: u64) -> Result<(), String> {
    // Snapshot files are real; on tmpfs their fsyncs cost nothing.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let remote = rng.random_bool(0.75).then(|| Arc::new(InMemory::new()));
    let mut run = Run {
        snapshots: if remote.is_some() {
            PathBuf::from("s3://sim-snapshots/longbow")
        } else {
            tmp.path().join("snapshots")
        },
        remote,
        rng,
        data: PathBuf::from("/sim/data"),
        damaged: false,
        log: Vec::new(),
        metrics: Vec::new(),
    };
    let mut storage = SimStorage::new(seed, Path::new("/sim"));
    // Faults strike while the workload runs, not while the engine starts
    // (an I/O error there stops the start, as it should).
    let faults = if run.rng.random_bool(0.3) {
        Faults {
            write_eio: run.rng.random_range(0..20_000),
            write_enospc: run.rng.random_range(0..20_000),
            fsync_eio: run.rng.random_range(0..5_000),
            meta_eio: run.rng.random_range(0..5_000),
            object_fail: run.rng.random_range(0..20_000),
            object_answer_lost: run.rng.random_range(0..50_000),
        }
    } else {
        Faults::default()
    };
    let mut model = Model::default();
    let cycles = run.rng.random_range(1..=3);
    for cycle in 0..cycles {
        let Some(engine) = start(&mut run, &storage)? else { return Ok(()) };
        if cycle > 0 {
            check(&engine, &mut model, run.damaged).map_err(|e| {
                dump(&storage);
                format!(
                    "after power cut {cycle}: {e}\nlog: {:?}\nevents: {:?}\nfiles: {:?}",
                    run.log,
                    storage.events(),
                    storage.files_under(Path::new("/sim"))
                )
            })?;
        }
        // Faults strike the workload, not the checks' reads.
        storage.set_faults(faults);
        storage.crash_after(run.rng.random_range(0..400));
        let steps = run.rng.random_range(5..60);
        for _ in 0..steps {
            if storage.crashed() {
                break;
            }
            match run.rng.random_range(0..100) {
                0..80 => append_burst(&engine, &storage, &mut run, &mut model),
                80..88 => drop_one(&engine, &storage, &mut run, &mut model),
                _ => {
                    let r = block_on(engine.snapshot(None));
                    run.log.push(format!("snapshot at next id {}: {:?}", model.next_id, r.map(|r| r.segments_deleted)));
                }
            }
        }
        let _ = block_on(engine.shutdown());
        drop(engine);
        run.log.push(format!("power cut after {} operations, next id {}", storage.ops(), model.next_id));
        storage = storage.crash(run.rng.random_bool(0.7));
        storage.set_faults(Faults::default());
        // What no answer reached is settled by the check: either way.
        if run.rng.random_bool(0.1) {
            let files = storage.files_under(&run.data);
            if let Some((path, len)) = files.get(run.rng.random_range(0..files.len().max(1))).cloned() {
                if len > 0 {
                    let at = run.rng.random_range(0..len);
                    run.damaged |= storage.flip_bit(&path, at, run.rng.random_range(0..8));
                }
            }
        }
    }
    let Some(engine) = start(&mut run, &storage)? else { return Ok(()) };
    let r = check(&engine, &mut model, run.damaged).map_err(|e| format!("after the last power cut: {e}"));
    if r.is_err() {
        dump(&storage);
        if let Some(to) = std::env::var_os("LONGBOW_SIM_DUMP").filter(|_| run.remote.is_none()) {
            let _ = std::process::Command::new("cp").arg("-r").arg(&run.snapshots).arg(Path::new(&to)).status();
        }
    }
    let _ = block_on(engine.shutdown());
    let overlapped: u64 = run.metrics.iter().map(|m| m.wal_commits_overlapped.get()).sum();
    OVERLAPPED.fetch_add(overlapped, std::sync::atomic::Ordering::Relaxed);
    r.map_err(|e| {
        format!(
            "{e}\nlog: {:?}\nevents: {:?}\nfiles: {:?}",
            run.log,
            storage.events(),
            storage.files_under(Path::new("/sim"))
        )
    })
}

#[test]
fn acknowledged_writes_survive_power_loss_and_refused_ones_never_return() {
    let seeds: Vec<u64> = match std::env::var("LONGBOW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("LONGBOW_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("LONGBOW_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
            (0..n).collect()
        }
    };
    let many = seeds.len() >= 50;
    for seed in seeds {
        if let Err(e) = run_seed(seed) {
            panic!(
                "seed {seed} failed: {e}\nrerun: LONGBOW_SIM_SEED={seed} cargo test -p longbow-engine --test sim -- --nocapture"
            );
        }
    }
    let overlapped = OVERLAPPED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("commits written while the one before them synced: {overlapped}");
    if many {
        assert!(overlapped > 0, "no commit was written while another synced");
    }
}
