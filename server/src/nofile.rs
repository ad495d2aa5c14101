//! Every Flight connection, WAL segment and snapshot file a read holds open
//! is a descriptor. Distributions start services with a soft
//! `RLIMIT_NOFILE` of 1024 (for `select(2)`, which Longbow does not use)
//! under a much higher hard limit; at 1024 new clients could not connect
//! while the server seemed healthy. Raise the soft limit to the hard limit,
//! as Go and the JVM do.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The kernel's ceiling for a finite limit: `setrlimit` refuses more.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}

/// Raises the soft limit; returns (soft, hard) as they are afterwards.
pub fn raise() -> Result<(u64, u64), String> {
    let (soft, hard) = limits()?;
    let target = if hard == RLIM_INFINITY { nr_open() } else { hard };
    if soft < target {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise the RLIMIT_NOFILE soft limit");
        }
    }
    limits()
}

/// (soft, hard) `RLIMIT_NOFILE`.
pub fn limits() -> Result<(u64, u64), String> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("reading RLIMIT_NOFILE: {e}"))
}
