//! The one memory budget all shards share: `LONGBOW_MAX_MEMORY` bounds the
//! Arrow bytes held in memory by every shard together, so one hot dataset
//! may use all of it. The only state shards share, and it is atomics only.
//!
//! A shard that wants to commit while the budget is spent waits (the
//! gateway then stops reading its streams: back-pressure) as long as
//! snapshots keep freeing memory somewhere. It refuses only when nothing
//! was freed for the back-pressure timeout, or when a snapshot has failed
//! since the last one that succeeded (the snapshot volume is failing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;

#[derive(Debug, Default)]
pub struct MemoryBudget {
    /// Bytes all shards may hold; 0 = no limit.
    limit: AtomicU64,
    /// Bytes all shards hold.
    used: AtomicU64,
    /// Bytes ever freed (eviction, drops): a waiting committer sees progress
    /// when this moves.
    freed: AtomicU64,
    /// A snapshot failed and none has succeeded since: waiting for memory
    /// is pointless.
    snapshot_failing: AtomicBool,
    snapshot_error: Mutex<Option<Arc<Error>>>,
    /// How long a commit waits for memory with no progress at all.
    backpressure_timeout_ms: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64, backpressure_timeout: Duration) -> Self {
        let b = Self::default();
        b.set_limit(limit);
        b.backpressure_timeout_ms.store(backpressure_timeout.as_millis() as u64, Ordering::Relaxed);
        b
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    pub fn backpressure_timeout(&self) -> Duration {
        Duration::from_millis(self.backpressure_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: u64) {
        // Never below zero, even if a caller's count drifts.
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
        self.freed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Above the limit: commits wait.
    pub fn over(&self) -> bool {
        let limit = self.limit();
        limit > 0 && self.used() > limit
    }

    /// Above this fraction (in quarters) of the limit.
    pub fn above_quarters(&self, quarters: u64) -> bool {
        let limit = self.limit();
        limit > 0 && self.used() > limit / 4 * quarters
    }

    pub fn snapshot_failed(&self, error: Arc<Error>) {
        *self.snapshot_error.lock().expect("snapshot error lock") = Some(error);
        self.snapshot_failing.store(true, Ordering::Relaxed);
    }

    pub fn snapshot_succeeded(&self) {
        if self.snapshot_failing.swap(false, Ordering::Relaxed) {
            *self.snapshot_error.lock().expect("snapshot error lock") = None;
        }
    }

    /// The last snapshot failure, if no snapshot succeeded since.
    pub fn snapshot_failure(&self) -> Option<Arc<Error>> {
        if !self.snapshot_failing.load(Ordering::Relaxed) {
            return None;
        }
        self.snapshot_error.lock().expect("snapshot error lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_and_freed() {
        let b = MemoryBudget::new(100, Duration::from_secs(1));
        b.add(80);
        assert!(!b.over());
        assert!(b.above_quarters(3));
        b.add(30);
        assert!(b.over());
        b.sub(50);
        assert_eq!((b.used(), b.freed()), (60, 50));
        b.sub(1000);
        assert_eq!(b.used(), 0);
        b.set_limit(0);
        b.add(1 << 40);
        assert!(!b.over(), "no limit, never over");
    }

    #[test]
    fn snapshot_failure_clears_on_success() {
        let b = MemoryBudget::new(1, Duration::from_secs(1));
        assert!(b.snapshot_failure().is_none());
        let full = Error::Io {
            op: "writing",
            path: "/snapshots/f".into(),
            offset: 0,
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        };
        b.snapshot_failed(Arc::new(full));
        assert!(b.snapshot_failure().is_some_and(|e| e.is_disk_full()));
        b.snapshot_succeeded();
        assert!(b.snapshot_failure().is_none());
    }
}
