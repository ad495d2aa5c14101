//! End-to-end behaviour of the real server through the Rust Flight client.

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow_flight::{Action, FlightData, FlightDescriptor};
use common::*;
use futures::{StreamExt, TryStreamExt};

const DIM: i32 = 16;

/// Writes `per_dataset` batches of varying sizes into each dataset; returns
/// what was written, per dataset.
async fn fill(server: &Server, datasets: &[String], per_dataset: usize) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut written = BTreeMap::new();
    let mut tasks = Vec::new();
    for (d, name) in datasets.iter().enumerate() {
        let batches: Vec<RecordBatch> =
            (0..per_dataset).map(|i| vector_batch((d * 100_000 + i * 1000) as i32, 1 + (i * 37) % 300, DIM)).collect();
        written.insert(name.clone(), batches.clone());
        let mut client = server.client().await;
        let name = name.clone();
        tasks.push(tokio::spawn(async move { put(&mut client, &name, batches).await.unwrap() }));
    }
    for (t, name) in tasks.into_iter().zip(datasets) {
        let acks = t.await.unwrap();
        assert_eq!(acks.len(), per_dataset, "one PutResult per batch for {name}");
        let lsns: Vec<u64> = acks.iter().map(lsn_of).collect();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "LSNs increase within a stream: {lsns:?}");
    }
    written
}

async fn assert_holds(server: &Server, expected: &BTreeMap<String, Vec<RecordBatch>>) {
    let mut client = server.client().await;
    for (name, batches) in expected {
        let got = get(&mut client, name).await.unwrap();
        assert_eq!(concat(&got), concat(batches), "contents of {name}");
    }
    let infos: Vec<_> = client.list_flights("").await.unwrap().try_collect().await.unwrap();
    assert_eq!(infos.len(), expected.len());
    for info in infos {
        let name = info.flight_descriptor.as_ref().unwrap().path[0].clone();
        assert_eq!(info.total_records as usize, rows(&expected[&name]), "total_records of {name}");
        assert!(info.total_bytes > 0);
        // The endpoint's ticket works with DoGet.
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let got: Vec<RecordBatch> = client.do_get(ticket).await.unwrap().try_collect().await.unwrap();
        assert_eq!(rows(&got), rows(&expected[&name]));
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("set-{i}.v1")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_across_shards_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 3, &[]);
    let datasets = names(8);
    let written = fill(&server, &datasets, 25).await;
    assert_holds(&server, &written).await;

    let mut client = server.client().await;
    let info = client.get_flight_info(FlightDescriptor::new_path(vec![datasets[0].clone()])).await.unwrap();
    assert_eq!(info.total_records as usize, rows(&written[&datasets[0]]));
    let schema = client.get_schema(FlightDescriptor::new_path(vec![datasets[0].clone()])).await.unwrap();
    assert_eq!(schema, *vector_schema(DIM));
    let actions: Vec<_> = client.list_actions().await.unwrap().try_collect().await.unwrap();
    assert!(actions.iter().any(|a| a.r#type == "get_stats"));
    let stats: Vec<_> = client.do_action(Action::new("get_stats", "")).await.unwrap().try_collect().await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats[0]).unwrap();
    assert_eq!(stats["datasets"], 8);
    assert_eq!(stats["records"].as_u64().unwrap() as usize, written.values().map(|b| rows(b)).sum::<usize>());
    let used_shards: std::collections::BTreeSet<u64> =
        stats["per_dataset"].as_array().unwrap().iter().map(|d| d["shard"].as_u64().unwrap()).collect();
    assert!(used_shards.len() > 1, "8 datasets land on more than one of 3 shards: {used_shards:?}");

    assert!(server.http_get("/healthz").await.starts_with("HTTP/1.1 200"), "healthy");
    let metrics = server.metrics_text().await;
    for name in [
        "longbow_wal_writes_total{status=\"ok\"}",
        "longbow_wal_bytes_written_total",
        "longbow_wal_replay_duration_seconds_bucket",
        "longbow_wal_commit_duration_seconds_bucket",
        "longbow_rows_ingested_total",
        "longbow_batches_ingested_total 200",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }

    // Graceful restart, then more writes, then a restart after a crash.
    server.terminate();
    let server = Server::start(&data, 3, &[]);
    assert_holds(&server, &written).await;
    let more = fill(&server, &datasets[..3], 5).await;
    let mut expected = written.clone();
    for (name, batches) in more {
        expected.get_mut(&name).unwrap().extend(batches);
    }
    server.kill9();
    let server = Server::start(&data, 3, &[]);
    assert_holds(&server, &expected).await;
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_cannot_share_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, 1, &[]);
    let log = Server::try_start(&data, 1, &[]).err().expect("second server must refuse");
    assert!(log.contains("in use by another longbow process"), "{log}");
    first.terminate();
}

/// Writers stream one-row batches `(writer, seq)` and count the PutResults
/// they get; the server is killed mid-stream. After restart every
/// acknowledged batch is present exactly once, in order, and anything
/// beyond the acknowledged prefix is a contiguous continuation of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_concurrent_writes_keeps_every_acknowledged_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 2, &[]);
    const WRITERS: i64 = 6;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let dataset = format!("crash-{}", w % 3); // two writers share each dataset
            let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(16);
            let feed = tokio::spawn(async move {
                for seq in 0.. {
                    if tx.send(seq_batch(w, seq)).await.is_err() {
                        break;
                    }
                    if seq % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
            let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![dataset])))
                .build(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok));
            let mut acked = 0i64;
            if let Ok(mut results) = client.do_put(stream).await {
                while let Some(Ok(_)) = results.next().await {
                    acked += 1;
                }
            }
            feed.abort();
            (w, acked)
        }));
    }
    // Let acknowledgements accumulate, then crash.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill9();
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (w, n) = t.await.unwrap();
        acked.insert(w, n);
    }
    assert!(acked.values().all(|&n| n > 0), "every writer got acknowledgements before the crash: {acked:?}");

    let server = Server::start(&data, 2, &[]);
    let mut client = server.client().await;
    let mut seen: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for d in 0..3 {
        for b in get(&mut client, &format!("crash-{d}")).await.unwrap() {
            let writers = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let seqs = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                seen.entry(writers.value(i)).or_default().push(seqs.value(i));
            }
        }
    }
    for (w, n) in acked {
        let got = seen.remove(&w).unwrap_or_default();
        assert!(got.len() as i64 >= n, "writer {w}: {n} acknowledged, {} recovered", got.len());
        let expected: Vec<i64> = (0..got.len() as i64).collect();
        assert_eq!(got, expected, "writer {w}: recovered batches must be 0.. in order, once each");
    }
    server.terminate();
}

fn newest_segment(shard_dir: &std::path::Path) -> std::path::PathBuf {
    wal_segments(shard_dir).pop().unwrap()
}

/// Crash after `n` single-batch commits of `dataset` on a one-shard server.
async fn crash_after_commits(data: &std::path::Path, dataset: &str, n: usize) -> Vec<RecordBatch> {
    let server = Server::start(data, 1, &[]);
    let mut client = server.client().await;
    let mut written = Vec::new();
    for i in 0..n {
        let b = vector_batch(i as i32 * 100, 100, DIM);
        // One stream per batch, waiting for the ack: one commit each.
        put(&mut client, dataset, vec![b.clone()]).await.unwrap();
        written.push(b);
    }
    server.kill9();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_counted() {
    for damage in ["truncate", "garble"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let written = crash_after_commits(&data, "torn", 6).await;
        let seg = newest_segment(&data.join("shard-0"));
        // The end of the last commit (the file is preallocated: longer).
        let len = *commit_ends(&seg).last().unwrap();
        match damage {
            // The last commit's write was cut short.
            "truncate" => std::fs::File::options().write(true).open(&seg).unwrap().set_len(len - 700).unwrap(),
            // The last commit's final sectors hold garbage.
            _ => {
                let mut bytes = std::fs::read(&seg).unwrap();
                let at = len as usize - 600;
                bytes[at..at + 64].fill(0xA5);
                std::fs::write(&seg, bytes).unwrap();
            }
        }
        let server = Server::start(&data, 1, &[]);
        let mut client = server.client().await;
        let got = get(&mut client, "torn").await.unwrap();
        assert_eq!(concat(&got), concat(&written[..5]), "{damage}: the five commits before the torn one survive");
        assert!(server.metrics_text().await.contains("longbow_wal_torn_tails_total 1"), "{damage}");
        assert!(server.log().contains("torn WAL tail"), "{damage}: logged");
        // Writing continues and survives another restart.
        put(&mut client, "torn", vec![written[5].clone()]).await.unwrap();
        server.terminate();
        let server = Server::start(&data, 1, &[]);
        let got = get(&mut server.client().await, "torn").await.unwrap();
        assert_eq!(concat(&got), concat(&written), "{damage}");
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_before_the_tail_refuses_to_start_unless_told_to_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let written = crash_after_commits(&data, "damaged", 6).await;
    let seg = newest_segment(&data.join("shard-0"));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Commits are block-aligned; the second data block holds the first
    // batch's frame. Damage it: acknowledged data follows.
    let at = 512 + 512 + 100;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();

    let log = Server::try_start(&data, 1, &[]).err().expect("must refuse to start");
    assert!(log.contains("WAL corrupt"), "{log}");
    assert!(log.contains(seg.file_name().unwrap().to_str().unwrap()), "names the file: {log}");
    assert!(log.contains("offset"), "names the offset: {log}");

    let server = Server::start(&data, 1, &["--on-corruption", "truncate"]);
    // What precedes the damage survives: the dataset's schema commit; the
    // damaged commit and everything after it in that segment are dropped.
    let got = get(&mut server.client().await, "damaged").await.unwrap();
    assert_eq!(rows(&got), 0, "{} rows written, none kept after the damaged first batch", rows(&written));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 2, &[]);
    let mut client = server.client().await;
    let good = vec![vector_batch(0, 10, DIM)];
    put(&mut client, "good", good.clone()).await.unwrap();

    for bad in ["..", ".hidden", "a/b", "", &"x".repeat(129), "sp ace"] {
        let e = put(&mut client, bad, good.clone()).await.unwrap_err();
        assert_eq!(code(&e), tonic::Code::InvalidArgument, "name {bad:?}: {e}");
    }
    // Not a one-element path.
    for descriptor in [FlightDescriptor::new_path(vec!["a".into(), "b".into()]), FlightDescriptor::new_cmd("good")] {
        let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter(good.clone().into_iter().map(Ok)));
        let e = match client.do_put(stream).await {
            Ok(s) => s.try_collect::<Vec<_>>().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(code(&e), tonic::Code::InvalidArgument, "{e}");
    }
    // Schema mismatch.
    let e = put(&mut client, "good", vec![seq_batch(1, 1)]).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::InvalidArgument);
    assert!(e.to_string().contains("schema mismatch"), "{e}");
    // Undecodable FlightData.
    let garbage = FlightData::new()
        .with_descriptor(FlightDescriptor::new_path(vec!["good".into()]))
        .with_data_header(vec![1u8, 2, 3, 4, 5, 6, 7, 8]);
    let e = match client.do_put(futures::stream::iter([Ok(garbage)])).await {
        Ok(s) => s.try_collect::<Vec<_>>().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(code(&e), tonic::Code::InvalidArgument, "{e}");
    // Unknown datasets.
    assert_eq!(code(&get(&mut client, "missing").await.unwrap_err()), tonic::Code::NotFound);
    let e = client.get_flight_info(FlightDescriptor::new_path(vec!["missing".into()])).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::NotFound);
    let e = client.get_schema(FlightDescriptor::new_path(vec!["missing".into()])).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::NotFound);
    let e = client.do_action(Action::new("no_such_action", "")).await.err().expect("unknown action fails");
    assert_eq!(code(&e), tonic::Code::Unimplemented);
    // Action bodies name datasets exactly as DoPut does: nothing is trimmed.
    for body in ["good ", " good", "good\n"] {
        for name in ["drop_dataset", "force_snapshot"] {
            let e = action(&mut client, name, body).await.unwrap_err();
            assert_eq!(code(&e), tonic::Code::InvalidArgument, "{name} {body:?}: {e}");
        }
    }

    // The server still serves and the stored data is intact.
    let got = get(&mut client, "good").await.unwrap();
    assert_eq!(concat(&got), concat(&good));
    put(&mut client, "good", good.clone()).await.unwrap();
    assert_eq!(rows(&get(&mut client, "good").await.unwrap()), 20);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_shard_count_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 3, &[]);
    let datasets = names(10);
    let mut expected = fill(&server, &datasets, 6).await;
    server.kill9(); // an unsealed segment must migrate too

    for (shards, round) in [(2, 1), (5, 2), (1, 3)] {
        let server = Server::start(&data, shards, &[]);
        assert_holds(&server, &expected).await;
        let layout: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("LAYOUT")).unwrap()).unwrap();
        assert_eq!(layout["shards"], shards);
        assert_eq!(layout["generation"], round);
        let dirs = std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("shard-"))
            .count();
        assert_eq!(dirs, shards, "retired shard directories are removed");
        let more = fill(&server, &datasets[..4], 2).await;
        for (name, batches) in more {
            expected.get_mut(&name).unwrap().extend(batches);
        }
        server.terminate();
    }
    let server = Server::start(&data, 1, &[]);
    assert_holds(&server, &expected).await;
    server.terminate();
}

/// The defaults (`./data`, `./snapshots`) are relative paths: a fresh
/// machine runs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_relative_paths_work() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_longbow"))
        .current_dir(dir.path())
        .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false"])
        .env_remove("LONGBOW_DATA_PATH")
        .env_remove("LONGBOW_SNAPSHOT_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    assert!(line.starts_with("longbow ready"), "{line}");
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("flight=")).unwrap().to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = arrow_flight::FlightClient::new(channel);
    put(&mut client, "rel", vec![vector_batch(0, 5, DIM)]).await.unwrap();
    let action = arrow_flight::Action::new("force_snapshot", "");
    let _: Vec<_> = client.do_action(action).await.unwrap().try_collect().await.unwrap();
    assert_eq!(rows(&get(&mut client, "rel").await.unwrap()), 5);
    assert!(dir.path().join("data/LAYOUT").exists());
    assert!(dir.path().join("snapshots/rel/_delta_log").exists());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_but_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 1, &["--auth-token", "s3cret-t0ken"]);
    let mut anonymous = server.client().await;
    let e = put(&mut anonymous, "x", vec![vector_batch(0, 1, DIM)]).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::Unauthenticated);
    let e = anonymous.list_flights("").await.err().expect("list needs the token");
    assert_eq!(code(&e), tonic::Code::Unauthenticated);
    let mut wrong = server.client().await;
    wrong.add_header("authorization", "Bearer nope").unwrap();
    assert_eq!(code(&get(&mut wrong, "x").await.unwrap_err()), tonic::Code::Unauthenticated);

    let mut authed = server.client().await;
    authed.add_header("authorization", "Bearer s3cret-t0ken").unwrap();
    put(&mut authed, "x", vec![vector_batch(0, 3, DIM)]).await.unwrap();
    assert_eq!(rows(&get(&mut authed, "x").await.unwrap()), 3);
    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let mut c = server.client().await;
        c.add_header("authorization", &format!("{scheme} s3cret-t0ken")).unwrap();
        assert_eq!(rows(&get(&mut c, "x").await.unwrap()), 3, "{scheme}");
    }

    assert_eq!(server.health().await, tonic_health::pb::health_check_response::ServingStatus::Serving);
    assert!(!server.log().contains("s3cret-t0ken"), "the token is never logged");
    server.terminate();
}

/// A full WAL volume (a size-limited tmpfs, where O_DIRECT works): writes get
/// RESOURCE_EXHAUSTED, reads go on, ingest resumes once space returns, and
/// every acknowledged batch survives a crash. Needs root for the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_volume_refuses_writes_clearly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(wal) = Tmpfs::mount(dir.path().join("wal"), "24m") else { return };
    let mnt = wal.0.clone();
    let data = mnt.join("data");
    let server = Server::start(&data, 1, &["--max-wal-size", "4MiB"]);
    let mut client = server.client().await;
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 14 << 20]).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let b = vector_batch(i * 1000, 1000, 128);
        match put(&mut client, "full", vec![b.clone()]).await {
            Ok(_) => acked.push(b),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the volume fills up");
    assert_eq!(code(&e), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("full"), "{e}");
    // Reads go on, and nothing acknowledged is affected.
    assert_eq!(concat(&get(&mut client, "full").await.unwrap()), concat(&acked));
    // A crash, and a restart with not a byte free: it starts (going on in
    // the crashed segment needs no space) and serves what is stored.
    server.kill9();
    let last_byte = mnt.join("last-byte");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&last_byte).unwrap();
        while f.write_all(&[7u8; 4096]).is_ok() {}
        while f.write_all(&[7u8]).is_ok() {}
    }
    let server = Server::start(&data, 1, &["--max-wal-size", "4MiB"]);
    let mut client = server.client().await;
    assert_eq!(concat(&get(&mut client, "full").await.unwrap()), concat(&acked));
    let e = put(&mut client, "full", vec![vector_batch(-1000, 1000, 128)]).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::ResourceExhausted, "{e}");
    // Space returns: ingest resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&last_byte).unwrap();
    for i in 0..3 {
        let b = vector_batch(1_000_000 + i * 1000, 1000, 128);
        put(&mut client, "full", vec![b.clone()]).await.unwrap();
        acked.push(b);
    }
    server.kill9();
    let server = Server::start(&data, 1, &["--max-wal-size", "4MiB"]);
    assert_eq!(concat(&get(&mut server.client().await, "full").await.unwrap()), concat(&acked));
    server.terminate();
}

/// After a failed fsync the shard must not retry and pretend: it refuses
/// every later write, the health service says NOT_SERVING, and after a
/// restart every acknowledged batch is there exactly once.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_poisons_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::try_start_env(&data, 1, &[], &[("LONGBOW_FAULT_FSYNC_FAIL_AFTER", "6")]).unwrap();
    let mut client = server.client().await;
    let batches = (0..10).map(|i| vector_batch(i * 10, 10, DIM)).collect();
    let (acked, failures) = put_each(&mut client, "fragile", batches).await;
    assert!(!acked.is_empty() && failures.len() >= 4, "{} acked, {} failed", acked.len(), failures.len());
    for e in &failures {
        assert_eq!(code(e), tonic::Code::Internal, "{e}");
    }
    assert!(failures.last().unwrap().to_string().contains("poisoned"), "{}", failures.last().unwrap());
    // Reads of what was acknowledged still work.
    assert_eq!(concat(&get(&mut client, "fragile").await.unwrap()), concat(&acked));
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    let mut status = server.health().await;
    for _ in 0..40 {
        if status == not_serving {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = server.health().await;
    }
    assert_eq!(status, not_serving);
    assert!(server.metrics_text().await.contains("longbow_shards_poisoned 1"));
    assert!(server.http_get("/healthz").await.starts_with("HTTP/1.1 503"), "/healthz fails too");
    server.kill9();
    let server = Server::start(&data, 1, &[]);
    let got = get(&mut server.client().await, "fragile").await.unwrap();
    let got = concat(&got);
    let want = concat(&acked);
    // The failed commits were never acknowledged; their bytes may or may not
    // have reached the disk, so they may follow the acknowledged prefix.
    assert!(got.num_rows() >= want.num_rows());
    assert_eq!(got.slice(0, want.num_rows()), want, "acknowledged batches first, once each");
    server.terminate();
}
