//! Fault injection for tests, compiled in only with the `fault-injection`
//! feature (`cargo test --features longbow-server/fault-injection`). Without
//! it every check is a constant `false`.

#[cfg(feature = "fault-injection")]
static FSYNC_FAIL_AFTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Makes every WAL `fdatasync` after the first `n` fail with EIO.
#[cfg(feature = "fault-injection")]
pub fn fail_fsync_after(n: u64) {
    FSYNC_FAIL_AFTER.store(n, std::sync::atomic::Ordering::SeqCst);
}

/// Whether this WAL fsync must fail.
pub(crate) fn fsync_fails() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::atomic::Ordering;
        let left = FSYNC_FAIL_AFTER.load(Ordering::SeqCst);
        if left == u64::MAX {
            return false;
        }
        if left == 0 {
            return true;
        }
        FSYNC_FAIL_AFTER.store(left - 1, Ordering::SeqCst);
        false
    }
    #[cfg(not(feature = "fault-injection"))]
    false
}
