//! The one place engine errors become gRPC statuses.

use longbow_engine::Error;
use tonic::{Code, Status};

/// Maps every engine error to the status a client can act on. No `_` arm:
/// a new variant must be placed here deliberately.
pub fn into_status(e: Error) -> Status {
    Status::new(code(&e), e.to_string())
}

/// The status code of an engine error (see [`into_status`]).
pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidName { .. } | Error::SchemaMismatch { .. } | Error::InvalidInput(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::Overloaded { .. } | Error::HeldBack { .. } | Error::ShuttingDown => Code::Unavailable,
        Error::NotStored { .. } => Code::Aborted,
        Error::SequenceGap { .. } | Error::SequenceTooOld { .. } => Code::FailedPrecondition,
        Error::DiskFull { .. } => Code::ResourceExhausted,
        Error::Snapshot { disk_full: true, .. } => Code::ResourceExhausted,
        Error::Snapshot { disk_full: false, .. } => Code::Internal,
        Error::Io { .. }
        | Error::Poisoned { .. }
        | Error::WalWrite { .. }
        | Error::WalWriteInDoubt { .. }
        | Error::Corrupt { .. }
        | Error::Store(_)
        | Error::Startup(_) => Code::Internal,
        Error::Arrow(_) => Code::InvalidArgument,
    }
}
