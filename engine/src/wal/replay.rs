//! Reading segments back at startup, and telling a torn tail (the last,
//! unacknowledged commit, cut short by a crash) from corruption (damage
//! before data that was acknowledged).

use std::path::{Path, PathBuf};

use futures::AsyncReadExt;
use glommio::io::{DmaFile, DmaStreamReaderBuilder};

use super::format::{self, DecodeError, FrameKind, FrameRef, SegmentHeader};
use super::Lsn;
use crate::error::{Error, Result};
use crate::limits::REPLAY_READ_BYTES;

#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub id: u64,
    pub path: PathBuf,
}

/// Segment files in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in super::list_dir(dir, "listing WAL directory")? {
        if let Some(id) = entry.file_name().to_str().and_then(super::parse_segment_file_name) {
            out.push(SegmentFile { id, path: entry.path() });
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
    /// The bytes after the last good frame are zero or never written.
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
pub async fn read_header(path: &Path) -> Result<SegmentHeader> {
    let file = DmaFile::open(path).await.map_err(Error::glommio("opening WAL segment", path, 0))?;
    let r =
        file.read_at(0, format::SEGMENT_HEADER_BYTES).await.map_err(Error::glommio("reading segment header", path, 0));
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
    seg: &SegmentFile,
    expected_lsn: Option<Lsn>,
    newest: bool,
    policy: CorruptionPolicy,
    mut visit: impl FnMut(&FrameRef<'_>, u64) -> Result<()>,
) -> Result<SegmentReplay> {
    let path = &seg.path;
    let header = read_header(path).await?;
    if header.segment_id != seg.id {
        return Err(Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("header names segment {} but the file name says {}", header.segment_id, seg.id),
        });
    }
    let file = DmaFile::open(path).await.map_err(Error::glommio("opening WAL segment", path, 0))?;
    let file_len = file.file_size().await.map_err(Error::glommio("stat WAL segment", path, 0))?;
    let block = header.block_bytes as u64;
    let mut reader = DmaStreamReaderBuilder::new(file)
        .with_start_pos(block)
        .with_buffer_size(REPLAY_READ_BYTES)
        .with_read_ahead(4)
        .build();

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
            Err(DecodeError::Truncated) if !eof => {
                // Drop what is consumed, then read more.
                buf.drain(..rel.min(buf.len()));
                buf_start = pos;
                let have = buf.len();
                buf.resize(have + REPLAY_READ_BYTES, 0);
                let n = read_full(&mut reader, &mut buf[have..]).await.map_err(Error::io(
                    "reading WAL segment",
                    path,
                    buf_start + have as u64,
                ))?;
                buf.truncate(have + n);
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
                if f.header.segment_id != seg.id {
                    break format!("frame belongs to segment {}", f.header.segment_id);
                }
                if f.header.commit_start == pos && pos % block == 0 {
                    commit = pos;
                } else if f.header.commit_start != commit {
                    break format!("frame says its commit starts at {}, expected {commit}", f.header.commit_start);
                }
                if f.header.lsn != next_lsn {
                    break format!("frame has lsn {}, expected {next_lsn}", f.header.lsn);
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
                visit(&f, pos)?;
                pos += f.len as u64;
            }
        }
    };
    let _ = reader.close().await;
    let valid_end = pos;
    // The log stops at `pos`. All zeros after it: a clean end. An intact
    // later commit: acknowledged data was damaged, corruption. Otherwise the
    // last commit was torn.
    let (later, nonzero) = scan_after(path, seg.id, pos)?;
    if later.is_none() && !nonzero {
        if !newest && policy == CorruptionPolicy::Refuse {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: pos,
                reason: "segment ends without a seal frame but newer segments follow it".into(),
            });
        }
        return Ok(SegmentReplay { header, valid_end, last_lsn, end: SegmentEnd::Clean, bytes_read });
    }
    let corrupt = !newest || later.is_some();
    if corrupt && policy == CorruptionPolicy::Refuse {
        let why = match later {
            Some(at) => format!("{reason}; an intact commit follows at offset {at}"),
            None => format!("{reason}; segment is not the newest and was not sealed"),
        };
        return Err(Error::Corrupt { path: path.clone(), offset: pos, reason: why });
    }
    Ok(SegmentReplay { header, valid_end, last_lsn, end: SegmentEnd::Torn { offset: pos, reason }, bytes_read })
}

async fn read_full(reader: &mut glommio::io::DmaStreamReader, out: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < out.len() {
        let got = reader.read(&mut out[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Looks past the end of the log at `from` for an intact frame of this
/// segment that starts a later commit, and for any non-zero byte. Only an
/// unsealed segment (after a crash) pays for this.
pub fn scan_after(path: &Path, segment_id: u64, from: u64) -> Result<(Option<u64>, bool)> {
    use std::io::{Read, Seek};
    // Only the part after the log's end (usually one torn commit) is read.
    let mut rest = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(std::io::SeekFrom::Start(from)).and_then(|_| f.read_to_end(&mut rest)))
        .map_err(Error::io("reading WAL segment", path, from))?;
    let nonzero = rest.iter().any(|b| *b != 0);
    let first = from.next_multiple_of(format::FRAME_ALIGN as u64) + format::FRAME_ALIGN as u64;
    let mut at = (first - from) as usize;
    while at + format::FRAME_HEADER_BYTES <= rest.len() {
        if let Ok(f) = format::decode_frame(&rest[at..]) {
            let offset = from + at as u64;
            if f.header.segment_id == segment_id && f.header.commit_start > from && f.header.commit_start == offset {
                return Ok((Some(offset), nonzero));
            }
        }
        at += format::FRAME_ALIGN;
    }
    Ok((None, nonzero))
}
