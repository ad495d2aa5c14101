//! Idempotent producers: a batch carries `{"producer": id, "seq": n}`; the
//! server stores each sequence number once, acknowledges a retried one
//! again with its original LSN, and refuses a gap. The state lives in the
//! WAL frame of each batch and in snapshot manifests, so it survives
//! snapshots, eviction, restarts, a crash and a shard-count change.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::{Array, Int32Array, RecordBatch};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor, PutResult};
use common::*;
use futures::StreamExt;

const DIM: i32 = 4;

/// Batch `seq` of a producer: 10 rows, ids `seq * 10 ..`.
fn batch(seq: u64) -> RecordBatch {
    vector_batch(seq as i32 * 10, 10, DIM)
}

/// FlightData for one stream: the schema, then each batch with its
/// producer metadata (`None`: no metadata).
fn flight_data(descriptor: FlightDescriptor, batches: &[(RecordBatch, Option<serde_json::Value>)]) -> Vec<FlightData> {
    let plain: Vec<RecordBatch> = batches.iter().map(|(b, _)| b.clone()).collect();
    let mut data = arrow_flight::utils::batches_to_flight_data(&vector_schema(DIM), plain.to_vec()).unwrap();
    data[0] = data[0].clone().with_descriptor(descriptor);
    for (d, (_, meta)) in data[1..].iter_mut().zip(batches) {
        if let Some(m) = meta {
            d.app_metadata = serde_json::to_vec(m).unwrap().into();
        }
    }
    data
}

fn with_seqs(producer: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<(RecordBatch, Option<serde_json::Value>)> {
    seqs.into_iter().map(|s| (batch(s), Some(serde_json::json!({"producer": producer, "seq": s})))).collect()
}

/// Sends one stream; returns the acknowledgements' JSON until the first
/// error, and that error.
async fn send(client: &mut FlightClient, data: Vec<FlightData>) -> (Vec<serde_json::Value>, Option<FlightError>) {
    let mut acks = Vec::new();
    let mut results = match client.do_put(futures::stream::iter(data.into_iter().map(Ok))).await {
        Ok(r) => r,
        Err(e) => return (acks, Some(e)),
    };
    while let Some(r) = results.next().await {
        match r {
            Ok(PutResult { app_metadata }) => acks.push(serde_json::from_slice(&app_metadata).unwrap()),
            Err(e) => return (acks, Some(e)),
        }
    }
    (acks, None)
}

fn path(name: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![name.to_owned()])
}

/// The ids stored in `dataset`, checking none is there twice.
async fn ids_once(client: &mut FlightClient, dataset: &str) -> BTreeSet<i32> {
    let mut seen = BTreeSet::new();
    for b in get(client, dataset).await.unwrap() {
        let ids = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        for i in 0..ids.len() {
            assert!(seen.insert(ids.value(i)), "id {} stored twice in {dataset}", ids.value(i));
        }
    }
    seen
}

fn expected_ids(seqs: std::ops::Range<u64>) -> BTreeSet<i32> {
    seqs.flat_map(|s| (s as i32 * 10)..(s as i32 * 10 + 10)).collect()
}

/// Retries are acknowledged with their original LSNs and stored once; a
/// gap is refused naming the expected number, and nothing after it is
/// stored; the state survives a snapshot with eviction, a crash and a
/// shard-count change; a CMD descriptor names the producer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_are_stored_once_across_snapshots_crashes_and_shard_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, &["--max-memory", "1MiB"]);
    let mut client = server.client().await;

    let (first, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", 0..5))).await;
    assert!(e.is_none(), "{e:?}");
    let lsn_of = |acks: &[serde_json::Value], seq: u64| {
        acks.iter().find(|a| a["seq"] == seq).map(|a| a["lsn"].as_u64().unwrap()).unwrap()
    };
    // A retry overlapping what was stored: 2..5 again, then 5 and 6 new.
    let (retry, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", 2..7))).await;
    assert!(e.is_none(), "{e:?}");
    for a in &retry[..3] {
        assert_eq!(a["duplicate"], true, "{a}");
        let seq = a["seq"].as_u64().unwrap();
        assert_eq!(a["lsn"].as_u64().unwrap(), lsn_of(&first, seq), "acknowledged with its original LSN");
    }
    assert!(retry[3..].iter().all(|a| a.get("duplicate").is_none()), "{retry:?}");
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..7));

    // A gap: 7 is missing. Refused, and the batch after it is not stored.
    let (acks, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", [8, 9]))).await;
    assert!(acks.is_empty(), "{acks:?}");
    let e = e.expect("a gap is refused");
    assert_eq!(code(&e), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("expected 7"), "names the expected number: {e}");
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..7));

    // Another producer is independent; a stream without metadata too.
    let (_, e) = send(&mut client, flight_data(path("p2"), &with_seqs("beta", 100..103))).await;
    assert!(e.is_none(), "{e:?}");

    // Snapshot (the 1 MiB limit evicts), then crash: the WAL segments that
    // logged seqs 0..7 may be gone; the manifest keeps them.
    action(&mut client, "force_snapshot", "").await.unwrap();
    server.kill9();
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    let (acks, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", 5..8))).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!((acks[0]["duplicate"].clone(), acks[0]["lsn"].as_u64()), (true.into(), Some(lsn_of(&retry, 5))));
    assert_eq!(acks[1]["duplicate"], true);
    assert!(acks[2].get("duplicate").is_none(), "7 is new: {:?}", acks[2]);
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..8));
    server.terminate();

    // Two shards now: the dataset may move; its producers' state moves too.
    let server = Server::start(&data, 2, &[]);
    let mut client = server.client().await;
    let (acks, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", 7..9))).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!(acks[0]["duplicate"], true, "{acks:?}");
    assert!(acks[1].get("duplicate").is_none());
    let (acks, e) = send(&mut client, flight_data(path("p2"), &with_seqs("beta", [102, 103]))).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!(acks[0]["duplicate"], true, "{acks:?}");
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..9));

    // A CMD descriptor names the producer once; batches take the next numbers.
    let cmd = FlightDescriptor::new_cmd(
        serde_json::to_vec(&serde_json::json!({"dataset": "p", "producer": "alpha", "seq": 8})).unwrap(),
    );
    let plain: Vec<_> = (8..11).map(|s| (batch(s), None)).collect();
    let (acks, e) = send(&mut client, flight_data(cmd, &plain)).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!(acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert_eq!(acks[0]["duplicate"], true);
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..11));
    // After a crash the new generation's WAL alone (the relogged state, the
    // new frames) still knows every sequence number.
    server.kill9();
    let server = Server::start(&data, 2, &[]);
    let mut client = server.client().await;
    let (acks, e) = send(&mut client, flight_data(path("p"), &with_seqs("alpha", 6..12))).await;
    assert!(e.is_none(), "{e:?}");
    assert!(acks[..5].iter().all(|a| a["duplicate"] == true), "{acks:?}");
    assert!(acks[5].get("duplicate").is_none(), "{acks:?}");
    assert_eq!(ids_once(&mut client, "p").await, expected_ids(0..12));
    server.terminate();
}

/// A producer streams 300 batches; the server is killed part-way. The
/// producer reconnects and sends everything again from the start: every
/// row ends up stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retrying_everything_after_kill9_gets_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    const N: u64 = 300;
    let stream = flight_data(path("once"), &with_seqs("gamma", 0..N));
    // Paced (1 ms a batch) so the crash surely lands mid-stream.
    let sending = tokio::spawn(async move {
        let paced = futures::stream::iter(stream).then(|d| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(d)
        });
        let mut acks = 0u64;
        let mut error = None;
        match client.do_put(paced).await {
            Ok(mut results) => {
                while let Some(r) = results.next().await {
                    match r {
                        Ok(_) => acks += 1,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
            }
            Err(e) => error = Some(e),
        }
        (acks, error)
    });
    // Kill once some batches are acknowledged (the stream is still going).
    loop {
        let m = server.metrics_text().await;
        if m.lines().any(|l| l.starts_with("longbow_batches_ingested_total ") && !l.ends_with(" 0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    let (acked, e) = sending.await.unwrap();
    assert!(acked < N, "the crash cut the stream short ({acked} acknowledged, {e:?})");
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    let (acks, e) = send(&mut client, flight_data(path("once"), &with_seqs("gamma", 0..N))).await;
    assert!(e.is_none(), "{e:?}");
    assert_eq!(acks.len() as u64, N);
    let dups = acks.iter().filter(|a| a["duplicate"] == true).count() as u64;
    assert!(dups >= acked, "at least the {acked} acknowledged before the crash are duplicates ({dups})");
    assert_eq!(ids_once(&mut client, "once").await, expected_ids(0..N));
    server.terminate();
}
