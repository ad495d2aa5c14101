//! A dataset moving between two nodes that share one object store: the
//! old owner hands its WAL tail over into the table and forgets the
//! dataset, the new owner reads the table again. Each node's LSNs are its
//! own; rows are never lost, nor stored twice, across restarts of either.

mod common;

use std::sync::Arc;

use common::{append, ids, rows};
use futures::executor::block_on;
use longbow_engine::{Engine, EngineConfig, EngineMetrics, Error, Owns};
use object_store::memory::InMemory;
use object_store::ObjectStore;

fn config(dir: &std::path::Path, store: Arc<dyn ObjectStore>, node: &str, owns_beta: bool) -> EngineConfig {
    let mut c = EngineConfig::test_config(dir, 1);
    c.snapshot_path = "s3://shared/root".into();
    c.snapshot_store = Some(store);
    c.node = node.into();
    c.owns = Some(Owns(Arc::new(move |name: &str| (name == "beta") == owns_beta)));
    c
}

fn expected(ranges: &[std::ops::Range<i64>]) -> Vec<i64> {
    let mut v: Vec<i64> = ranges.iter().flat_map(|r| r.clone()).collect();
    v.sort();
    v
}

/// Node 0 owns "beta" and stops with rows 0..10 in the table and `tail`
/// in its WAL only.
fn owned_with_a_tail(dir: &std::path::Path, shared: &Arc<dyn ObjectStore>, tail: std::ops::Range<i64>) {
    let a = Engine::start(config(dir, shared.clone(), "0", true), EngineMetrics::default()).unwrap();
    block_on(a.open("beta", ids(0..1).schema())).unwrap();
    append(&a, 0..10);
    block_on(a.snapshot(Some("beta"))).unwrap();
    for k in tail.clone().step_by(10) {
        append(&a, k..(k + 10).min(tail.end));
    }
    block_on(a.shutdown()).unwrap();
}

#[test]
fn a_dataset_handed_over_between_nodes_keeps_every_row_once() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());

    // Node 0 owned "beta": part of it is in the table, part only in its WAL.
    owned_with_a_tail(a_dir.path(), &shared, 10..30);

    // The node list changed: node 1 owns "beta" now and serves what the
    // table holds; its own LSNs start low again, below node 0's.
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&b), (0..10).collect::<Vec<i64>>());
    append(&b, 100..110);
    block_on(b.snapshot(Some("beta"))).unwrap();

    // Node 0 starts with the new list: it replays its tail, hands it over
    // and forgets the dataset.
    let a = Engine::start(config(a_dir.path(), shared.clone(), "0", false), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&a), (0..30).collect::<Vec<i64>>(), "the WAL tail is replayed before the handover");
    block_on(a.hand_over("beta")).unwrap();
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))), "forgotten after the handover");
    assert!(matches!(block_on(a.hand_over("beta")), Err(Error::NotFound(_))));

    block_on(b.refresh("beta")).unwrap();
    assert_eq!(rows(&b), expected(&[0..30, 100..110]));
    // Rows in node 1's WAL only, above its covered LSN, which the newest
    // commit (node 0's) does not give.
    append(&b, 110..120);
    block_on(b.shutdown()).unwrap();
    drop(b);
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&b), expected(&[0..30, 100..120]), "node 1's WAL tail replays; nothing twice");
    block_on(b.snapshot(Some("beta"))).unwrap();

    // Node 0 restarts before its segments are released: its forget record
    // voids the tail, which is neither replayed nor handed over again.
    block_on(a.shutdown()).unwrap();
    drop(a);
    let a = Engine::start(config(a_dir.path(), shared.clone(), "0", false), EngineMetrics::default()).unwrap();
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))), "the forget record replays");
    assert!(matches!(block_on(a.hand_over("beta")), Err(Error::NotFound(_))));
    block_on(b.refresh("beta")).unwrap();
    assert_eq!(rows(&b), expected(&[0..30, 100..120]));
    block_on(b.shutdown()).unwrap();
    drop(b);
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&b), expected(&[0..30, 100..120]));
    block_on(b.shutdown()).unwrap();
    block_on(a.shutdown()).unwrap();
}

#[test]
fn a_tail_of_a_dataset_the_owner_dropped_and_made_again_is_not_handed_over() {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;
    use longbow_engine::{IpcMessage, PutStream};

    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    owned_with_a_tail(a_dir.path(), &shared, 10..20);

    // The new owner drops "beta" and makes it again with another schema.
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    block_on(b.drop_dataset("beta")).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("other", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(500..505))]).unwrap();
    block_on(b.open("beta", schema.clone())).unwrap();
    let message = IpcMessage::from_batch(&batch).unwrap();
    block_on(async { b.append("beta", batch, message, None, &PutStream::new()).await.unwrap().await.unwrap() });
    block_on(b.snapshot(Some("beta"))).unwrap();

    // The old owner's tail (rows 10..20) belongs to the dropped dataset:
    // it is forgotten, not committed into a table of another schema.
    let a = Engine::start(config(a_dir.path(), shared.clone(), "0", false), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&a), (0..20).collect::<Vec<i64>>());
    block_on(a.hand_over("beta")).unwrap();
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))), "forgotten");
    block_on(b.refresh("beta")).unwrap();
    let scan = block_on(b.scan("beta")).unwrap();
    let batches: Vec<RecordBatch> = block_on(scan.batches.try_collect()).unwrap();
    assert!(batches.iter().all(|b| b.schema().fields() == schema.fields()));
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 5, "only the new dataset's rows");
    block_on(b.shutdown()).unwrap();
    block_on(a.shutdown()).unwrap();
}

/// Node 1, which owns "beta" now, drops it and makes it again; node 0
/// restarts.
fn dropped_and_made_again(b: &Engine) {
    block_on(b.drop_dataset("beta")).unwrap();
    block_on(b.open("beta", ids(0..1).schema())).unwrap();
    append(b, 500..505);
    block_on(b.snapshot(Some("beta"))).unwrap();
}

fn restarted(a: Engine, dir: &std::path::Path, shared: &Arc<dyn ObjectStore>, owns_beta: bool) -> Engine {
    block_on(a.shutdown()).unwrap();
    drop(a);
    Engine::start(config(dir, shared.clone(), "0", owns_beta), EngineMetrics::default()).unwrap()
}

#[test]
fn a_tail_handed_over_before_the_owner_dropped_the_dataset_is_not_handed_over_again_after_a_restart() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    owned_with_a_tail(a_dir.path(), &shared, 10..30);
    let a = Engine::start(config(a_dir.path(), shared.clone(), "0", false), EngineMetrics::default()).unwrap();
    block_on(a.hand_over("beta")).unwrap();

    // The owner drops "beta" (node 0 holds nothing of it to forget) and
    // makes it again with the same schema: the new table has no commit of
    // node 0's shard, so only the forget record keeps node 0's segments
    // from handing rows 10..30 over into it once more.
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&b), (0..30).collect::<Vec<i64>>());
    assert!(!block_on(a.forget("beta")).unwrap());
    dropped_and_made_again(&b);

    let a = restarted(a, a_dir.path(), &shared, false);
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))), "not replayed");
    assert!(matches!(block_on(a.hand_over("beta")), Err(Error::NotFound(_))));
    block_on(b.refresh("beta")).unwrap();
    assert_eq!(rows(&b), (500..505).collect::<Vec<i64>>());

    // The node list changes back: node 0 owns "beta" again and serves the
    // table as it is; the forget record voids its old tail there too.
    block_on(b.shutdown()).unwrap();
    let a = restarted(a, a_dir.path(), &shared, true);
    assert_eq!(rows(&a), (500..505).collect::<Vec<i64>>());
    append(&a, 600..602);
    let a = restarted(a, a_dir.path(), &shared, true);
    assert_eq!(rows(&a), expected(&[500..505, 600..602]), "rows written after the forget replay");
    block_on(a.shutdown()).unwrap();
}

#[test]
fn rows_a_node_forgot_when_the_owner_dropped_the_dataset_are_never_handed_over() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    owned_with_a_tail(a_dir.path(), &shared, 10..30);

    // Node 0 holds rows 10..30 for the new owner, not handed over yet,
    // when the owner drops "beta": it is told first and forgets them.
    let a = Engine::start(config(a_dir.path(), shared.clone(), "0", false), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&a), (0..30).collect::<Vec<i64>>());
    let b = Engine::start(config(b_dir.path(), shared.clone(), "1", true), EngineMetrics::default()).unwrap();
    assert!(block_on(a.forget("beta")).unwrap(), "node 0 held rows of it");
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))));
    assert!(!block_on(a.forget("beta")).unwrap(), "a second forget finds nothing");
    dropped_and_made_again(&b);

    // The handover that was pending finds nothing to hand over, before a
    // restart and after it.
    assert!(matches!(block_on(a.hand_over("beta")), Err(Error::NotFound(_))));
    let a = restarted(a, a_dir.path(), &shared, false);
    assert!(matches!(block_on(a.scan("beta")), Err(Error::NotFound(_))), "the forget record replays");
    assert!(matches!(block_on(a.hand_over("beta")), Err(Error::NotFound(_))));
    block_on(b.refresh("beta")).unwrap();
    assert_eq!(rows(&b), (500..505).collect::<Vec<i64>>());
    block_on(b.shutdown()).unwrap();
    block_on(a.shutdown()).unwrap();
}
