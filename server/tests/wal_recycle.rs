//! Preallocated and recycled WAL segment files with the real binary: no
//! commit extends a file, covered segments become free files that new
//! segments reuse, and after `kill -9` exactly the acknowledged batches come
//! back: never a recycled file's old frames, not even when the crash caught
//! a free file on its way to becoming a segment.

mod common;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use common::*;
use longbow_engine::wal::format::{decode_frame, SegmentHeader};

const DIM: i32 = 16;
const SEGMENT: &[&str] = &["--max-wal-size", "1MiB"];

/// ~68 KB batches: about 15 commits fill a 1 MiB segment.
fn batch(i: usize) -> RecordBatch {
    vector_batch(i as i32 * 1000, 1000, DIM)
}

async fn held(server: &Server, dataset: &str) -> RecordBatch {
    concat(&get(&mut server.client().await, dataset).await.unwrap())
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        .parse()
        .unwrap()
}

fn segment_id(path: &Path) -> u64 {
    SegmentHeader::decode(&std::fs::read(path).unwrap()).unwrap().segment_id.0
}

/// Whether the segment is a recycled file holding, after its own log,
/// intact frames of an older segment.
fn old_frames_after_the_log(path: &Path) -> bool {
    let end = segment_frames(path).last().map_or(512, |f| f.end);
    let id = segment_id(path);
    let bytes = std::fs::read(path).unwrap();
    (end as usize..bytes.len()).step_by(8).any(|at| {
        decode_frame(&bytes[at..]).is_ok_and(|f| f.header.segment_id.0 < id && f.header.commit_start == at as u64)
    })
}

/// A crashed one-shard directory whose newest segment is a recycled file,
/// with old frames after its last commit, and whose free files include a
/// recycled one. Returns the directory and the acknowledged batches.
async fn crashed_in_a_recycled_segment() -> (tempfile::TempDir, Vec<RecordBatch>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shard = data.join("shard-0");
    let server = Server::start(&data, 1, SEGMENT);
    let mut client = server.client().await;
    let (mut acked, _) = put_each(&mut client, "rec", (0..40).map(batch).collect()).await;
    assert_eq!(acked.len(), 40);
    let report = action(&mut client, "force_snapshot", "").await.unwrap();
    assert!(report["wal_segments_deleted"].as_u64().unwrap() >= 2, "{report}");
    let text = server.metrics_text().await;
    assert!(metric(&text, "longbow_wal_segments_recycled_total") >= 1, "{text}");
    let stats = action(&mut client, "get_stats", "").await.unwrap();
    // The preallocated next file and a recycled one (two recycled if the
    // snapshot came before the preallocation was done).
    assert!((2..=3).contains(&stats["wal_free_files"].as_u64().unwrap()), "{stats}");
    let on_disk: u64 = std::fs::read_dir(&shard).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(stats["wal_bytes"].as_u64().unwrap(), on_disk, "free files count as WAL disk use");
    // Write on until the newest segment is the recycled file and holds a
    // few commits (fewer than it held before: its old frames follow them).
    let mut i = 40;
    loop {
        let b = batch(i);
        put(&mut client, "rec", vec![b.clone()]).await.unwrap();
        acked.push(b);
        i += 1;
        let newest = wal_segments(&shard).pop().unwrap();
        if commit_ends(&newest).len() >= 3 && old_frames_after_the_log(&newest) {
            break;
        }
        assert!(i < 200, "no segment was made from a recycled file");
    }
    let text = server.metrics_text().await;
    assert_eq!(metric(&text, "longbow_wal_extending_writes_total"), 0, "no commit extended a file:\n{text}");
    for s in wal_segments(&shard).iter().chain(&wal_free_files(&shard)) {
        assert_eq!(std::fs::metadata(s).unwrap().len(), 1 << 20, "{s:?} is preallocated");
    }
    server.kill9();
    (dir, acked)
}

/// A copy of a test directory's `data` and `snapshots`, to damage.
fn copy_with_snapshots(base: &Path, to: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    copy(&base.join("data"), &to.join("data"));
    copy(&base.join("snapshots"), &to.join("snapshots"));
    to.join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_segment_replays_exactly_what_was_acknowledged_after_kill9() {
    let (dir, acked) = crashed_in_a_recycled_segment().await;
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, SEGMENT);
    assert_eq!(held(&server, "rec").await, concat(&acked), "every acknowledged batch once, nothing old");
    let text = server.metrics_text().await;
    assert_eq!(metric(&text, "longbow_wal_torn_tails_total"), 0, "a recycled file's old frames are a clean end");
    assert!(!server.log().contains("WAL corrupt"));
    // The log goes on (the crashed segment sealed in place, the next one
    // preallocated) and survives a clean restart and another crash.
    let more = vector_batch(-5000, 10, DIM);
    put(&mut server.client().await, "rec", vec![more.clone()]).await.unwrap();
    assert_eq!(metric(&server.metrics_text().await, "longbow_wal_extending_writes_total"), 0);
    server.terminate();
    let server = Server::start(&data, 1, SEGMENT);
    let mut all = acked.clone();
    all.push(more);
    assert_eq!(held(&server, "rec").await, concat(&all));
    let (more, _) = put_each(&mut server.client().await, "rec", (300..330).map(batch).collect()).await;
    server.kill9();
    all.extend(more);
    let server = Server::start(&data, 1, SEGMENT);
    assert_eq!(held(&server, "rec").await, concat(&all));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_free_file_becomes_a_segment_loses_nothing() {
    let (base, acked) = crashed_in_a_recycled_segment().await;
    let shard = base.path().join("data/shard-0");
    let newest = wal_segments(&shard).pop().unwrap();
    let next = segment_id(&newest) + 1;
    let header = |id: u64| {
        SegmentHeader {
            block_bytes: 512,
            shard: longbow_engine::ShardId(0),
            generation: 0,
            segment_id: longbow_engine::SegmentId(id),
            first_lsn: longbow_engine::Lsn(1_000_000),
        }
        .encode()
    };
    let rewrite_header = |path: &Path, id: u64| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[..48].copy_from_slice(&header(id));
        std::fs::write(path, bytes).unwrap();
    };
    for case in ["renamed, header rewritten", "header rewritten, renames lost", "preallocation cut short", "too short"]
    {
        let scratch = tempfile::tempdir().unwrap();
        let data = copy_with_snapshots(base.path(), scratch.path());
        let shard = data.join("shard-0");
        let free = wal_free_files(&shard);
        assert!(!free.is_empty(), "{case}");
        let tmp = shard.join(format!(".{next:020}.wal.tmp"));
        let mut expect_id_above = 0;
        match case {
            // Taken for segment `next`: renamed to its temporary name, the
            // new header written and synced; the crash came before the
            // rename to its own name.
            "renamed, header rewritten" => {
                std::fs::rename(&free[0], &tmp).unwrap();
                rewrite_header(&tmp, next);
            }
            // The same, but the directory never recorded the renames: the
            // free file carries a newer segment's header.
            "header rewritten, renames lost" => {
                rewrite_header(&free[0], next + 5);
                expect_id_above = next + 5;
            }
            // A new free file was being zero-filled.
            "preallocation cut short" => {
                std::fs::write(shard.join(".free-99.wal.tmp"), vec![0u8; 300 << 10]).unwrap();
            }
            // A free file shorter than a segment (say, the segment size
            // grew): commits would extend it.
            _ => {
                std::fs::File::options().write(true).open(&free[0]).unwrap().set_len(100 << 10).unwrap();
            }
        }
        let server = Server::start(&data, 1, SEGMENT);
        assert_eq!(held(&server, "rec").await, concat(&acked), "{case}");
        assert!(!server.log().contains("WAL corrupt"), "{case}");
        let left: Vec<_> = std::fs::read_dir(&shard).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_str().unwrap().ends_with(".tmp")), "{case}: {left:?}");
        match case {
            "renamed, header rewritten" => assert!(server.log().contains("caught during its creation"), "{case}"),
            "preallocation cut short" => assert!(server.log().contains("being preallocated"), "{case}"),
            "too short" => assert!(!free[0].exists(), "{case}: deleted"),
            _ => {}
        }
        // New segments go on above every id a file could hold, and the
        // next crash loses nothing either.
        let (more, _) = put_each(&mut server.client().await, "rec", (500..540).map(batch).collect()).await;
        assert_eq!(more.len(), 40, "{case}");
        server.kill9();
        let newest = wal_segments(&shard).pop().unwrap();
        assert!(segment_id(&newest) > expect_id_above, "{case}: {newest:?}");
        let server = Server::start(&data, 1, SEGMENT);
        let mut all = acked.clone();
        all.extend(more);
        assert_eq!(held(&server, "rec").await, concat(&all), "{case}");
        assert_eq!(metric(&server.metrics_text().await, "longbow_wal_torn_tails_total"), 0, "{case}");
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_files_are_not_segments_when_the_shard_count_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 2, SEGMENT);
    let mut client = server.client().await;
    let names = ["a", "b", "c", "d"];
    let mut acked = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let (got, _) = put_each(&mut client, name, (k * 100..k * 100 + 50).map(batch).collect()).await;
        acked.push(got);
    }
    action(&mut client, "force_snapshot", "").await.unwrap();
    // Small batches after the snapshot: in the WAL only, no rotation.
    for (k, name) in names.iter().enumerate() {
        let small = (0..5).map(|i| vector_batch(-((k * 100 + i) as i32) - 1, 10, DIM)).collect();
        let (got, _) = put_each(&mut client, name, small).await;
        acked[k].extend(got);
    }
    server.kill9();
    for k in 0..2 {
        let free = wal_free_files(&data.join(format!("shard-{k}")));
        assert!((2..=3).contains(&free.len()), "shard {k}: the next file and recycled ones: {free:?}");
    }
    for shards in [1, 3, 2] {
        let server = Server::start(&data, shards, SEGMENT);
        for (k, name) in names.iter().enumerate() {
            assert_eq!(held(&server, name).await, concat(&acked[k]), "{name} after the change to {shards} shards");
        }
        let (more, _) =
            put_each(&mut server.client().await, "a", (900 + shards * 10..900 + shards * 10 + 20).map(batch).collect())
                .await;
        acked[0].extend(more);
        server.kill9();
        let dirs: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(
            !data.join(format!("shard-{shards}")).exists(),
            "{shards} shards: a retired directory goes, free files and all: {dirs:?}"
        );
    }
    let server = Server::start(&data, 2, SEGMENT);
    for (k, name) in names.iter().enumerate() {
        assert_eq!(held(&server, name).await, concat(&acked[k]), "{name}");
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recycling_covered_segments_are_deleted_and_one_file_is_kept_ready() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, &["--max-wal-size", "1MiB", "--wal-recycle-segments", "0"]);
    let mut client = server.client().await;
    let (acked, _) = put_each(&mut client, "plain", (0..40).map(batch).collect()).await;
    let report = action(&mut client, "force_snapshot", "").await.unwrap();
    assert!(report["wal_segments_deleted"].as_u64().unwrap() >= 2, "{report}");
    let text = server.metrics_text().await;
    assert_eq!(metric(&text, "longbow_wal_segments_recycled_total"), 0);
    assert_eq!(metric(&text, "longbow_wal_extending_writes_total"), 0);
    assert!(metric(&text, "longbow_wal_files_preallocated_total") >= 3, "{text}");
    assert!(wal_free_files(&data.join("shard-0")).len() <= 1);
    server.kill9();
    let server = Server::start(&data, 1, &["--max-wal-size", "1MiB", "--wal-recycle-segments", "0"]);
    assert_eq!(held(&server, "plain").await, concat(&acked));
    server.terminate();
}
