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
        Error::Overloaded { .. } | Error::HeldBack { .. } | Error::DropPending { .. } | Error::ShuttingDown => {
            Code::Unavailable
        }
        Error::NotStored { .. } => Code::Aborted,
        Error::SequenceGap { .. } | Error::SequenceTooOld { .. } => Code::FailedPrecondition,
        Error::DiskFull { .. } => Code::ResourceExhausted,
        Error::Snapshot { .. } if e.is_disk_full() => Code::ResourceExhausted,
        Error::Snapshot { .. } => Code::Internal,
        Error::Io { .. }
        | Error::Poisoned { .. }
        | Error::WalWrite { .. }
        | Error::WalWriteInDoubt { .. }
        | Error::Corrupt { .. }
        | Error::Store { .. }
        | Error::Startup(_)
        | Error::StartupFailed { .. }
        | Error::Task(_) => Code::Internal,
        Error::Arrow(_) => Code::InvalidArgument,
    }
}
