//! glommio locks memory for its io_uring rings and DMA buffers and refuses to
//! start under 512 KiB of `RLIMIT_MEMLOCK`. Raise the soft limit as far as
//! the hard limit allows, and explain what to change when that is too low.

use longbow_engine::limits::MEMLOCK_BYTES_MIN;
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

pub fn raise() -> Result<u64, String> {
    let (_, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| format!("reading RLIMIT_MEMLOCK: {e}"))?;
    if hard != RLIM_INFINITY && hard < MEMLOCK_BYTES_MIN {
        // Works with CAP_SYS_RESOURCE (root, or the capability in a container).
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, MEMLOCK_BYTES_MIN, MEMLOCK_BYTES_MIN);
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| format!("reading RLIMIT_MEMLOCK: {e}"))?;
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise RLIMIT_MEMLOCK soft limit");
        }
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| format!("reading RLIMIT_MEMLOCK: {e}"))?;
    if soft != RLIM_INFINITY && soft < MEMLOCK_BYTES_MIN {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB (hard limit {} KiB); Longbow needs at least {} KiB of lockable memory for io_uring. \
             Raise it: `ulimit -l unlimited` in the shell, `LimitMEMLOCK=infinity` in a systemd unit, \
             `--ulimit memlock=-1:-1` for docker, or `memlock` in /etc/security/limits.conf",
            soft / 1024,
            hard / 1024,
            MEMLOCK_BYTES_MIN / 1024
        ));
    }
    Ok(soft)
}
