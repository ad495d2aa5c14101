//! Named limits, each with its unit. Changing one is a design decision: the
//! reason sits beside it.

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Largest group commit. A burst above it is split into several writes; a
/// single frame larger than this is written alone. Kept well inside
/// [`SHARD_IO_MEMORY_BYTES`] so commit buffers come from glommio's registered
/// pool instead of falling back to the heap.
pub const GROUP_COMMIT_BYTES_MAX: u64 = 4 * MIB;

/// Commits up to this size are written and synced with plain syscalls on
/// the shard thread (lowest latency); larger ones go through io_uring so the
/// shard keeps serving reads while the disk works.
pub const INLINE_COMMIT_BYTES_MAX: u64 = 256 * KIB;

/// A record batch body at least this large is copied by the gateway into
/// memory aligned to [`BODY_BLOCK_BYTES`], zero-padded to a multiple of it,
/// and the WAL writes that memory itself (a vectored write; frame version
/// 3): its one copy after the socket. Smaller bodies are copied into the
/// commit buffer, which costs less than the padding and the extra iovecs.
pub const ALIGNED_BODY_BYTES_MIN: usize = 64 * KIB as usize;

/// Alignment and length granule of the bodies above: a multiple of every
/// O_DIRECT block size the WAL meets (512 and 4096).
pub const BODY_BLOCK_BYTES: usize = 4096;

/// Freed bodies of that kind kept for reuse, in all (`wal/body_pool.rs`):
/// a freed buffer is reused instead of new memory the kernel must zero.
/// About 0.1 s of ingest at the bench's rates; what it holds counts in RSS,
/// not in the memory limit.
pub const BODY_POOL_BYTES_MAX: usize = 64 * MIB as usize;

/// glommio `io_memory` per shard: registered DMA buffers for commit buffers,
/// zero fills and reads. io_uring pins all of it at start, so it is resident
/// whether used or not (32 MiB per shard was 64 of a fresh 2-shard server's
/// 114 MiB). What it holds at once is one commit buffer (at most
/// [`GROUP_COMMIT_BYTES_MAX`]; a large body is written from the gateway's
/// memory, not copied here), a zero-fill buffer and a seal block; a buffer
/// that does not fit comes from the heap instead, which costs the kernel a
/// page pinning per write, not a failure.
pub const SHARD_IO_MEMORY_BYTES: usize = 8 * MIB as usize;

/// io_uring submission queue depth per shard.
pub const SHARD_RING_DEPTH: usize = 256;

/// Requests a shard's inbox holds. When full, callers wait up to
/// [`SHARD_SEND_TIMEOUT_MS`] and then get `Error::Overloaded`.
pub const SHARD_INBOX_DEPTH_MAX: usize = 1024;

/// How long a caller waits for room in a full shard inbox before giving up.
pub const SHARD_SEND_TIMEOUT_MS: u64 = 5_000;

/// Appends accepted by a shard but not yet written. When full, the shard
/// stops reading its inbox, which then fills and pushes back on callers.
pub const SHARD_PENDING_APPENDS_MAX: usize = 4096;

/// Largest WAL frame payload (one record batch). Bigger batches must be split
/// by the client; the gateway's message limit is below this.
pub const FRAME_PAYLOAD_BYTES_MAX: u64 = 1024 * MIB;

/// Smallest segment size; the configured size is clamped up to it.
pub const SEGMENT_BYTES_MIN: u64 = MIB;

/// Write size while preallocating a WAL segment file with zeros (one
/// registered DMA buffer, reused).
pub const WAL_ZERO_FILL_BYTES: u64 = MIB;

/// Covered WAL segments kept as free files for new segments, per shard,
/// unless configured otherwise (`EngineConfig::wal_recycle_segments`).
pub const WAL_RECYCLE_SEGMENTS_DEFAULT: usize = 2;

/// Read size while replaying a segment.
pub const REPLAY_READ_BYTES: usize = 8 * MIB as usize;

/// Stored sequence numbers an idempotent producer's retry is checked
/// against, per producer and dataset (16 bytes each). A retry resends at
/// most what was in flight, which one stream bounds at 512 batches.
pub const PRODUCER_WINDOW: usize = 1024;

/// Longest idempotent producer id, in bytes.
pub const PRODUCER_ID_BYTES_MAX: usize = 256;

/// Longest dataset name, in bytes.
pub const DATASET_NAME_BYTES_MAX: usize = 128;

/// glommio refuses to start below this RLIMIT_MEMLOCK.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * KIB;

const _: () = assert!(GROUP_COMMIT_BYTES_MAX < SHARD_IO_MEMORY_BYTES as u64);
const _: () = assert!(SEGMENT_BYTES_MIN > GROUP_COMMIT_BYTES_MAX / 8);
const _: () = assert!(WAL_ZERO_FILL_BYTES <= SHARD_IO_MEMORY_BYTES as u64 / 8);
