//! Batches of ids, and a dataset's rows read back, for the engine's tests
//! of one dataset ("beta").

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::executor::block_on;
use futures::TryStreamExt;
use longbow_engine::{Engine, IpcMessage, PutStream};

pub fn ids(range: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(range))]).unwrap()
}

/// Appends `range` to "beta" and waits until it is durable.
pub fn append(engine: &Engine, range: std::ops::Range<i64>) {
    let batch = ids(range);
    let message = IpcMessage::from_batch(&batch).unwrap();
    block_on(async { engine.append("beta", batch, message, None, &PutStream::new()).await.unwrap().await.unwrap() });
}

/// Every id "beta" holds, sorted.
pub fn rows(engine: &Engine) -> Vec<i64> {
    let scan = block_on(engine.scan("beta")).unwrap();
    let batches: Vec<RecordBatch> = block_on(scan.batches.try_collect()).unwrap();
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
        .collect();
    out.sort();
    out
}
