//! Injected and real I/O faults: a failed WAL write or segment creation, a
//! failing or full snapshot volume. Whatever fails is never acknowledged,
//! what was acknowledged is never lost, and the server keeps serving.
//!
//! The injected faults need the `fault-injection` feature, which
//! `scripts/test.sh` turns on (`--features longbow-server/fault-injection`);
//! the release binary has no such seam.

mod common;

use std::path::Path;

use arrow::array::RecordBatch;
use common::*;

const DIM: i32 = 16;

/// `n` batches of 100 rows, ids from `first`.
#[cfg(feature = "fault-injection")]
fn small_batches(first: i32, n: usize) -> Vec<RecordBatch> {
    (0..n).map(|i| vector_batch(first + i as i32 * 100, 100, DIM)).collect()
}

async fn held(server: &Server, dataset: &str) -> RecordBatch {
    concat(&get(&mut server.client().await, dataset).await.unwrap())
}

/// A write error (EIO after half the commit reached the file) is refused,
/// the shard goes on in a new segment, and the failed commit's frames, valid
/// as they are on disk, are never replayed: not after a clean restart, not
/// after a crash. The second failure hits the seal written over the first,
/// so the seal is retried too.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_write_is_refused_sealed_over_and_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Commit 1 is the dataset's schema, 2-4 batches; then a batch, the seal
    // over it, and the seal's retry fail.
    let env = [("LONGBOW_FAULT_WAL_WRITE_FAIL", "4:3")];
    let server = Server::try_start_env(&data, 1, &[], &env).unwrap();
    let mut client = server.client().await;
    let (acked, failed) = put_each(&mut client, "eio", small_batches(0, 10)).await;
    assert_eq!((acked.len(), failed.len()), (8, 2), "{failed:?}");
    for e in &failed {
        assert_eq!(code(e), tonic::Code::Internal, "{e}");
        assert!(e.to_string().contains("injected fault"), "says what failed: {e}");
    }
    assert_eq!(held(&server, "eio").await, concat(&acked), "reads see only acknowledged batches");
    assert!(wal_segments(&data.join("shard-0")).len() >= 2, "the failed segment was sealed and a new one begun");
    assert!(server.metrics_text().await.contains("longbow_wal_writes_total{status=\"error\"} 3"));
    assert_eq!(server.health().await, tonic_health::pb::health_check_response::ServingStatus::Serving);
    server.kill9();
    let server = Server::start(&data, 1, &[]);
    assert_eq!(held(&server, "eio").await, concat(&acked), "after a crash: the acknowledged batches, once each");
    server.terminate();
    let server = Server::start(&data, 1, &[]);
    assert_eq!(held(&server, "eio").await, concat(&acked), "after a clean restart");
    server.terminate();
}

/// A rotation whose new segment cannot be created leaves the old one
/// sealed; the commit is refused, the next rotation retries, and recovery
/// accepts the segment chain.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_creation_is_retried_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Creation 1 is the first segment at start; the next two fail.
    let env = [("LONGBOW_FAULT_WAL_CREATE_FAIL", "1:2")];
    let server = Server::try_start_env(&data, 1, &["--max-wal-size", "1MiB"], &env).unwrap();
    let mut client = server.client().await;
    // 256 KiB batches: a rotation every few commits.
    let batches = (0..12).map(|i| vector_batch(i * 4000, 4000, DIM)).collect();
    let (acked, failed) = put_each(&mut client, "rotating", batches).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for e in &failed {
        assert_eq!(code(e), tonic::Code::Internal, "{e}");
        assert!(e.to_string().contains("segment header"), "{e}");
    }
    assert_eq!(held(&server, "rotating").await, concat(&acked));
    server.kill9();
    let server = Server::start(&data, 1, &["--max-wal-size", "1MiB"]);
    assert_eq!(held(&server, "rotating").await, concat(&acked));
    server.terminate();
}

/// Snapshots that fail (EIO) count as errors and keep the WAL; ingest goes
/// on until the memory limit applies (UNAVAILABLE, not a crash), and every
/// acknowledged row survives a restart.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_snapshot_volume_keeps_the_wal_and_ingest_until_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("LONGBOW_FAULT_SNAPSHOT_FAIL", "0:1000000")];
    let args = ["--max-memory", "4MiB", "--max-wal-size", "1MiB"];
    let server = Server::try_start_env(&data, 1, &args, &env).unwrap();
    let mut client = server.client().await;
    let (acked, _) = put_each(&mut client, "kept", small_batches(0, 3)).await;
    let e = action(&mut client, "force_snapshot", "").await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::Internal, "{e}");
    assert!(e.to_string().contains("snapshot failed, the WAL is kept"), "{e}");
    let metrics = server.metrics_text().await;
    // Both series exist from the start (so `increase()` sees the first failure).
    assert!(!metrics.contains("longbow_snapshot_operations_total{status=\"error\"} 0\n"), "{metrics}");
    assert!(metrics.contains("longbow_snapshot_operations_total{status=\"ok\"} 0\n"), "{metrics}");
    // Write well past the limit (64 KiB batches): acknowledged until memory
    // is full, then refused with UNAVAILABLE.
    let mut acked_big = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let b = vector_batch(1_000_000 + i * 1000, 1000, DIM);
        match put(&mut client, "big", vec![b.clone()]).await {
            Ok(_) => acked_big.push(b),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the memory limit applies");
    assert_eq!(code(&e), tonic::Code::Unavailable, "{e}");
    assert!(!acked_big.is_empty());
    // Nothing was deleted from the WAL, nothing left half-written in the
    // snapshot directory, and every acknowledged row is readable.
    let wal = wal_segments(&data.join("shard-0"));
    assert!(wal.len() >= 3, "WAL kept: {wal:?}");
    // (A retry may be writing its temporary file right now; no file is
    // ever complete.)
    assert!(snapshot_files(&dir.path().join("snapshots")).iter().all(|f| !f.ends_with(".parquet")));
    assert_eq!(held(&server, "kept").await, concat(&acked));
    assert_eq!(held(&server, "big").await, concat(&acked_big));
    server.kill9();
    let server = Server::start(&data, 1, &["--max-wal-size", "1MiB"]);
    assert_eq!(held(&server, "kept").await, concat(&acked));
    assert_eq!(held(&server, "big").await, concat(&acked_big));
    // Without the fault the same data snapshots, and the WAL it covers goes.
    action(&mut server.client().await, "force_snapshot", "").await.unwrap();
    assert!(wal_segments(&data.join("shard-0")).len() < wal.len());
    server.terminate();
}

/// Several producers stream into their own datasets while snapshots fail:
/// once memory is full every stream is refused part-way (UNAVAILABLE,
/// naming the failing snapshots). What is stored is exactly what was
/// acknowledged: none of the batches each client had sent after its refused
/// one is written, then or later, not even after a restart.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_streams_store_exactly_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("LONGBOW_FAULT_SNAPSHOT_FAIL", "0:1000000")];
    let args = ["--max-memory", "8MiB", "--backpressure-timeout", "2s"];
    let server = Server::try_start_env(&data, 2, &args, &env).unwrap();
    let producers = 4;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let name = format!("producer-{p}");
            // 64 KiB batches, 4x the limit per producer.
            let batches: Vec<RecordBatch> = (0..512).map(|i| vector_batch(i * 1000, 1000, DIM)).collect();
            let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_path(vec![name.clone()])))
                .build(futures::stream::iter(batches.clone().into_iter().map(Ok)));
            let mut results = client.do_put(stream).await.unwrap();
            let mut acked = 0;
            let mut error = None;
            while let Some(r) = futures::StreamExt::next(&mut results).await {
                match r {
                    Ok(_) => acked += 1,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            (name, batches[..acked].to_vec(), error)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    // Let anything still queued reach the committer, if it were to.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut client = server.client().await;
    for (name, acked, error) in &outcomes {
        let e = error.as_ref().unwrap_or_else(|| panic!("{name}: 4x the limit with failing snapshots is refused"));
        assert_eq!(code(e), tonic::Code::Unavailable, "{e}");
        assert!(e.to_string().contains("snapshots are failing"), "says why: {e}");
        let stored = get(&mut client, name).await.unwrap();
        assert_eq!(rows(&stored), acked.len() * 1000, "{name}: stored == acknowledged");
        if !acked.is_empty() {
            assert_eq!(concat(&stored), concat(acked), "{name}");
        }
    }
    assert!(outcomes.iter().any(|(_, a, _)| !a.is_empty()), "some batches were acknowledged before memory filled");
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("longbow_batches_not_stored_total"), "{metrics}");
    server.kill9();
    let server = Server::start(&data, 2, &[]);
    let mut client = server.client().await;
    for (name, acked, _) in &outcomes {
        let stored = get(&mut client, name).await.unwrap();
        assert_eq!(rows(&stored), acked.len() * 1000, "{name} after a crash: stored == acknowledged");
    }
    server.terminate();
}

fn snapshot_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// A full snapshot volume: `force_snapshot` answers RESOURCE_EXHAUSTED, the
/// WAL stays, ingest and reads go on; once there is room the snapshot
/// succeeds and the WAL it covers is deleted. Needs root for the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_snapshot_volume_keeps_the_wal_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(snaps) = Tmpfs::mount(dir.path().join("snapshots"), "2m") else { return };
    let data = dir.path().join("data");
    let args = ["--max-wal-size", "1MiB", "--snapshot-compression", "none"];
    let server = Server::start(&data, 1, &args);
    let mut client = server.client().await;
    // ~5 MB of vectors: more than the snapshot volume holds.
    let batches: Vec<RecordBatch> = (0..20).map(|i| vector_batch(i * 4000, 4000, DIM)).collect();
    put(&mut client, "big", batches.clone()).await.unwrap();
    let segments = wal_segments(&data.join("shard-0"));
    let e = action(&mut client, "force_snapshot", "").await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("snapshot failed"), "{e}");
    assert!(server.metrics_text().await.contains("longbow_snapshot_operations_total{status=\"error\"}"));
    assert_eq!(wal_segments(&data.join("shard-0")), segments, "no WAL segment deleted");
    assert!(snapshot_files(&snaps.0).iter().all(|f| !f.ends_with(".parquet") && !f.ends_with(".tmp")));
    // Ingest and reads go on.
    let more = vector_batch(9_000_000, 100, DIM);
    put(&mut client, "big", vec![more.clone()]).await.unwrap();
    let mut all = batches.clone();
    all.push(more);
    assert_eq!(held(&server, "big").await, concat(&all));
    // Room again: the next snapshot succeeds and covers the WAL. (The
    // worker waits a second after a failure before it runs again.)
    snaps.resize("64m");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    action(&mut client, "force_snapshot", "").await.unwrap();
    assert!(wal_segments(&data.join("shard-0")).len() < segments.len());
    assert!(snapshot_files(&snaps.0).iter().any(|f| f.ends_with(".parquet")));
    server.kill9();
    let server = Server::start(&data, 1, &["--max-wal-size", "1MiB"]);
    assert_eq!(held(&server, "big").await, concat(&all));
    server.terminate();
}
