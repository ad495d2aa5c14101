//! Numbers that must not be mixed up: a record's [`Lsn`], a shard's
//! [`ShardId`] and a WAL segment's [`SegmentId`]. Each is its integer on
//! disk and in JSON (`serde(transparent)`), and prints as that integer.

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Log sequence number: per shard, contiguous, starting at 1 (0 is
/// "before the first record").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn get(self) -> u64 {
        self.0
    }

    /// As a Delta `txn` action's version (LSNs stay far below `i64::MAX`).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// The LSN a Delta `txn` version records (a negative one is none: 0).
    pub fn from_i64(v: i64) -> Lsn {
        Lsn(u64::try_from(v).unwrap_or(0))
    }

    /// The LSN before this one (0 stays 0).
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }

    /// The LSN after this one (the largest stays the largest).
    pub fn next(self) -> Lsn {
        Lsn(self.0.saturating_add(1))
    }
}

impl std::str::FromStr for Lsn {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Lsn, Self::Err> {
        s.parse().map(Lsn)
    }
}

/// `lsn + n`: the `n`th record after `lsn`.
impl Add<u64> for Lsn {
    type Output = Lsn;

    fn add(self, n: u64) -> Lsn {
        Lsn(self.0 + n)
    }
}

impl AddAssign<u64> for Lsn {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

/// Index of a shard, `0..shards`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A WAL segment's id: ascending within a shard's directory, in its file
/// name and in every frame it holds (so a recycled file's stale frames are
/// told from new ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SegmentId(pub u64);

impl SegmentId {
    pub fn next(self) -> SegmentId {
        SegmentId(self.0 + 1)
    }
}

macro_rules! display_as_integer {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_as_integer!(Lsn, ShardId, SegmentId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_integers_in_json_and_text() {
        assert_eq!(serde_json::to_string(&Lsn(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<Lsn>("7").unwrap(), Lsn(7));
        assert_eq!(serde_json::to_string(&ShardId(3)).unwrap(), "3");
        assert_eq!(format!("{} {} {}", Lsn(1), ShardId(2), SegmentId(3)), "1 2 3");
        assert_eq!(Lsn::ZERO.prev(), Lsn::ZERO);
        assert_eq!(Lsn::MAX.next(), Lsn::MAX);
        assert_eq!(Lsn(5) + 2, Lsn(7));
    }
}
