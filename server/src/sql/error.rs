//! DataFusion errors as gRPC statuses, with the planner's message.

use datafusion::common::DataFusionError;
use tonic::{Code, Status};

/// An engine error inside DataFusion (a table's scan), kept whole so that
/// [`df_status`] maps it as the rest of the gateway does.
pub fn engine_error(e: longbow_engine::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Bad SQL, unknown columns and wrong types are the client's
/// (INVALID_ARGUMENT); unknown tables NOT_FOUND; a query over the memory
/// pool RESOURCE_EXHAUSTED; engine errors as [`crate::error::into_status`],
/// and another node's with its code.
pub fn df_status(e: DataFusionError) -> Status {
    let message = e.to_string();
    let code = code_of(e.find_root());
    if let DataFusionError::External(inner) = e.find_root() {
        if let Some(engine) = inner.downcast_ref::<longbow_engine::Error>() {
            return Status::new(crate::error::code(engine), message);
        }
        // Another node's answer to a remote table's scan.
        if let Some(remote) = inner.downcast_ref::<Status>() {
            return Status::new(remote.code(), message);
        }
    }
    Status::new(code, message)
}

fn code_of(e: &DataFusionError) -> Code {
    match e {
        DataFusionError::SQL(..) | DataFusionError::SchemaError(..) => Code::InvalidArgument,
        DataFusionError::Plan(m) if m.contains("not found") && m.contains("table") => Code::NotFound,
        DataFusionError::Plan(_) | DataFusionError::Configuration(_) => Code::InvalidArgument,
        DataFusionError::NotImplemented(_) => Code::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        // Casts, overflows and the like: the data and the query disagree.
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => Code::InvalidArgument,
        DataFusionError::ExecutionJoin(_) | DataFusionError::Internal(_) => Code::Internal,
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) => {
            Code::Internal
        }
        DataFusionError::External(_) | DataFusionError::Substrait(_) | DataFusionError::Ffi(_) => Code::Internal,
        _ => Code::Internal,
    }
}
