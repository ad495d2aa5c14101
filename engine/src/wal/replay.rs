//! Reading segments back at startup, and telling a torn tail (the last,
//! unacknowledged commit, cut short by a crash) from corruption (damage
//! before data that was acknowledged) and from the clean end of the log,
//! behind which a preallocated file holds zeros and a recycled one the
//! frames of the segments it held before (`docs/wal-format.md`).

use std::path::{Path, PathBuf};

use super::format::{self, DecodeError, FrameKind, FrameRef, SegmentHeader};
use super::Lsn;
use crate::error::{Error, Result};
use crate::ids::SegmentId;
use crate::io::{OpenMode, SeqReader, Storage};
use crate::limits::REPLAY_READ_BYTES;

#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub id: SegmentId,
    pub path: PathBuf,
}

/// Segment files in `dir`, oldest first.
pub fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for name in super::list_names(storage, dir, "listing WAL directory")? {
        if let Some(id) = super::parse_segment_file_name(&name) {
            out.push(SegmentFile { id, path: dir.join(name) });
        }
    }
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// What to do with damage that is not a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorruptionPolicy {
    /// Refuse to start, naming file and offset.
    #[default]
    Refuse,
    /// Keep what comes before the damage and drop the rest of the segment.
    Truncate,
}

/// How a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// A seal frame: the segment is complete.
    Sealed,
    /// After the last good frame: zeros, the end of the file, or what a
    /// recycled file held before (frames of older segments).
    Clean,
    /// The last commit was cut short (torn write) at this offset.
    Torn { offset: u64, reason: String },
}

#[derive(Debug)]
pub struct SegmentReplay {
    pub header: SegmentHeader,
    /// Offset just past the last good frame.
    pub valid_end: u64,
    pub last_lsn: Option<Lsn>,
    pub end: SegmentEnd,
    pub bytes_read: u64,
}

/// Reads the header block of a segment.
pub async fn read_header(storage: &dyn Storage, path: &Path) -> Result<SegmentHeader> {
    let file = storage.open(path, OpenMode::Read).await.map_err(Error::io("opening WAL segment", path, 0))?;
    let r = file.read_at(0, format::SEGMENT_HEADER_BYTES).await.map_err(Error::io("reading segment header", path, 0));
    let _ = file.close().await;
    let r = r?;
    SegmentHeader::decode(&r).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: format!("segment header: {e}"),
    })
}

/// Replays one segment, calling `visit` for each data frame in order.
///
/// `expected_lsn` is the LSN the first frame must carry (`None` takes the
/// segment header's). `newest` says whether this is the shard's last
/// segment: only there may the tail be torn.
pub async fn replay_segment(
    storage: &dyn Storage,
    seg: &SegmentFile,
    expected_lsn: Option<Lsn>,
    newest: bool,
    policy: CorruptionPolicy,
    mut visit: impl FnMut(&FrameRef<'_>, u64) -> Result<()>,
) -> Result<SegmentReplay> {
    let path = &seg.path;
    let header = read_header(storage, path).await?;
    if header.segment_id != seg.id {
        return Err(Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("header names segment {} but the file name says {}", header.segment_id, seg.id),
        });
    }
    let file = storage.open(path, OpenMode::Read).await.map_err(Error::io("opening WAL segment", path, 0))?;
    let file_len = file.size().await.map_err(Error::io("stat WAL segment", path, 0))?;
    let block = header.block_bytes as u64;
    let mut reader = SeqReader::new(file, block);

    // buf holds file bytes [buf_start, buf_start + buf.len()).
    let mut buf: Vec<u8> = Vec::with_capacity(2 * REPLAY_READ_BYTES);
    let mut buf_start = block;
    let mut eof = block >= file_len;
    let mut pos = block;
    let mut commit = block;
    let mut next_lsn = expected_lsn.unwrap_or(header.first_lsn);
    let mut last_lsn = None;
    let mut bytes_read = 0u64;

    let reason: String = loop {
        let rel = (pos - buf_start) as usize;
        let decoded = match format::decode_frame(&buf[rel.min(buf.len())..]) {
            // Commits are zero-padded to the block: check all of it, so
            // that damage there is found too.
            Err(DecodeError::Zero) if pos % block != 0 => {
                let pad = (pos.next_multiple_of(block) - pos) as usize;
                match buf.get(rel..rel + pad) {
                    None if !eof => Err(DecodeError::Truncated),
                    Some(p) if p.iter().any(|b| *b != 0) => {
                        let at = pos + p.iter().position(|b| *b != 0).unwrap_or(0) as u64;
                        break format!("non-zero byte at offset {at} in the padding after a commit");
                    }
                    _ => Err(DecodeError::Zero),
                }
            }
            d => d,
        };
        match decoded {
            // An older segment's frame in a recycled file: the log ended
            // before it, there is no need to read its payload.
            Err(DecodeError::Truncated)
                if format::peek_frame_place(&buf[rel.min(buf.len())..])
                    .is_some_and(|p| p.magic == format::FRAME_MAGIC && p.segment_id != seg.id) =>
            {
                let other = format::peek_frame_place(&buf[rel..]).map_or(SegmentId(0), |p| p.segment_id);
                break format!("frame belongs to segment {other}");
            }
            Err(DecodeError::Truncated) if !eof => {
                // Drop what is consumed, then read more.
                buf.drain(..rel.min(buf.len()));
                buf_start = pos;
                let have = buf.len();
                let n = reader.append_to(&mut buf, REPLAY_READ_BYTES).await.map_err(Error::io(
                    "reading WAL segment",
                    path,
                    buf_start + have as u64,
                ))?;
                bytes_read += n as u64;
                if n == 0 {
                    eof = true;
                }
                continue;
            }
            Err(DecodeError::Zero) if pos % block != 0 => {
                // Padding after the last frame of a commit.
                pos = pos.next_multiple_of(block);
                continue;
            }
            Err(e) => break e.to_string(),
            Ok(f) => {
                if let Err(reason) = check_chain(&f.header, seg.id, pos, block, &mut commit, next_lsn) {
                    break reason;
                }
                next_lsn += 1;
                last_lsn = Some(f.header.lsn);
                if f.header.kind == FrameKind::Seal {
                    let _ = reader.close().await;
                    return Ok(SegmentReplay {
                        header,
                        valid_end: pos + f.len as u64,
                        last_lsn,
                        end: SegmentEnd::Sealed,
                        bytes_read,
                    });
                }
                // A durable mark says only when its commit was written.
                if f.header.kind != FrameKind::DurableMark {
                    visit(&f, pos)?;
                }
                pos += f.len as u64;
            }
        }
    };
    let _ = reader.close().await;
    let valid_end = pos;
    // The log stops at `pos`. An intact later commit of this segment:
    // acknowledged data was damaged, corruption. Bytes of the commit being
    // read there: it was torn. Otherwise (zeros, the file's end, or a
    // recycled file's older frames) the log ends cleanly here.
    let after = scan_after(storage, path, seg.id, pos, commit, next_lsn, block).await?;
    if let Some(at) = after.later {
        if policy == CorruptionPolicy::Refuse {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: pos,
                reason: format!("{reason}; an intact commit follows at offset {at}"),
            });
        }
    } else if !newest && policy == CorruptionPolicy::Refuse {
        let reason = if after.torn {
            format!("{reason}; segment is not the newest and was not sealed")
        } else {
            "segment ends without a seal frame but newer segments follow it".into()
        };
        return Err(Error::Corrupt { path: path.clone(), offset: pos, reason });
    }
    let end = if after.torn || after.later.is_some() || after.overlapped.is_some() {
        SegmentEnd::Torn { offset: pos, reason }
    } else {
        SegmentEnd::Clean
    };
    Ok(SegmentReplay { header, valid_end, last_lsn, end, bytes_read })
}

/// Checks that an intact frame at `pos` continues the log of segment
/// `segment_id`: its own segment, the commit it belongs to (a frame at a
/// block boundary naming its own offset starts a new one; `commit` follows
/// it), and the next LSN. Pure; the offline tool (`longbow wal verify`)
/// walks logs with it too.
pub fn check_chain(
    h: &format::FrameHeader,
    segment_id: SegmentId,
    pos: u64,
    block: u64,
    commit: &mut u64,
    next_lsn: Lsn,
) -> std::result::Result<(), String> {
    if h.segment_id != segment_id {
        return Err(format!("frame belongs to segment {}", h.segment_id));
    }
    if h.commit_start == pos && pos % block == 0 {
        *commit = pos;
    } else if h.commit_start != *commit {
        return Err(format!("frame says its commit starts at {}, expected {commit}", h.commit_start));
    }
    if h.lsn != next_lsn {
        return Err(format!("frame has lsn {}, expected {next_lsn}", h.lsn));
    }
    Ok(())
}

/// What a frame header found at `at`, past the log's end at `from`, says
/// (the commit being read there started at `commit`): whether it is a byte
/// of that torn commit, and whether it may start a later commit of this
/// segment (at a block boundary, naming its own offset, with an LSN at
/// least `next_lsn`; the caller then checks the whole frame is intact).
/// Frames of other segments, which a recycled file holds, are neither.
/// Pure; shared with the offline tool.
pub fn judge_frame_after_end(
    p: &format::FramePlace,
    segment_id: SegmentId,
    at: u64,
    from: u64,
    commit: u64,
    next_lsn: Lsn,
    block: u64,
) -> (bool, bool) {
    if p.segment_id != segment_id {
        return (false, false);
    }
    let torn = p.commit_start == commit || p.commit_start == from;
    let later = at > from && at % block == 0 && p.commit_start == at && p.lsn >= next_lsn;
    (torn, later)
}

/// Whether an intact later commit past the log's end (where the log needed
/// `next_lsn`), starting with the durable mark `mark` if it has one, was
/// written while the commit the log stopped in was still being synced: its
/// mark says the log was durable only before `next_lsn`. That commit was
/// never acknowledged either, so the stop is a torn tail. Any other later
/// commit was written after the stopped one was durable: corruption. Only
/// one commit is written while another syncs, so a second one
/// (`seen_overlapped`) is corruption too. Pure; shared with the offline tool.
pub fn overlapped_commit(mark: Option<Lsn>, next_lsn: Lsn, seen_overlapped: bool) -> bool {
    !seen_overlapped && mark.is_some_and(|durable| durable < next_lsn)
}

/// What follows the end of the log.
#[derive(Debug, Default)]
struct After {
    /// Offset of an intact frame of this segment that starts a later commit
    /// written after the one the log stopped in was durable.
    later: Option<u64>,
    /// Offset of an intact later commit that was written while the one the
    /// log stopped in was still being synced (its durable mark says the log
    /// was durable only before the LSN it stopped at): it was never
    /// acknowledged either.
    overlapped: Option<u64>,
    /// Bytes of the commit being read when the log ended are there: a frame
    /// header naming this segment and that commit, or anything but zeros
    /// in the rest of the block the log ended in.
    torn: bool,
}

/// Looks past the end of the log at `from`, to the end of the file, for an
/// intact frame of this segment that starts a later commit (at a block
/// boundary, naming its own offset, with an LSN at least `next_lsn`) and
/// for bytes of the commit being read there (which started at `commit`).
/// Frames of other segments, which a recycled file holds, are neither:
/// segment ids only grow in a directory, and so do LSNs, so even a frame of
/// an older use of this id could not pass for a later commit. Reads a
/// buffer at a time; only a segment a crash left unsealed pays for this.
async fn scan_after(
    storage: &dyn Storage,
    path: &Path,
    segment_id: SegmentId,
    from: u64,
    commit: u64,
    next_lsn: Lsn,
    block: u64,
) -> Result<After> {
    let file = storage.open(path, OpenMode::Read).await.map_err(Error::io("opening WAL segment", path, 0))?;
    let start = from - from % block;
    let mut w = Window {
        reader: SeqReader::new(file, start),
        buf: Vec::with_capacity(2 * REPLAY_READ_BYTES),
        start,
        eof: false,
        path,
    };
    let scanned = async {
        let mut after = After::default();
        if from % block != 0 {
            let mut end = from.next_multiple_of(block);
            if !w.fill_to(end).await? {
                end = w.start + w.buf.len() as u64; // the file ends inside the block
            }
            after.torn = w.bytes(from, end).iter().any(|b| *b != 0);
        }
        let mut at = from.next_multiple_of(format::FRAME_ALIGN as u64);
        while w.fill_to(at + format::FRAME_HEADER_BYTES as u64).await? {
            let place = format::peek_frame_place(w.bytes(at, at + format::FRAME_HEADER_BYTES as u64));
            if let Some(p) = place {
                let (torn, later) = judge_frame_after_end(&p, segment_id, at, from, commit, next_lsn, block);
                after.torn |= torn;
                if later {
                    match w.intact_frame(at).await? {
                        Some(mark) if overlapped_commit(mark, next_lsn, after.overlapped.is_some()) => {
                            after.overlapped = Some(at);
                        }
                        Some(_) => {
                            after.later = Some(at);
                            break;
                        }
                        None => {}
                    }
                }
            }
            at += format::FRAME_ALIGN as u64;
            w.discard_before(at);
        }
        Ok::<_, Error>(after)
    }
    .await;
    let _ = w.reader.close().await;
    scanned
}

/// A sliding window over a file's bytes from `start` on.
struct Window<'a> {
    reader: SeqReader,
    /// File bytes `start..start + buf.len()`.
    buf: Vec<u8>,
    start: u64,
    eof: bool,
    path: &'a Path,
}

impl Window<'_> {
    /// Reads until the window reaches `end`; false if the file ends first.
    async fn fill_to(&mut self, end: u64) -> Result<bool> {
        while self.start + (self.buf.len() as u64) < end {
            if self.eof {
                return Ok(false);
            }
            let at = self.start + self.buf.len() as u64;
            let n = self.reader.append_to(&mut self.buf, REPLAY_READ_BYTES).await.map_err(Error::io(
                "reading WAL segment",
                self.path,
                at,
            ))?;
            self.eof = n == 0;
        }
        Ok(true)
    }

    fn bytes(&self, from: u64, to: u64) -> &[u8] {
        &self.buf[(from - self.start) as usize..(to - self.start) as usize]
    }

    /// Whether an intact frame starts at `at` (reading as far as it says it
    /// goes): `None` if not, else what it says as a durable mark, if it is one.
    async fn intact_frame(&mut self, at: u64) -> Result<Option<Option<Lsn>>> {
        loop {
            match format::decode_frame(&self.buf[(at - self.start) as usize..]) {
                Ok(f) => return Ok(Some(format::durable_through(&f))),
                Err(DecodeError::Truncated) if !self.eof => {
                    let end = self.start + self.buf.len() as u64 + 1;
                    self.fill_to(end).await?;
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Forgets what lies before `at` once that is a whole buffer.
    fn discard_before(&mut self, at: u64) {
        let n = (at - self.start) as usize;
        if n >= REPLAY_READ_BYTES {
            self.buf.drain(..n);
            self.start = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::wal::format::{encode_frame, FrameHeader};

    const BLOCK: u64 = 512;

    /// A segment file written by hand: a header block, then commits.
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn new(len: usize) -> Self {
            Bytes(vec![0; len])
        }

        fn header(&mut self, segment_id: u64, first_lsn: u64) {
            let (segment_id, first_lsn) = (SegmentId(segment_id), Lsn(first_lsn));
            let h =
                SegmentHeader { block_bytes: BLOCK as u32, shard: ShardId(0), generation: 0, segment_id, first_lsn };
            self.0[..BLOCK as usize].fill(0);
            self.0[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&h.encode());
        }

        /// One commit at `at` of `frames` data frames of `payload` bytes,
        /// LSNs from `lsn`, zero-padded to the block. Returns its end.
        fn commit(&mut self, segment_id: u64, at: u64, lsn: u64, frames: u64, payload: usize) -> u64 {
            let mut pos = at as usize;
            for i in 0..frames {
                let (id, l) = (SegmentId(segment_id), Lsn(lsn + i));
                let h = FrameHeader { kind: FrameKind::Data, lsn: l, segment_id: id, commit_start: at };
                let f = encode_frame(h, b"ds", &vec![(lsn + i) as u8 | 1; payload]);
                self.0[pos..pos + f.len()].copy_from_slice(&f);
                pos += f.len();
            }
            let end = (pos as u64).next_multiple_of(BLOCK);
            self.0[pos..end as usize].fill(0);
            end
        }

        /// A commit like [`Bytes::commit`] that starts with a durable mark
        /// (LSN `lsn`) saying the log was durable through `durable`; its
        /// data frames take the LSNs after the mark's.
        fn marked_commit(&mut self, segment_id: u64, at: u64, lsn: u64, durable: u64, frames: u64) -> u64 {
            let h = FrameHeader {
                kind: FrameKind::DurableMark,
                lsn: Lsn(lsn),
                segment_id: SegmentId(segment_id),
                commit_start: at,
            };
            let mark = encode_frame(h, b"", &format::durable_mark_payload(Lsn(durable)));
            self.0[at as usize..at as usize + mark.len()].copy_from_slice(&mark);
            let mut pos = at as usize + mark.len();
            for i in 0..frames {
                let l = Lsn(lsn + 1 + i);
                let h =
                    FrameHeader { kind: FrameKind::Data, lsn: l, segment_id: SegmentId(segment_id), commit_start: at };
                let f = encode_frame(h, b"ds", &[l.get() as u8 | 1; 200]);
                self.0[pos..pos + f.len()].copy_from_slice(&f);
                pos += f.len();
            }
            let end = (pos as u64).next_multiple_of(BLOCK);
            self.0[pos..end as usize].fill(0);
            end
        }

        fn write(&self, path: &Path) {
            std::fs::write(path, &self.0).unwrap();
        }
    }

    /// Segment 1: commits of LSNs 1..=3 and 4..=6 durable, then commit C
    /// (LSNs 7..=9) torn in its second frame (the log needs 8 there), and
    /// behind it commit D,
    /// written while C was being synced: a durable mark (LSN 10) saying the
    /// log was durable through `durable`, then LSNs 11..=12. Returns the
    /// bytes, C's start and D's start and end.
    fn overlapped(durable: u64) -> (Bytes, u64, u64, u64) {
        let mut b = Bytes::new(32 * 1024);
        b.header(1, 1);
        let at = b.commit(1, BLOCK, 1, 3, 200);
        let c = b.commit(1, at, 4, 3, 200);
        let d = b.commit(1, c, 7, 3, 200);
        let end = b.marked_commit(1, d, 10, durable, 2);
        let second = c as usize + format::frame_len(2, 200);
        b.0[second + 60] ^= 0x01;
        (b, c, d, end)
    }

    #[test]
    fn a_torn_commit_followed_by_the_one_written_while_it_synced_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        // D's mark says the log was durable through 6: C was not yet.
        let (b, c, d, _) = overlapped(6);
        b.write(&path);
        let (r, lsns) = replay(&path, 1, true, CorruptionPolicy::Refuse);
        let r = r.unwrap();
        assert_eq!(lsns, (1..=7).collect::<Vec<_>>(), "neither the torn commit's rest nor the one after it");
        let torn_at = c + format::frame_len(2, 200) as u64;
        assert!(matches!(r.end, SegmentEnd::Torn { offset, .. } if offset == torn_at), "{:?}", r.end);
        assert_eq!(r.last_lsn, Some(Lsn(7)));
        assert!(d > torn_at);
    }

    #[test]
    fn a_commit_whose_mark_says_the_torn_one_was_durable_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        // The mark says LSN 9 was durable: commit C (7..=9) was
        // acknowledged before D was written, so its damage is corruption.
        let (b, c, d, _) = overlapped(9);
        b.write(&path);
        let (r, _) = replay(&path, 1, true, CorruptionPolicy::Refuse);
        let e = r.unwrap_err();
        let torn_at = c + format::frame_len(2, 200) as u64;
        assert!(matches!(&e, Error::Corrupt { offset, .. } if *offset == torn_at), "{e}");
        assert!(e.to_string().contains(&format!("an intact commit follows at offset {d}")), "{e}");
    }

    #[test]
    fn a_second_commit_after_the_overlapped_one_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        // Only one commit is written while another syncs: a commit after D
        // (marked or not) was written once C was durable.
        for marked in [false, true] {
            let (mut b, _, _, end) = overlapped(6);
            if marked {
                b.marked_commit(1, end, 13, 9, 1);
            } else {
                b.commit(1, end, 13, 1, 200);
            }
            b.write(&path);
            let (r, _) = replay(&path, 1, true, CorruptionPolicy::Refuse);
            let e = r.unwrap_err();
            assert!(e.to_string().contains(&format!("an intact commit follows at offset {end}")), "{e}");
        }
    }

    #[test]
    fn a_durable_mark_is_replayed_as_an_lsn_and_not_visited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        let mut b = Bytes::new(16 * 1024);
        b.header(1, 1);
        let at = b.commit(1, BLOCK, 1, 2, 200);
        let end = b.marked_commit(1, at, 3, 0, 2);
        b.write(&path);
        let (r, lsns) = replay(&path, 1, true, CorruptionPolicy::Refuse);
        let r = r.unwrap();
        assert_eq!(lsns, vec![1, 2, 4, 5]);
        assert_eq!((r.end, r.valid_end, r.last_lsn), (SegmentEnd::Clean, end, Some(Lsn(5))));
    }

    /// Replays `path` as segment `id`; returns the outcome and the LSNs visited.
    fn replay(path: &Path, id: u64, newest: bool, policy: CorruptionPolicy) -> (Result<SegmentReplay>, Vec<u64>) {
        let seg = SegmentFile { id: SegmentId(id), path: path.to_owned() };
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut lsns = Vec::new();
                let r = replay_segment(&crate::io::RealStorage::SYNC, &seg, None, newest, policy, |f, _| {
                    lsns.push(f.header.lsn.get());
                    Ok(())
                })
                .await;
                (r, lsns)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    /// Segment 3 once filled the file (LSNs 1..=40, a seal after them);
    /// segment 7, made from it after recycling, holds three commits (LSNs
    /// 41..=43) and a crash ended it. Then, at the block after segment 7's
    /// end, an old intact frame that happens to carry exactly the LSN the
    /// log would need next (44), and one of the same id 7 (an older use of
    /// the id, LSN 5). Returns the bytes and the ends of segment 7's commits.
    fn recycled() -> (Bytes, Vec<u64>) {
        let mut b = Bytes::new(64 * 1024);
        b.header(3, 1);
        let mut at = BLOCK;
        for lsn in (1..=40).step_by(4) {
            at = b.commit(3, at, lsn, 4, 300);
        }
        let seal = FrameHeader { kind: FrameKind::Seal, lsn: Lsn(41), segment_id: SegmentId(3), commit_start: at };
        let seal = encode_frame(seal, b"", b"");
        b.0[at as usize..at as usize + seal.len()].copy_from_slice(&seal);
        b.header(7, 41);
        let mut ends = Vec::new();
        let mut at = BLOCK;
        for lsn in 41..=43 {
            at = b.commit(7, at, lsn, 1, 700);
            ends.push(at);
        }
        b.commit(3, at, 44, 2, 100);
        b.commit(7, at + 4 * BLOCK, 5, 1, 100);
        (b, ends)
    }

    #[test]
    fn a_recycled_files_old_frames_end_the_log_cleanly_whatever_their_lsns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000007.wal");
        let (b, ends) = recycled();
        b.write(&path);
        let (r, lsns) = replay(&path, 7, true, CorruptionPolicy::Refuse);
        let r = r.unwrap();
        assert_eq!(lsns, vec![41, 42, 43], "only segment 7's frames, never the old ones");
        assert_eq!(r.end, SegmentEnd::Clean, "not a torn tail, not corruption");
        assert_eq!(r.valid_end, ends[2]);
        assert_eq!(r.last_lsn, Some(Lsn(43)));
        // An older segment must end with a seal, recycled file or not.
        let (r, _) = replay(&path, 7, false, CorruptionPolicy::Refuse);
        assert!(matches!(r, Err(Error::Corrupt { offset, .. }) if offset == ends[2]), "{r:?}");
    }

    #[test]
    fn damage_before_acknowledged_data_in_a_recycled_file_is_refused_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000007.wal");
        let (mut b, ends) = recycled();
        b.0[ends[0] as usize + 100] ^= 0x10; // the second commit's payload
        b.write(&path);
        let (r, lsns) = replay(&path, 7, true, CorruptionPolicy::Refuse);
        assert_eq!(lsns, vec![41]);
        let e = r.unwrap_err();
        assert!(matches!(&e, Error::Corrupt { offset, .. } if *offset == ends[0]), "{e}");
        let text = e.to_string();
        assert!(text.contains("00000000000000000007.wal"), "{text}");
        assert!(text.contains(&format!("an intact commit follows at offset {}", ends[1])), "{text}");
        // Told to, replay keeps what precedes the damage.
        let (r, lsns) = replay(&path, 7, true, CorruptionPolicy::Truncate);
        assert_eq!(lsns, vec![41]);
        assert!(matches!(r.unwrap().end, SegmentEnd::Torn { offset, .. } if offset == ends[0]));
    }

    #[test]
    fn a_commit_torn_over_a_recycled_files_old_bytes_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000007.wal");
        let (mut b, ends) = recycled();
        // A fourth commit of three blocks, of which only the first block
        // reached the disk: the old bytes remain behind it.
        let old = b.0.clone();
        let end = b.commit(7, ends[2], 44, 1, 1400);
        assert_eq!(end, ends[2] + 3 * BLOCK);
        b.0[(ends[2] + BLOCK) as usize..end as usize].copy_from_slice(&old[(ends[2] + BLOCK) as usize..end as usize]);
        b.write(&path);
        let (r, lsns) = replay(&path, 7, true, CorruptionPolicy::Refuse);
        assert_eq!(lsns, vec![41, 42, 43]);
        assert!(matches!(r.unwrap().end, SegmentEnd::Torn { offset, .. } if offset == ends[2]));
    }

    #[test]
    fn zeros_after_the_log_are_its_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        let mut b = Bytes::new(16 * 1024);
        b.header(1, 1);
        b.commit(1, BLOCK, 1, 3, 200);
        b.write(&path);
        let (r, lsns) = replay(&path, 1, true, CorruptionPolicy::Refuse);
        assert_eq!(lsns, vec![1, 2, 3]);
        let r = r.unwrap();
        // The end of the last commit's block, after its padding.
        assert_eq!(
            (r.end, r.valid_end),
            (SegmentEnd::Clean, (BLOCK + 3 * format::frame_len(2, 200) as u64).next_multiple_of(BLOCK))
        );
    }
}
