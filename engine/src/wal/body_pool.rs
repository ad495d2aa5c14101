//! Freed batch bodies kept for the next ones of the same size.
//!
//! A body of 64 KiB or more lives in 4 KiB-aligned memory from the
//! gateway's copy until its batch is evicted or dropped. Under a memory
//! limit that happens all the time, and memory new to the process costs the
//! kernel a page zeroing per 4 KiB on first touch. Keeping freed bodies here
//! (by padded size; a steady producer sends one size) lets the next batch
//! reuse them without the allocator holding freed memory of every kind for
//! long (`server/src/main.rs`, purge delay).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use aligned_vec::{AVec, ConstAlign};

use crate::limits::{BODY_BLOCK_BYTES, BODY_POOL_BYTES_MAX};

pub(super) type Body = AVec<u8, ConstAlign<BODY_BLOCK_BYTES>>;

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<Body>>,
    bytes: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Mutex::default);

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer with room for `padded` bytes: a freed one of that size
/// if there is one.
pub(super) fn take(padded: usize) -> Body {
    let reused = {
        let mut p = pool();
        let v = p.free.get_mut(&padded).and_then(Vec::pop);
        if v.is_some() {
            p.bytes -= padded;
        }
        v
    };
    match reused {
        Some(mut v) => {
            v.clear();
            v
        }
        None => AVec::with_capacity(BODY_BLOCK_BYTES, padded),
    }
}

/// Keeps a freed buffer for reuse while the pool has room, else frees it.
pub(super) fn give(v: Body) {
    let size = v.capacity();
    let mut p = pool();
    if p.bytes + size <= BODY_POOL_BYTES_MAX {
        p.bytes += size;
        p.free.entry(size).or_default().push(v);
    }
}

/// Bytes the pool holds.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_buffer_is_reused_for_the_same_size_and_the_pool_is_bounded() {
        let size = 3 * BODY_BLOCK_BYTES;
        let mut v = take(size);
        v.extend_from_slice(&vec![7u8; size]);
        let at = v.as_ptr();
        give(v);
        let again = take(size);
        assert_eq!(again.as_ptr(), at, "the same memory");
        assert!(again.is_empty());
        assert_eq!(again.as_ptr().align_offset(BODY_BLOCK_BYTES), 0);
        for _ in 0..(BODY_POOL_BYTES_MAX / size + 8) {
            give(AVec::with_capacity(BODY_BLOCK_BYTES, size));
        }
        assert!(pooled_bytes() <= BODY_POOL_BYTES_MAX);
    }
}
