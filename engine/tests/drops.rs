//! A drop whose snapshot table could not be removed: the name cannot be
//! created again until the table is gone, so a new incarnation never
//! commits into the old table and brings its rows back.
#![cfg(feature = "fault-injection")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{append, ids, rows};
use futures::executor::block_on;
use longbow_engine::io::faulty::FaultyObjectStore;
use longbow_engine::{Engine, EngineConfig, EngineMetrics, Error};
use object_store::memory::InMemory;
use object_store::ObjectStore;

fn config(dir: &std::path::Path, store: Arc<dyn ObjectStore>) -> EngineConfig {
    let mut c = EngineConfig::test_config(dir, 1);
    c.snapshot_path = "s3://drops/root".into();
    c.snapshot_store = Some(store);
    c
}

#[test]
fn a_dataset_whose_table_removal_failed_is_not_created_again_until_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(InMemory::new());
    // The first drop marker cannot be written: the first removal fails.
    let faulty = Arc::new(FaultyObjectStore::failing_puts_of(remote.clone(), "_longbow_dropped", (0, 1)));
    let engine = Engine::start(config(dir.path(), faulty), EngineMetrics::default()).unwrap();
    let schema = ids(0..1).schema();
    block_on(engine.open("beta", schema.clone())).unwrap();
    append(&engine, 0..10);
    block_on(engine.snapshot(Some("beta"))).unwrap();
    append(&engine, 10..20);

    let e = block_on(engine.drop_dataset("beta")).unwrap_err();
    assert!(matches!(e, Error::DropPending { .. }), "{e}");
    // The tombstone is durable: the dataset is gone.
    assert!(matches!(block_on(engine.scan("beta")), Err(Error::NotFound(_))));
    // Creating it again waits for the old table to go (each try retries
    // the removal); it is never created over the old table.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    loop {
        match block_on(engine.open("beta", schema.clone())) {
            Ok(()) => break,
            Err(Error::DropPending { .. }) if Instant::now() < deadline => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the first try to create it again comes before the old table is gone");
    append(&engine, 100..110);
    block_on(engine.snapshot(Some("beta"))).unwrap();
    assert_eq!(rows(&engine), (100..110).collect::<Vec<_>>());
    block_on(engine.shutdown()).unwrap();
    drop(engine);

    // After a restart only the new incarnation is there.
    let engine = Engine::start(config(dir.path(), remote), EngineMetrics::default()).unwrap();
    assert_eq!(rows(&engine), (100..110).collect::<Vec<_>>());
    block_on(engine.shutdown()).unwrap();
}
