//! Fault injection on the snapshot volume for tests, compiled in only with
//! the `fault-injection` feature (`cargo test --features
//! longbow-server/fault-injection`). Without it every check is a constant
//! `false`. WAL faults are on the storage seam instead (`io::faulty` for the
//! real file system, `io::sim` in-process); snapshot files are not behind
//! the seam yet.
//!
//! A fault is armed with "succeed `after` times, then fail `times` times"
//! (`u64::MAX` times = for ever). The server arms them from
//! `LONGBOW_FAULT_*` environment variables (see `server/src/lib.rs`).

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writing a snapshot (Parquet) file reports EIO.
    SnapshotWrite = 0,
}

#[cfg(feature = "fault-injection")]
static ARMED: std::sync::Mutex<[Option<(u64, u64)>; 1]> = std::sync::Mutex::new([None; 1]);

/// Lets the next `after` checks of `fault` pass, then fails `times` of them.
#[cfg(feature = "fault-injection")]
pub fn arm(fault: Fault, after: u64, times: u64) {
    ARMED.lock().expect("fault table")[fault as usize] = Some((after, times));
}

/// Counts one operation against an arm "succeed `after` times, then fail
/// `times` times" (`u64::MAX` = for ever); whether this one fails. Shared
/// with the storage seam's faults (`io::faulty`).
#[cfg(feature = "fault-injection")]
pub(crate) fn count(arm: &mut Option<(u64, u64)>) -> bool {
    match arm {
        None => false,
        Some((after, _)) if *after > 0 => {
            *after -= 1;
            false
        }
        Some((_, 0)) => false,
        Some((_, times)) => {
            if *times != u64::MAX {
                *times -= 1;
            }
            true
        }
    }
}

/// Whether this operation must fail.
pub(crate) fn fails(fault: Fault) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        count(&mut ARMED.lock().expect("fault table")[fault as usize])
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = fault;
        false
    }
}

/// An EIO as the kernel would report it.
pub(crate) fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(nix::libc::EIO)
}
