//! A damaged WAL, at many offsets: the newest segment's torn or garbled
//! tail costs only the commits the damage touches; damage anywhere else is
//! reported with file and offset and never skipped in silence.

mod common;

use arrow::array::RecordBatch;
use common::*;

const DIM: i32 = 16;

/// A crashed one-shard data directory: `commits` single-batch commits of
/// `rows` rows into `damaged`, acknowledged one at a time.
struct Crashed {
    dir: tempfile::TempDir,
    written: Vec<RecordBatch>,
    /// Where each acknowledged commit ends in the newest segment: commit `i`
    /// lies wholly before `ends[i]` (read from the file's frames: segment
    /// files are preallocated, their length is fixed).
    ends: Vec<u64>,
}

async fn crashed(commits: usize, rows: usize, extra: &[&str]) -> Crashed {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, extra);
    let mut client = server.client().await;
    let mut written = Vec::new();
    for i in 0..commits {
        let b = vector_batch((i * rows) as i32, rows, DIM);
        put(&mut client, "damaged", vec![b.clone()]).await.unwrap();
        written.push(b);
    }
    server.kill9();
    // The batches' commits are the last ones (the dataset's schema came
    // first); with several segments, the newest holds only the last few.
    let all = commit_ends(&wal_segments(&data.join("shard-0")).pop().unwrap());
    let ends = all[all.len().saturating_sub(commits)..].to_vec();
    Crashed { dir, written, ends }
}

/// Rows of `damaged` a server on `data` holds, or `None` if it is unknown.
async fn held(server: &Server) -> Option<RecordBatch> {
    match get(&mut server.client().await, "damaged").await {
        Ok(b) if b.is_empty() => None,
        Ok(b) => Some(concat(&b)),
        Err(e) => {
            assert_eq!(code(&e), tonic::Code::NotFound, "{e}");
            None
        }
    }
}

/// What recovery kept is a prefix of what was written, of `lo..=hi`
/// commits.
fn assert_prefix(got: Option<RecordBatch>, written: &[RecordBatch], lo: usize, hi: usize, what: &str) {
    let n = got.as_ref().map_or(0, |b| b.num_rows());
    let k = (0..=written.len()).find(|k| rows(&written[..*k]) == n).unwrap_or_else(|| panic!("{what}: {n} rows"));
    assert!((lo..=hi).contains(&k), "{what}: kept {k} commits, expected {lo}..={hi}");
    if let Some(got) = got {
        assert_eq!(got, concat(&written[..k]), "{what}: the kept rows are the first {k} commits, once each");
    }
}

/// Commits wholly before `at`, and those that begin before it.
fn bounds(ends: &[u64], at: u64) -> (usize, usize) {
    let lo = ends.iter().filter(|e| **e <= at).count();
    (lo, (lo + 1).min(ends.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_newest_segment_costs_only_the_commits_it_touches() {
    // 6.4 KB bodies: frames packed into the commit buffer (version 1).
    damage_in_the_newest_segment(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_bodies_written_in_place_costs_only_the_commits_it_touches() {
    // 96 KB bodies: written from the gateway's aligned memory (version 3),
    // the body from a block boundary on.
    damage_in_the_newest_segment(1500).await;
}

async fn damage_in_the_newest_segment(rows: usize) {
    let base = crashed(6, rows, &[]).await;
    let (written, ends) = (&base.written, &base.ends);
    let last_start = ends[4];
    let mut offsets: Vec<u64> = vec![0, 20, 47, 48, 300, 511, 512, 513, 700];
    for w in ends.windows(2) {
        // A commit's first bytes (frame header), its middle (IPC body) and
        // its last bytes (padding to the block); with a body written in
        // place, also where that body starts (a block boundary).
        offsets.extend([w[0], w[0] + 8, w[0] + 40, (w[0] + w[1]) / 2, w[1] - 200, w[1] - 1]);
        offsets.extend([w[0] + 511, w[0] + 512, w[0] + 4096]);
    }
    offsets.sort();
    offsets.dedup();
    let mut checked = 0;
    for at in offsets {
        for damage in ["truncate", "garble"] {
            let scratch = tempfile::tempdir().unwrap();
            let data = copy_of(base.dir.path(), scratch.path());
            let seg = wal_segments(&data.join("shard-0")).pop().unwrap();
            let what = format!("{damage} at {at} (commit ends {ends:?})");
            if damage == "truncate" {
                truncate(&seg, at)
            } else {
                garble(&seg, at)
            }
            let header_damaged = at < 48;
            let header_padding = (48..512).contains(&at);
            let in_last_commit = at >= last_start;
            let refused = header_damaged || (damage == "garble" && !header_padding && !in_last_commit);
            match Server::try_start(&data, 1, &[]) {
                Ok(server) => {
                    assert!(!refused, "{what}: must refuse to start");
                    let got = held(&server).await;
                    let (lo, hi) = match (damage, header_padding) {
                        // Unread padding of the header block: nothing lost.
                        ("garble", true) => (6, 6),
                        // The header survives, no commit does.
                        ("truncate", true) => (0, 0),
                        _ => bounds(ends, at),
                    };
                    assert_prefix(got, written, lo, hi, &what);
                    // The log goes on from there and survives a restart.
                    let more = vector_batch(1_000_000, 10, DIM);
                    put(&mut server.client().await, "damaged", vec![more.clone()]).await.unwrap();
                    server.terminate();
                    let server = Server::start(&data, 1, &[]);
                    let got = held(&server).await.unwrap();
                    assert_eq!(got.slice(got.num_rows() - 10, 10), more, "{what}: written after recovery");
                    server.terminate();
                }
                Err(log) => {
                    assert!(refused, "{what}: refused to start:\n{log}");
                    assert!(log.contains("WAL corrupt"), "{what}: {log}");
                    assert!(log.contains(seg.file_name().unwrap().to_str().unwrap()), "{what}: names the file: {log}");
                    assert!(log.contains("offset"), "{what}: names the offset: {log}");
                    if !header_damaged {
                        // Told to, it keeps what precedes the damage.
                        let server = Server::start(&data, 1, &["--on-corruption", "truncate"]);
                        let (lo, hi) = bounds(ends, at);
                        assert_prefix(held(&server).await, written, lo, hi, &format!("{what}, --on-corruption"));
                        server.terminate();
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_older_segment_is_reported_with_file_and_offset() {
    // 256 KiB commits, 1 MiB segments: three or more sealed segments.
    let base = crashed(14, 4000, &["--max-wal-size", "1MiB"]).await;
    let segments = wal_segments(&base.dir.path().join("data/shard-0"));
    assert!(segments.len() >= 3, "{segments:?}");
    let older = segments[segments.len() - 2].file_name().unwrap().to_owned();
    // Where its log ends: the block of its seal frame (the file, being
    // preallocated, is longer).
    let seal = *segment_frames(&segments[segments.len() - 2]).last().unwrap();
    assert_eq!(seal.kind, longbow_engine::wal::format::FrameKind::Seal);
    let len = seal.offset + 512;
    // The last byte before the second commit (padding, or the end of the
    // first commit's frame): the block that starts with a frame's magic.
    let bytes = std::fs::read(&segments[segments.len() - 2]).unwrap();
    let magic = &bytes[512..516];
    let second_commit = (1024..bytes.len()).step_by(512).find(|b| &bytes[*b..*b + 4] == magic).unwrap() as u64;
    // The header, the first frame's header, a commit's body, the end of a
    // commit, the seal frame; a cut.
    let cases = [
        ("garble", 0),
        ("garble", 512 + 3),
        ("garble", len / 2),
        ("garble", second_commit - 1),
        ("garble", len - 512 + 20),
        ("truncate", len / 2),
    ];
    for (damage, at) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let data = copy_of(base.dir.path(), scratch.path());
        let seg = data.join("shard-0").join(&older);
        if damage == "truncate" {
            truncate(&seg, at)
        } else {
            garble(&seg, at)
        }
        let log = match Server::try_start(&data, 1, &[]) {
            Ok(server) => panic!("{damage} at {at}: must refuse; started:\n{}", server.log()),
            Err(log) => log,
        };
        assert!(log.contains("WAL corrupt"), "{damage} at {at}: {log}");
        assert!(log.contains(older.to_str().unwrap()), "{damage} at {at}: names the file: {log}");
        assert!(log.contains("offset"), "{damage} at {at}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_caught_in_creation_is_removed_but_an_empty_named_one_is_damage() {
    let base = crashed(3, 100, &[]).await;
    // A crash while the next segment was being created leaves its
    // temporary file: empty, a block of zeros, or a whole header.
    for (sealed, contents) in [(false, 0usize), (true, 512), (true, 4096)] {
        let scratch = tempfile::tempdir().unwrap();
        let data = copy_of(base.dir.path(), scratch.path());
        if sealed {
            // A clean restart seals the crashed segment and starts another.
            Server::start(&data, 1, &[]).terminate();
        }
        let shard = data.join("shard-0");
        let newest = wal_segments(&shard).pop().unwrap();
        let next = newest.file_name().unwrap().to_str().unwrap()[..20].parse::<u64>().unwrap() + 1;
        let mut header = std::fs::read(&newest).unwrap();
        header.truncate(contents);
        std::fs::write(shard.join(format!(".{next:020}.wal.tmp")), header).unwrap();
        let server = Server::start(&data, 1, &[]);
        assert_eq!(held(&server).await.unwrap(), concat(&base.written), "sealed {sealed}, {contents} bytes");
        assert!(server.log().contains("caught during its creation"), "logged: {}", server.log());
        assert!(!shard.join(format!(".{next:020}.wal.tmp")).exists());
        put(&mut server.client().await, "damaged", vec![vector_batch(77, 7, DIM)]).await.unwrap();
        server.kill9();
        let server = Server::start(&data, 1, &[]);
        assert_eq!(held(&server).await.unwrap().num_rows(), rows(&base.written) + 7);
        server.terminate();
    }
    // A named segment is always created with its header: empty, it is
    // damage (here: the newest, holding acknowledged commits, emptied).
    let scratch = tempfile::tempdir().unwrap();
    let data = copy_of(base.dir.path(), scratch.path());
    truncate(&wal_segments(&data.join("shard-0")).pop().unwrap(), 0);
    let log = Server::try_start(&data, 1, &[]).err().expect("an emptied segment must be refused");
    assert!(log.contains("segment header is missing or damaged"), "{log}");
}
