//! The offline tools of the real binary (`longbow wal verify|dump`,
//! `longbow snapshot ls`) on data a real server wrote and then lost to
//! `kill -9`, damaged the way `wal_damage.rs` damages it. Where the tool
//! judges a log, a server start on the same bytes is asked too: both must
//! agree on clean, torn and damaged, and on the file and offset.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::RecordBatch;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use common::*;
use futures::TryStreamExt;
use serde_json::Value;

const DIM: i32 = 16;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
}

/// Runs `longbow <args>` (a tool) to its end.
fn longbow(args: &[&str], dir: Option<&Path>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longbow"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.arg(d);
    }
    let out = cmd.output().expect("run longbow");
    let run = Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    eprintln!("$ longbow {} {:?}: exit {}\n{}{}", args.join(" "), dir, run.code, run.stdout, run.stderr);
    run
}

fn frames(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "frame").collect()
}

/// Rows of each record batch message of a frame.
fn batch_rows(frame: &Value) -> Vec<u64> {
    let messages = frame["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().filter(|m| m["type"] == "record_batch").map(|m| m["rows"].as_u64().unwrap()).collect()
}

/// One DoPut stream of `batches`, each with its `app_metadata` (`None`:
/// none); returns the acknowledgements' JSON.
async fn put_with(client: &mut FlightClient, dataset: &str, batches: &[(RecordBatch, Option<Value>)]) -> Vec<Value> {
    let plain: Vec<RecordBatch> = batches.iter().map(|(b, _)| b.clone()).collect();
    let mut data: Vec<FlightData> =
        arrow_flight::utils::batches_to_flight_data(&vector_schema(DIM), plain.to_vec()).unwrap();
    data[0] = data[0].clone().with_descriptor(FlightDescriptor::new_path(vec![dataset.to_owned()]));
    for (d, (_, meta)) in data[1..].iter_mut().zip(batches) {
        if let Some(m) = meta {
            d.app_metadata = serde_json::to_vec(m).unwrap().into();
        }
    }
    let acks: Vec<_> =
        client.do_put(futures::stream::iter(data.into_iter().map(Ok))).await.unwrap().try_collect().await.unwrap();
    acks.iter().map(|a| serde_json::from_slice(&a.app_metadata).unwrap()).collect()
}

/// A crashed one-shard data directory: `commits` single-batch commits of
/// `rows` rows into `logged`, and the newest segment's length after each.
struct Crashed {
    dir: tempfile::TempDir,
    ends: Vec<u64>,
}

impl Crashed {
    async fn new(commits: usize, rows: usize, extra: &[&str]) -> Crashed {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = Server::start(&data, 1, extra);
        let mut client = server.client().await;
        let mut ends = Vec::new();
        for i in 0..commits {
            put(&mut client, "logged", vec![vector_batch((i * rows) as i32, rows, DIM)]).await.unwrap();
            // Where the log ends: segment files are preallocated, so not their length.
            let newest = wal_segments(&data.join("shard-0")).pop().unwrap();
            ends.push(commit_ends(&newest).last().copied().unwrap_or(0));
        }
        server.kill9();
        Crashed { dir, ends }
    }

    /// A fresh copy of the data directory, to damage.
    fn copy(&self, to: &Path) -> PathBuf {
        copy_of(self.dir.path(), to)
    }
}

/// The offset in `text` after `at offset ` or ` offset ` on the first line
/// naming `file`.
fn offset_named(text: &str, file: &Path) -> u64 {
    let name = file.file_name().unwrap().to_str().unwrap();
    let line =
        text.lines().find(|l| l.contains(name) && l.contains("offset")).unwrap_or_else(|| panic!("{name}: {text}"));
    let after = &line[line.find("offset ").unwrap() + 7..];
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// `wal verify` finds damage at a file and offset, and a start refuses at
/// the same ones.
fn assert_damage_agrees(data: &Path, seg: &Path, what: &str) {
    let run = longbow(&["wal", "verify"], Some(data));
    assert_eq!(run.code, 3, "{what}: exit 3 on damage");
    assert!(run.stdout.contains("damage:"), "{what}");
    let tool_offset = offset_named(&run.stdout, seg);
    let log = match Server::try_start(data, 1, &[]) {
        Ok(server) => panic!("{what}: the server started on what verify calls damage:\n{}", server.log()),
        Err(log) => log,
    };
    let server_line: String = log.lines().filter(|l| l.contains("WAL corrupt")).collect();
    assert_eq!(tool_offset, offset_named(&server_line, seg), "{what}: same offset as the server's refusal:\n{log}");
    let json = longbow(&["wal", "verify", "--json"], Some(data)).json();
    assert_eq!(json.last().unwrap()["verdict"], "damage", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_lists_what_was_written_and_verify_passes_a_clean_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 2, &[]);
    let mut client = server.client().await;
    // Plain batches, one commit each.
    let mut plain = Vec::new();
    for rows in [10, 20, 30] {
        let r = put(&mut client, "plain", vec![vector_batch(0, rows, DIM)]).await.unwrap();
        plain.push((lsn_of(&r[0]), rows as u64));
    }
    // An idempotent producer's batches, one stream.
    let batches: Vec<_> = (0..3u64)
        .map(|seq| {
            (vector_batch(seq as i32, 5 + seq as usize, DIM), Some(serde_json::json!({"producer": "p", "seq": seq})))
        })
        .collect();
    let acks = put_with(&mut client, "idem", &batches).await;
    let idem: Vec<(u64, u64, u64)> = acks
        .iter()
        .zip(&batches)
        .map(|(a, (b, _))| (a["lsn"].as_u64().unwrap(), b.num_rows() as u64, a["seq"].as_u64().unwrap()))
        .collect();
    server.kill9();

    let run = longbow(&["wal", "dump", "--json"], Some(&data));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let events = run.json();
    let segments: Vec<_> = events.iter().filter(|e| e["type"] == "segment").collect();
    assert_eq!(segments.len(), 2, "one segment per shard");
    for s in &segments {
        assert_eq!(s["first_lsn"], 1);
        assert!(s["block_bytes"].as_u64().unwrap() >= 512);
        let file = s["file"].as_str().unwrap();
        assert!(file.contains(&format!("shard-{}", s["shard"])), "{s}");
    }
    let of = |ds: &str| -> Vec<&Value> { frames(&events).into_iter().filter(|f| f["dataset"] == ds).collect() };
    let got: Vec<(u64, u64)> = of("plain")
        .iter()
        .filter(|f| !batch_rows(f).is_empty())
        .map(|f| (f["lsn"].as_u64().unwrap(), batch_rows(f)[0]))
        .collect();
    assert_eq!(got, plain, "LSNs and rows of the plain batches");
    let first = of("plain")[0];
    assert_eq!(first["messages"][0], serde_json::json!({"type": "schema", "fields": ["id", "vector"]}));
    assert!(of("plain").iter().all(|f| f["version"] == 1 && f["kind"] == "data" && f.get("seq").is_none()));
    let got: Vec<(u64, u64, u64)> = of("idem")
        .iter()
        .filter(|f| !batch_rows(f).is_empty())
        .map(|f| {
            assert_eq!((&f["version"], &f["producer"]), (&Value::from(2), &Value::from("p")), "{f}");
            (f["lsn"].as_u64().unwrap(), batch_rows(f)[0], f["seq"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(got, idem, "LSNs, rows and sequence numbers of the producer's batches");
    for f in frames(&events) {
        let (offset, commit) = (f["offset"].as_u64().unwrap(), f["commit_start"].as_u64().unwrap());
        assert!(commit <= offset && commit % segments[0]["block_bytes"].as_u64().unwrap() == 0, "{f}");
        assert!(f["payload_bytes"].as_u64().unwrap() > 0, "{f}");
    }
    // A crash leaves no seal: each shard's log ends clean.
    let ends: Vec<_> = events.iter().filter(|e| e["type"] == "end").collect();
    assert!(ends.iter().all(|e| e["state"] == "clean"), "{ends:?}");

    // Filters.
    let only = longbow(&["wal", "dump", "--json", "--dataset", "idem"], Some(&data)).json();
    assert!(frames(&only).iter().all(|f| f["dataset"] == "idem"));
    assert_eq!(frames(&only).len(), of("idem").len());
    let from = idem[1].0;
    let later = longbow(&["wal", "dump", "--json", "--from-lsn", &from.to_string()], Some(&data)).json();
    assert!(frames(&later).iter().all(|f| f["lsn"].as_u64().unwrap() >= from));
    assert!(frames(&later).iter().any(|f| f["seq"] == 1));
    assert!(!frames(&later).iter().any(|f| f["seq"] == 0));

    // Text, of one shard directory.
    let shard = PathBuf::from(segments[0]["file"].as_str().unwrap()).parent().unwrap().to_owned();
    let text = longbow(&["wal", "dump"], Some(&shard));
    assert_eq!(text.code, 0);
    let block = segments[0]["block_bytes"].as_u64().unwrap();
    assert!(text.stdout.contains(&format!("commit at offset {block}\n")), "{}", text.stdout);
    assert!(text.stdout.contains("segment ") && text.stdout.contains("first lsn 1"));
    let all = longbow(&["wal", "dump"], Some(&data)).stdout;
    assert!(all.contains("record batch 30 rows") && all.contains("producer \"p\" seq 2"), "{all}");

    for d in [&data, &shard] {
        let run = longbow(&["wal", "verify"], Some(d));
        assert_eq!(run.code, 0);
        assert!(run.stdout.lines().last().unwrap().starts_with("clean"), "{}", run.stdout);
    }
    let json = longbow(&["wal", "verify", "--json"], Some(&data)).json();
    assert_eq!(json.last().unwrap()["verdict"], "clean");
    // The server agrees: it starts and holds every row.
    let server = Server::start(&data, 2, &[]);
    assert_eq!(rows(&get(&mut server.client().await, "plain").await.unwrap()), 60);
    server.terminate();
    // A clean shutdown seals each segment.
    let sealed = longbow(&["wal", "dump", "--json"], Some(&data)).json();
    assert!(sealed.iter().any(|e| e["type"] == "frame" && e["kind"] == "seal"));
    assert_eq!(longbow(&["wal", "verify"], Some(&data)).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_torn_tail_and_names_it() {
    let base = Crashed::new(4, 100, &[]).await;
    let last_start = base.ends[2];
    for (damage, at) in [("truncate", (base.ends[2] + base.ends[3]) / 2), ("garble", last_start + 40)] {
        let scratch = tempfile::tempdir().unwrap();
        let data = base.copy(scratch.path());
        let seg = wal_segments(&data.join("shard-0")).pop().unwrap();
        if damage == "truncate" {
            truncate(&seg, at)
        } else {
            garble(&seg, at)
        }
        let run = longbow(&["wal", "verify"], Some(&data));
        assert_eq!(run.code, 0, "{damage} at {at}: a torn tail is not damage");
        assert!(run.stdout.contains("torn tail:"), "{damage} at {at}");
        assert_eq!(
            offset_named(&run.stdout, &seg),
            last_start,
            "{damage} at {at}: the log is cut where the last commit starts"
        );
        assert!(run.stdout.lines().last().unwrap().starts_with("torn tail only"), "{}", run.stdout);
        let json = longbow(&["wal", "verify", "--json"], Some(&data)).json();
        assert_eq!(json.last().unwrap()["verdict"], "torn_tail");
        // dump shows the three whole commits, then the tear.
        let dump = longbow(&["wal", "dump", "--json"], Some(&data)).json();
        assert_eq!(frames(&dump).iter().filter(|f| !batch_rows(f).is_empty()).count(), 3);
        // The server agrees: it starts, with the three commits.
        let server = Server::try_start(&data, 1, &[]).unwrap_or_else(|log| panic!("{damage} at {at}: {log}"));
        assert_eq!(rows(&get(&mut server.client().await, "logged").await.unwrap()), 300);
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_on_damage_with_file_and_offset_as_the_server_does() {
    // 272 KB commits, 1 MiB segments: three or more sealed segments.
    let base = Crashed::new(14, 4000, &["--max-wal-size", "1MiB"]).await;
    let segments = wal_segments(&base.dir.path().join("data/shard-0"));
    assert!(segments.len() >= 3, "{segments:?}");
    let older = segments[segments.len() - 2].file_name().unwrap().to_owned();
    // The log's end in it (the file is preallocated beyond).
    let len = *commit_ends(&segments[segments.len() - 2]).last().unwrap();
    for at in [0, 512 + 3, len / 2] {
        let scratch = tempfile::tempdir().unwrap();
        let data = base.copy(scratch.path());
        let seg = data.join("shard-0").join(&older);
        garble(&seg, at);
        assert_damage_agrees(&data, &seg, &format!("older segment garbled at {at}"));
    }

    // The newest segment garbled in its middle, later commits intact.
    let small = Crashed::new(3, 100, &[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let newest = small.copy(scratch.path());
    let seg = wal_segments(&newest.join("shard-0")).pop().unwrap();
    garble(&seg, small.ends[0] - 200);
    let run = longbow(&["wal", "verify"], Some(&newest));
    assert!(run.stdout.contains("an intact commit follows"), "{}", run.stdout);
    assert_damage_agrees(&newest, &seg, "newest segment garbled before a later commit");

    // The older segment's damage is reported, and the newer segments are
    // still checked; dump shows the frames before it and exits 3 too.
    let scratch = tempfile::tempdir().unwrap();
    let data = base.copy(scratch.path());
    garble(&data.join("shard-0").join(&older), len / 2);
    let dump = longbow(&["wal", "dump", "--json"], Some(&data));
    assert_eq!(dump.code, 3);
    let events = dump.json();
    let damaged: Vec<_> = events.iter().filter(|e| e["type"] == "end" && e["state"] == "damage").collect();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    let summary = events.iter().find(|e| e["type"] == "summary").unwrap();
    assert_eq!(summary["last_lsn"], events.iter().rev().find(|e| e["type"] == "end").unwrap()["last_lsn"]);
    assert!(damaged[0]["file"].as_str().unwrap().ends_with(older.to_str().unwrap()));
    let last = events.iter().rev().find(|e| e["type"] == "end").unwrap();
    assert_eq!(last["state"], "clean", "the newest segment is still read: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_frames_of_a_recycled_segment_after_the_log_are_not_damage() {
    // Three commits a segment: the newest holds one.
    let base = Crashed::new(7, 4000, &["--max-wal-size", "1MiB"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let data = base.copy(scratch.path());
    let segments = wal_segments(&data.join("shard-0"));
    let (oldest, newest) = (&segments[0], segments.last().unwrap());
    // Recycling: the newest segment written over the file of the oldest,
    // whose later bytes stay.
    let mut recycled = std::fs::read(oldest).unwrap();
    let fresh = std::fs::read(newest).unwrap();
    // The newest segment's log, up to its end, over the oldest's frames.
    let end = *commit_ends(newest).last().unwrap() as usize;
    assert!(end < *commit_ends(oldest).last().unwrap() as usize, "the old frames reach beyond the new log");
    recycled[..end].copy_from_slice(&fresh[..end]);
    std::fs::write(newest, &recycled).unwrap();
    let run = longbow(&["wal", "verify"], Some(&data));
    assert_eq!(run.code, 0, "stale bytes are not damage");
    assert!(run.stdout.contains("stale (recycled)"), "{}", run.stdout);
    assert_eq!(offset_named(&run.stdout, newest), end as u64);
    assert!(run.stdout.lines().last().unwrap().starts_with("clean"), "{}", run.stdout);
    // The server reads the same bytes as a clean end and starts.
    let server = Server::try_start(&data, 1, &[]).unwrap_or_else(|log| panic!("{log}"));
    assert_eq!(rows(&get(&mut server.client().await, "logged").await.unwrap()), 7 * 4000);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_ls_shows_the_datasets_files_of_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let snapshots = dir.path().join("snapshots");
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    put(&mut client, "snap", vec![vector_batch(0, 100, DIM), vector_batch(100, 50, DIM)]).await.unwrap();
    put_with(&mut client, "snap", &[(vector_batch(150, 7, DIM), Some(serde_json::json!({"producer": "p", "seq": 0})))])
        .await;
    action(&mut client, "force_snapshot", "").await.unwrap();
    server.kill9();

    let files = table_files(&snapshots, "snap");
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    assert!(snapshots.join("snap").join(&file).exists());

    let run = longbow(&["snapshot", "ls"], Some(&snapshots));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("dataset snap: 1 file(s), 157 rows"), "{}", run.stdout);
    assert!(run.stdout.contains(&file), "{}", run.stdout);
    let json = longbow(&["snapshot", "ls", "--json"], Some(&snapshots)).json();
    let ds = json.iter().find(|e| e["type"] == "dataset").unwrap();
    assert_eq!(ds["dataset"], "snap");
    assert_eq!(ds["rows"], 157);
    assert!(ds["covered_lsn"].as_u64().unwrap() >= 3, "{ds}");
    assert_eq!(ds["producers"], 1);
    assert_eq!(ds["files"][0]["name"], file.as_str());
    assert_eq!(ds["files"][0]["bytes"], std::fs::metadata(snapshots.join("snap").join(&file)).unwrap().len());
    assert_eq!(ds["schema"], serde_json::json!(["id", "vector"]));

    // A listed file gone is damage, as a start finds it.
    std::fs::remove_file(snapshots.join("snap").join(&file)).unwrap();
    let run = longbow(&["snapshot", "ls"], Some(&snapshots));
    assert_eq!(run.code, 3);
    assert!(run.stdout.contains("missing"), "{}", run.stdout);
}

#[test]
fn help_names_the_tools_and_bad_arguments_are_refused() {
    let help = longbow(&["--help"], None);
    assert_eq!(help.code, 0);
    for tool in ["longbow wal verify DIR", "longbow wal dump DIR", "longbow snapshot ls DIR"] {
        assert!(help.stdout.contains(tool), "{tool}: {}", help.stdout);
    }
    assert!(help.stdout.contains("--data-path"), "the server's flags are unchanged");
    let wal = longbow(&["wal", "--help"], None);
    assert_eq!(wal.code, 0);
    assert!(wal.stdout.contains("verify") && wal.stdout.contains("dump"), "{}", wal.stdout);
    assert_eq!(longbow(&["wal", "verify"], Some(Path::new("/nonexistent/longbow"))).code, 1);
    assert_eq!(longbow(&["wal", "frobnicate"], None).code, 2);
    // Server flags are not tool flags.
    assert_eq!(longbow(&["wal", "verify", "--data-path", "x"], None).code, 2);
}
