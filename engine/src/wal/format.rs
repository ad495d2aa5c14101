//! The WAL's on-disk format, pure (no I/O). See `docs/wal-format.md`.
//!
//! A segment is a header block followed by commits. Each commit starts at an
//! aligned offset and holds one or more frames packed at 8-byte alignment,
//! then zero padding up to the next alignment boundary. A frame is
//!
//! ```text
//! 0  magic        u32  "LBWF"
//! 4  version      u8
//! 5  kind         u8   1 = data, 2 = seal, 3 = drop (tombstone),
//!                       4 = producers' state, 5 = durable mark,
//!                       6 = forget (handed over or dropped elsewhere)
//! 6  dataset_len  u16
//! 8  payload_len  u32
//! 12 crc32c       u32  over bytes 0..12, 16..40, dataset and payload
//! 16 lsn          u64  per-shard, contiguous
//! 24 segment_id   u64  the segment this frame was written to
//! 32 commit_start u64  file offset of the commit holding this frame
//! 40 dataset      [u8; dataset_len]
//! .. payload      [u8; payload_len]  Arrow IPC encapsulated messages
//! .. zero padding to 8 bytes
//! ```
//! In version 3 ([`FORMAT_VERSION_ALIGNED`]) zeros pad the dataset name to 8
//! bytes before the payload, under the checksum.
//! All integers are little-endian.

use crate::ids::{Lsn, SegmentId, ShardId};
use crate::limits::FRAME_PAYLOAD_BYTES_MAX;

pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"LBWF");
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"LBWS");
/// Version of frames without an idempotent producer's sequence number, and
/// of segment headers.
pub const FORMAT_VERSION: u8 = 1;
/// Version of data frames whose payload ends with a producer trailer (see
/// `ipc.rs`). Readers take both; a frame is written as version 1 whenever
/// it can be, so that a log without producers stays readable by older
/// binaries.
pub const FORMAT_VERSION_PRODUCER: u8 = 2;
/// Version of data frames whose record batch body starts at an aligned
/// offset: the payload starts at the next 8-byte boundary after the dataset
/// name, a producer trailer (if any) comes first, the batch message's
/// metadata is zero-padded so that its body starts on a block boundary of
/// the file, and zeros follow the body up to the next one. The frame is then
/// written from two buffers: the commit buffer up to the body, and the body
/// as the gateway received it (see `commit.rs`).
pub const FORMAT_VERSION_ALIGNED: u8 = 3;
/// Version of segment headers. Version 2 segments may hold durable marks
/// ([`FrameKind::DurableMark`]): a binary that reads only version 1 refuses
/// them at the header instead of taking a mark for the end of the log.
/// Version 3 segments may hold forget frames ([`FrameKind::Forget`]): a
/// binary that reads only versions 1 and 2 refuses them at the header
/// instead of replaying rows another node holds now. Readers take all three.
pub const SEGMENT_FORMAT_VERSION: u8 = 3;
pub const FRAME_HEADER_BYTES: usize = 40;
pub const SEGMENT_HEADER_BYTES: usize = 48;
pub const FRAME_ALIGN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Arrow IPC messages for one dataset: a schema message the first time the
    /// dataset appears in a segment, then record batch messages.
    Data = 1,
    /// Last frame of a finished segment; nothing follows it.
    Seal = 2,
    /// Tombstone: the named dataset was dropped; no payload.
    Drop = 3,
    /// The idempotent producers' state of a dataset (JSON), logged again
    /// after a shard-count change moved the dataset.
    Producers = 4,
    /// First frame of a commit written while the one before it was still
    /// being synced; no dataset. Its payload (8 bytes) is the LSN through
    /// which the log was durable when the commit was written, so replay can
    /// tell that commit from one written after the torn one was
    /// acknowledged ([`durable_mark_payload`]).
    DurableMark = 5,
    /// The named dataset's earlier records here are void: they were handed
    /// over to its owner, or the owner dropped the dataset while this node
    /// still held them. No payload. Unlike a drop it says nothing about the
    /// dataset's table, which is the owner's.
    Forget = 6,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Seal),
            3 => Some(Self::Drop),
            4 => Some(Self::Producers),
            5 => Some(Self::DurableMark),
            6 => Some(Self::Forget),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub lsn: Lsn,
    pub segment_id: SegmentId,
    pub commit_start: u64,
}

/// A frame read back from a buffer, borrowing its bytes.
#[derive(Debug)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    pub dataset: &'a [u8],
    pub payload: &'a [u8],
    /// Bytes the frame occupies, padding included.
    pub len: usize,
    pub version: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the declared lengths need.
    Truncated,
    /// The first four bytes are zero: padding or never-written space.
    Zero,
    BadMagic(u32),
    BadVersion(u8),
    BadKind(u8),
    TooLarge(u64),
    Checksum {
        stored: u32,
        computed: u32,
    },
}

impl FrameRef<'_> {
    /// How the payload's messages are laid out.
    pub fn payload_layout(&self) -> super::ipc::PayloadLayout {
        if self.version == FORMAT_VERSION_ALIGNED {
            super::ipc::PayloadLayout::AlignedBody
        } else {
            super::ipc::PayloadLayout::Packed
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => write!(f, "frame truncated"),
            Self::Zero => write!(f, "zeroed bytes where a frame should start"),
            Self::BadMagic(m) => write!(f, "bad frame magic {m:#010x}"),
            Self::BadVersion(v) => write!(f, "unsupported frame version {v}"),
            Self::BadKind(k) => write!(f, "unknown frame kind {k}"),
            Self::TooLarge(n) => write!(f, "frame payload length {n} above the limit"),
            Self::Checksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
        }
    }
}

pub const fn align_up(v: usize, align: usize) -> usize {
    v.div_ceil(align) * align
}

/// Bytes a frame with these lengths occupies, padding included.
pub const fn frame_len(dataset_len: usize, payload_len: usize) -> usize {
    align_up(FRAME_HEADER_BYTES + dataset_len + payload_len, FRAME_ALIGN)
}

/// Writes one frame at the start of `out`, whose payload the caller has
/// already copied to `out[FRAME_HEADER_BYTES + dataset.len()..]`, so large
/// payloads are copied once, straight into the DMA buffer. Returns the frame
/// length. `out` must hold at least `frame_len(..)` bytes.
pub fn seal_frame_in_place(out: &mut [u8], header: FrameHeader, dataset: &[u8], payload_len: usize) -> usize {
    seal_frame_in_place_version(out, header, dataset, payload_len, FORMAT_VERSION)
}

/// Offset of the payload in a frame of `version`.
pub const fn payload_offset(version: u8, dataset_len: usize) -> usize {
    if version == FORMAT_VERSION_ALIGNED {
        align_up(FRAME_HEADER_BYTES + dataset_len, FRAME_ALIGN)
    } else {
        FRAME_HEADER_BYTES + dataset_len
    }
}

/// The header fields and the dataset name at the start of `out`, all but
/// the checksum (bytes 12..16), which covers them.
fn write_header(out: &mut [u8], header: FrameHeader, version: u8, dataset: &[u8], payload_len: usize) {
    out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[4] = version;
    out[5] = header.kind as u8;
    out[6..8].copy_from_slice(&(dataset.len() as u16).to_le_bytes());
    out[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[16..24].copy_from_slice(&header.lsn.0.to_le_bytes());
    out[24..32].copy_from_slice(&header.segment_id.0.to_le_bytes());
    out[32..40].copy_from_slice(&header.commit_start.to_le_bytes());
    out[40..40 + dataset.len()].copy_from_slice(dataset);
}

/// Seals a version 3 frame written in two parts: `prefix` holds the frame
/// from its header to the body (header fields are filled in here; the
/// dataset padding and the payload's start are the caller's), `body` the
/// rest, already padded. `prefix.len()` and `body.len()` are multiples of
/// 8. The checksum covers both, as [`decode_frame`] reads them back to back.
pub fn seal_split_frame(prefix: &mut [u8], header: FrameHeader, dataset: &[u8], body: &[u8]) {
    let payload_at = payload_offset(FORMAT_VERSION_ALIGNED, dataset.len());
    assert!(prefix.len() >= payload_at && prefix.len() % FRAME_ALIGN == 0 && body.len() % FRAME_ALIGN == 0);
    let payload_len = prefix.len() - payload_at + body.len();
    assert!(payload_len as u64 <= FRAME_PAYLOAD_BYTES_MAX);
    write_header(prefix, header, FORMAT_VERSION_ALIGNED, dataset, payload_len);
    prefix[40 + dataset.len()..payload_at].fill(0);
    let crc = crc32c::crc32c_append(frame_crc(prefix), body);
    prefix[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// [`seal_frame_in_place`] for a given frame version.
pub fn seal_frame_in_place_version(
    out: &mut [u8],
    header: FrameHeader,
    dataset: &[u8],
    payload_len: usize,
    version: u8,
) -> usize {
    assert!(version == FORMAT_VERSION || version == FORMAT_VERSION_PRODUCER);
    let len = frame_len(dataset.len(), payload_len);
    assert!(out.len() >= len, "frame buffer too small");
    assert!(dataset.len() <= u16::MAX as usize);
    assert!(payload_len as u64 <= FRAME_PAYLOAD_BYTES_MAX);
    write_header(out, header, version, dataset, payload_len);
    let body_end = FRAME_HEADER_BYTES + dataset.len() + payload_len;
    out[body_end..len].fill(0);
    let crc = frame_crc(&out[..body_end]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    // Pair assertion: what we wrote decodes to what we meant.
    debug_assert!(matches!(decode_frame(&out[..len]), Ok(f) if f.header == header));
    len
}

/// Encodes a whole frame into a new vector (tests, seal frames).
/// Payload bytes of a durable mark frame ([`FrameKind::DurableMark`]).
pub const DURABLE_MARK_PAYLOAD_BYTES: usize = 8;

/// The payload of a durable mark: the LSN through which the log was durable
/// when the commit it starts was written.
pub fn durable_mark_payload(durable_through: Lsn) -> [u8; DURABLE_MARK_PAYLOAD_BYTES] {
    durable_through.0.to_le_bytes()
}

/// What a durable mark's payload says; `None` for a frame that is not one
/// (or whose payload has the wrong length).
pub fn durable_through(f: &FrameRef<'_>) -> Option<Lsn> {
    (f.header.kind == FrameKind::DurableMark && f.payload.len() == DURABLE_MARK_PAYLOAD_BYTES)
        .then(|| Lsn(u64_at(f.payload, 0)))
}

pub fn encode_frame(header: FrameHeader, dataset: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame_len(dataset.len(), payload.len())];
    let at = FRAME_HEADER_BYTES + dataset.len();
    out[at..at + payload.len()].copy_from_slice(payload);
    seal_frame_in_place(&mut out, header, dataset, payload.len());
    out
}

fn frame_crc(frame_without_padding: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame_without_padding[0..12]);
    crc32c::crc32c_append(crc, &frame_without_padding[16..])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the frame at the start of `buf`. Any bytes give a value or an
/// error, never a panic.
pub fn decode_frame(buf: &[u8]) -> Result<FrameRef<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    let magic = u32_at(buf, 0);
    if magic == 0 {
        return Err(DecodeError::Zero);
    }
    if magic != FRAME_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    let version = buf[4];
    if !(FORMAT_VERSION..=FORMAT_VERSION_ALIGNED).contains(&version) {
        return Err(DecodeError::BadVersion(version));
    }
    let kind = FrameKind::from_u8(buf[5]).ok_or(DecodeError::BadKind(buf[5]))?;
    let dataset_len = u16_at(buf, 6) as usize;
    let payload_len = u32_at(buf, 8) as u64;
    if payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLarge(payload_len));
    }
    let payload_at = payload_offset(version, dataset_len);
    let body_end = payload_at + payload_len as usize;
    let len = align_up(body_end, FRAME_ALIGN);
    if buf.len() < body_end {
        return Err(DecodeError::Truncated);
    }
    let stored = u32_at(buf, 12);
    let computed = frame_crc(&buf[..body_end]);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok(FrameRef {
        header: FrameHeader {
            kind,
            lsn: Lsn(u64_at(buf, 16)),
            segment_id: SegmentId(u64_at(buf, 24)),
            commit_start: u64_at(buf, 32),
        },
        dataset: &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + dataset_len],
        payload: &buf[payload_at..body_end],
        len,
        version,
    })
}

/// Where a frame header at the start of a buffer says it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlace {
    pub magic: u32,
    pub lsn: Lsn,
    pub segment_id: SegmentId,
    pub commit_start: u64,
}

/// The fields of a frame header at the start of `buf` that place it, read
/// with no check at all (to scan bytes fast; [`decode_frame`] says whether
/// a frame is intact). `None` if `buf` is shorter than a frame header.
pub fn peek_frame_place(buf: &[u8]) -> Option<FramePlace> {
    if buf.len() < FRAME_HEADER_BYTES {
        return None;
    }
    Some(FramePlace {
        magic: u32_at(buf, 0),
        lsn: Lsn(u64_at(buf, 16)),
        segment_id: SegmentId(u64_at(buf, 24)),
        commit_start: u64_at(buf, 32),
    })
}

/// The header block at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Bytes the header block occupies: the device alignment when written.
    /// Commits are aligned to it.
    pub block_bytes: u32,
    pub shard: ShardId,
    /// Shard layout generation (see `layout.rs`).
    pub generation: u64,
    pub segment_id: SegmentId,
    pub first_lsn: Lsn,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        out[4] = SEGMENT_FORMAT_VERSION;
        out[8..12].copy_from_slice(&self.block_bytes.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard.0.to_le_bytes());
        out[16..24].copy_from_slice(&self.generation.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_id.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < SEGMENT_HEADER_BYTES {
            return Err(DecodeError::Truncated);
        }
        let magic = u32_at(buf, 0);
        if magic != SEGMENT_MAGIC {
            return Err(if magic == 0 { DecodeError::Zero } else { DecodeError::BadMagic(magic) });
        }
        if !(FORMAT_VERSION..=SEGMENT_FORMAT_VERSION).contains(&buf[4]) {
            return Err(DecodeError::BadVersion(buf[4]));
        }
        let stored = u32_at(buf, 44);
        let computed = crc32c::crc32c(&buf[0..44]);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        let header = Self {
            block_bytes: u32_at(buf, 8),
            shard: ShardId(u32_at(buf, 12)),
            generation: u64_at(buf, 16),
            segment_id: SegmentId(u64_at(buf, 24)),
            first_lsn: Lsn(u64_at(buf, 32)),
        };
        if !header.block_bytes.is_power_of_two() || (header.block_bytes as usize) < SEGMENT_HEADER_BYTES {
            return Err(DecodeError::TooLarge(header.block_bytes as u64));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(lsn: u64) -> FrameHeader {
        FrameHeader { kind: FrameKind::Data, lsn: Lsn(lsn), segment_id: SegmentId(7), commit_start: 4096 }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_frame(header(42), b"ds", b"hello payload");
        assert_eq!(bytes.len() % FRAME_ALIGN, 0);
        let f = decode_frame(&bytes).expect("decodes");
        assert_eq!(f.header, header(42));
        assert_eq!(f.dataset, b"ds");
        assert_eq!(f.payload, b"hello payload");
        assert_eq!(f.len, bytes.len());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode_frame(header(1), b"dataset", &[7u8; 61]);
        let body_end = FRAME_HEADER_BYTES + 7 + 61;
        for byte in 0..body_end {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[byte] ^= 1 << bit;
                assert!(decode_frame(&b).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    /// A version 3 frame sealed in two parts decodes from their
    /// concatenation, and damage anywhere in either part is detected.
    #[test]
    fn a_split_frame_decodes_whole_and_every_flipped_bit_is_detected() {
        for dataset in [&b"d"[..], b"dataset8", b"seven_7"] {
            let payload_at = payload_offset(FORMAT_VERSION_ALIGNED, dataset.len());
            assert_eq!(payload_at % FRAME_ALIGN, 0);
            let mut prefix = vec![0u8; payload_at + 24];
            prefix[payload_at..].copy_from_slice(&[5u8; 24]);
            let body = [9u8; 64];
            seal_split_frame(&mut prefix, header(3), dataset, &body);
            let whole = [prefix.clone(), body.to_vec()].concat();
            let f = decode_frame(&whole).expect("decodes");
            assert_eq!(
                (f.header, f.dataset, f.version, f.len),
                (header(3), dataset, FORMAT_VERSION_ALIGNED, whole.len())
            );
            assert_eq!(f.payload, &whole[payload_at..]);
            for byte in 0..whole.len() {
                for bit in 0..8 {
                    let mut b = whole.clone();
                    b[byte] ^= 1 << bit;
                    assert!(decode_frame(&b).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let bytes = encode_frame(header(1), b"d", &[1u8; 100]);
        for cut in 0..FRAME_HEADER_BYTES + 101 {
            assert!(decode_frame(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn zero_is_padding() {
        assert_eq!(decode_frame(&[0u8; 64]).unwrap_err(), DecodeError::Zero);
    }

    #[test]
    fn segment_header_round_trip() {
        let h = SegmentHeader {
            block_bytes: 512,
            shard: ShardId(3),
            generation: 2,
            segment_id: SegmentId(9),
            first_lsn: Lsn(100),
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[20] ^= 1;
        assert!(matches!(SegmentHeader::decode(&bad), Err(DecodeError::Checksum { .. })));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let _ = SegmentHeader::decode(&bytes);
        }

        #[test]
        fn any_bytes_behind_a_valid_magic_decode_without_panic(mut bytes in proptest::collection::vec(any::<u8>(), 5..512)) {
            bytes[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
            bytes[4] = FORMAT_VERSION;
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn a_peek_places_what_decodes(lsn in any::<u64>(), segment_id in any::<u64>(), commit_start in any::<u64>()) {
            let (lsn, segment_id) = (Lsn(lsn), SegmentId(segment_id));
            let header = FrameHeader { kind: FrameKind::Data, lsn, segment_id, commit_start };
            let bytes = encode_frame(header, b"ds", b"payload");
            let place = peek_frame_place(&bytes).unwrap();
            prop_assert_eq!(place, FramePlace { magic: FRAME_MAGIC, lsn, segment_id, commit_start });
            prop_assert!(peek_frame_place(&bytes[..FRAME_HEADER_BYTES - 1]).is_none());
        }

        #[test]
        fn round_trips(lsn in any::<u64>(), ds in proptest::collection::vec(any::<u8>(), 0..130), payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let bytes = encode_frame(header(lsn), &ds, &payload);
            let f = decode_frame(&bytes).unwrap();
            prop_assert_eq!(f.header.lsn, Lsn(lsn));
            prop_assert_eq!(f.dataset, &ds[..]);
            prop_assert_eq!(f.payload, &payload[..]);
        }
    }
}
