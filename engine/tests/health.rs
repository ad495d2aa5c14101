//! A shard that panics turns the engine's health down at once, and the
//! other shards go on.
#![cfg(feature = "fault-injection")]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::executor::block_on;
use longbow_engine::health::ShardDown;
use longbow_engine::routing::shard_for;
use longbow_engine::{Engine, EngineConfig, EngineMetrics, IpcMessage, PutStream};

#[test]
fn a_panicking_shard_is_reported_down_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineConfig::test_config(dir.path(), 2), EngineMetrics::default()).unwrap();
    let mut health = engine.health();
    assert!(health.borrow().serving());

    // Two datasets, one per shard.
    let (doomed, alive) = ("a", (0..).map(|i| format!("b{i}")).find(|n| shard_for(n, 2) != shard_for("a", 2)).unwrap());
    engine.panic_shard(doomed).unwrap();
    let down = block_on(async {
        let wait = health.wait_for(|h| !h.serving());
        let timeout = futures_timer::Delay::new(Duration::from_secs(10));
        futures::pin_mut!(wait);
        match futures::future::select(wait, timeout).await {
            futures::future::Either::Left((r, _)) => r.unwrap().down.clone(),
            futures::future::Either::Right(_) => panic!("health did not change within 10 s"),
        }
    });
    assert_eq!(down.into_iter().collect::<Vec<_>>(), vec![(shard_for(doomed, 2), ShardDown::Panicked)]);

    // The other shard still takes writes.
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
    block_on(async {
        engine.open(&alive, schema).await.unwrap();
        let message = IpcMessage::from_batch(&batch).unwrap();
        engine.append(&alive, batch.clone(), message, None, &PutStream::new()).await.unwrap().await.unwrap();
    });
    let rows: Vec<RecordBatch> =
        block_on(futures::TryStreamExt::try_collect(block_on(engine.scan(&alive)).unwrap().batches)).unwrap();
    assert_eq!(rows, vec![batch]);
    // The panicked shard's datasets are unavailable, not hanging.
    assert!(block_on(engine.scan(doomed)).is_err());
}
