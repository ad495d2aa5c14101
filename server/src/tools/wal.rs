//! `longbow wal verify` and `longbow wal dump`: a WAL read offline with std
//! file I/O, checked as startup replay checks it (`engine/src/wal/replay.rs`,
//! rules in `docs/wal-format.md`).
//!
//! Replay reads segments through glommio, so its walk cannot run here; the
//! walk in [`walk_segment`] repeats it step for step on a segment read
//! whole (frames decoded by the engine's [`format::decode_frame`], the same
//! checks of segment id, `commit_start`, LSN and commit padding, in the same
//! order), and the verdict where the log stops before a seal comes from
//! replay's own [`replay::scan_after`]. What replay does before the walk is
//! repeated too: `.<id>.wal.tmp` files and segments of another generation
//! than `LAYOUT`'s are skipped (a start deletes them), a missing or damaged
//! header is damage. Payloads are decoded as replay decodes them
//! ([`ipc::decode_payload`], producers' state as JSON), but all of them:
//! replay skips frames its snapshots cover, so damage there that the
//! checksum missed would only be found here.
//!
//! Segment recycling (planned) reuses old files: bytes of an older
//! segment's frames after the log's end are then stale, not damage, and are
//! reported as "stale (recycled)".
//!
//! Each segment is read into memory whole (at most `LONGBOW_MAX_WAL_SIZE`
//! plus one commit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use longbow_engine::dataset::ProducerSeqs;
use longbow_engine::io::RealStorage;
use longbow_engine::layout;
use longbow_engine::wal::format::{self, DecodeError, FrameKind, FrameRef, SegmentHeader};
use longbow_engine::wal::ipc::{self, Decoded};
use longbow_engine::wal::replay::{self, SegmentFile};
use longbow_engine::{Lsn, SegmentId, ShardId};

/// The files as they are, read with plain syscalls (no executor here).
const FS: RealStorage = RealStorage::SYNC;
use serde::Serialize;

use super::{EXIT_DAMAGE, EXIT_OK};

/// Which frames `dump` prints (segments and their ends are always printed).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub dataset: Option<String>,
    pub from_lsn: Option<Lsn>,
}

impl Filter {
    fn keeps(&self, f: &Frame) -> bool {
        self.dataset.as_ref().is_none_or(|d| *d == f.dataset) && self.from_lsn.is_none_or(|n| f.lsn >= n)
    }
}

/// One IPC message of a data frame's payload.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Schema { fields: Vec<String> },
    RecordBatch { rows: usize },
}

/// A frame that passed the checks of the walk.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub file: PathBuf,
    pub segment: SegmentId,
    pub offset: u64,
    /// Offset of the commit holding the frame; equal to `offset` for the
    /// first frame of a commit.
    pub commit_start: u64,
    pub lsn: Lsn,
    pub kind: &'static str,
    pub version: u8,
    /// Empty for a seal frame.
    pub dataset: String,
    pub payload_bytes: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// The idempotent producer of the batch (frame version 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// A producers' state frame: each producer's newest stored sequence
    /// number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producers: Option<BTreeMap<String, Option<u64>>>,
}

/// How a segment's log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// A seal frame: the segment is complete.
    Sealed,
    /// Zeros (or nothing) after the last good commit.
    Clean,
    /// The newest segment's last commit was cut short: never acknowledged,
    /// a start drops it.
    Torn,
    /// Only frames of an older segment (a recycled file) after the last
    /// good commit: not damage.
    Stale,
    /// Damage to acknowledged data, or a segment that cannot be read as one.
    Damage,
}

impl EndState {
    fn text(self) -> &'static str {
        match self {
            Self::Sealed => "sealed",
            Self::Clean => "clean end",
            Self::Torn => "torn tail",
            Self::Stale => "stale (recycled)",
            Self::Damage => "damage",
        }
    }
}

/// What the walk reports, in order.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    /// A shard directory is about to be read.
    Shard {
        dir: PathBuf,
        shard: Option<usize>,
        generation: Option<u64>,
    },
    /// A file a start deletes before replay, so not read.
    Skipped {
        file: PathBuf,
        reason: String,
    },
    Segment {
        file: PathBuf,
        segment: SegmentId,
        shard: ShardId,
        generation: u64,
        first_lsn: Lsn,
        block_bytes: u32,
        file_bytes: u64,
    },
    Frame(Frame),
    /// Where a segment's log stops.
    End {
        file: PathBuf,
        segment: SegmentId,
        state: EndState,
        offset: u64,
        last_lsn: Option<Lsn>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Damage outside a segment's end: its header, a frame's contents, the
    /// layout.
    Damage {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A shard directory was read.
    Summary {
        dir: PathBuf,
        shard: Option<usize>,
        segments: usize,
        frames: u64,
        first_lsn: Option<Lsn>,
        last_lsn: Option<Lsn>,
        end: Option<EndState>,
    },
}

#[derive(Debug, Default)]
struct Tally {
    damage: usize,
    torn: usize,
    stale: usize,
}

impl Tally {
    fn count(&mut self, e: &Event) {
        match e {
            Event::Damage { .. } | Event::End { state: EndState::Damage, .. } => self.damage += 1,
            Event::End { state: EndState::Torn, .. } => self.torn += 1,
            Event::End { state: EndState::Stale, .. } => self.stale += 1,
            _ => {}
        }
    }

    fn exit_code(&self) -> u8 {
        if self.damage > 0 {
            EXIT_DAMAGE
        } else {
            EXIT_OK
        }
    }
}

/// `longbow wal verify DIR`.
pub fn verify(dir: &Path, json: bool, out: &mut dyn Write) -> io::Result<u8> {
    let tally = walk(dir, &mut |e| match e {
        Event::Segment { .. } | Event::Frame(_) | Event::Shard { .. } => Ok(()),
        Event::End { state: EndState::Sealed | EndState::Clean, note: None, .. } => Ok(()),
        e if json => write_json(out, e),
        Event::End { file, state: EndState::Sealed | EndState::Clean, offset, note: Some(note), .. } => {
            writeln!(out, "note: {} offset {offset}: {note}", file.display())
        }
        e => write_text(out, e, &mut None),
    })?;
    let (verdict, text) = if tally.damage > 0 {
        (
            "damage",
            format!(
                "damage: {} problem(s); a start refuses (--on-corruption truncate keeps what precedes the damage \
                 and drops the rest of that segment); exit {EXIT_DAMAGE}",
                tally.damage
            ),
        )
    } else if tally.torn > 0 {
        (
            "torn_tail",
            format!(
                "torn tail only: the last commit of {} shard(s) was cut short before it was acknowledged; a start \
                 drops it and goes on; exit {EXIT_OK}",
                tally.torn
            ),
        )
    } else {
        ("clean", format!("clean: every frame checksum and the LSN chain check out; exit {EXIT_OK}"))
    };
    let code = tally.exit_code();
    if json {
        let v = serde_json::json!({"type": "verdict", "verdict": verdict, "damage": tally.damage,
            "torn_tails": tally.torn, "stale": tally.stale, "exit": code});
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    Ok(code)
}

/// `longbow wal dump DIR`.
pub fn dump(dir: &Path, filter: &Filter, json: bool, out: &mut dyn Write) -> io::Result<u8> {
    // The commit whose line was printed last: frames filtered out print none.
    let mut commit = None;
    let tally = walk(dir, &mut |e| match e {
        Event::Frame(f) if !filter.keeps(f) => Ok(()),
        e if json => write_json(out, e),
        e => write_text(out, e, &mut commit),
    })?;
    Ok(tally.exit_code())
}

fn write_json(out: &mut dyn Write, e: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut *out, e).map_err(io::Error::other)?;
    writeln!(out)
}

fn write_text(out: &mut dyn Write, e: &Event, commit: &mut Option<(SegmentId, u64)>) -> io::Result<()> {
    let lsn = |l: &Option<Lsn>| l.map_or("none".to_owned(), |l| l.to_string());
    match e {
        Event::Shard { dir, shard, generation } => {
            let shard = shard.map_or(String::new(), |s| format!(" {s}"));
            let generation = generation.map_or(String::new(), |g| format!(" (layout generation {g})"));
            writeln!(out, "shard{shard}: {}{generation}", dir.display())
        }
        Event::Skipped { file, reason } => writeln!(out, "skipped {}: {reason}", file.display()),
        Event::Segment { file, segment, shard, generation, first_lsn, block_bytes, file_bytes } => writeln!(
            out,
            "segment {}: id {segment}, shard {shard}, generation {generation}, first lsn {first_lsn}, \
             block {block_bytes} bytes, {file_bytes} bytes",
            file.display()
        ),
        Event::Frame(f) => {
            if *commit != Some((f.segment, f.commit_start)) {
                *commit = Some((f.segment, f.commit_start));
                writeln!(out, "  commit at offset {}", f.commit_start)?;
            }
            writeln!(out, "    {}", frame_text(f))
        }
        Event::End { file, state, offset, last_lsn, reason, note, .. } => {
            let reason = reason.as_ref().map_or(String::new(), |r| format!(": {r}"));
            let note = note.as_ref().map_or(String::new(), |n| format!("; {n}"));
            match state {
                EndState::Sealed | EndState::Clean => {
                    writeln!(out, "  end at offset {offset}: {}, last lsn {}{note}", state.text(), lsn(last_lsn))
                }
                _ => writeln!(
                    out,
                    "{}: {} offset {offset}{reason}{note} (last good lsn {})",
                    state.text(),
                    file.display(),
                    lsn(last_lsn)
                ),
            }
        }
        Event::Damage { file, offset, reason } => writeln!(out, "damage: {} offset {offset}: {reason}", file.display()),
        Event::Summary { dir, shard, segments, frames, first_lsn, last_lsn, end } => {
            let shard = shard.map_or(String::new(), |s| format!(" {s}"));
            let end = end.map_or("no segments", |e| e.text());
            writeln!(
                out,
                "shard{shard} ({}): {segments} segment(s), {frames} frame(s), lsn {}..={}, newest segment: {end}",
                dir.display(),
                lsn(first_lsn),
                lsn(last_lsn)
            )
        }
    }
}

fn frame_text(f: &Frame) -> String {
    let mut s = format!("lsn {} at offset {}: {} v{}", f.lsn, f.offset, f.kind, f.version);
    if !f.dataset.is_empty() {
        s += &format!(" dataset {:?}", f.dataset);
    }
    if !matches!(f.kind, "seal" | "drop" | "forget") {
        s += &format!(", payload {} bytes", f.payload_bytes);
    }
    let mut parts: Vec<String> = f
        .messages
        .iter()
        .map(|m| match m {
            Message::Schema { fields } => format!("schema [{}]", fields.join(", ")),
            Message::RecordBatch { rows } => format!("record batch {rows} rows"),
        })
        .collect();
    if let (Some(p), Some(seq)) = (&f.producer, f.seq) {
        parts.push(format!("producer {p:?} seq {seq}"));
    }
    if let Some(ps) = &f.producers {
        parts.extend(ps.iter().map(|(p, seq)| match seq {
            Some(seq) => format!("producer {p:?} newest seq {seq}"),
            None => format!("producer {p:?} no seq"),
        }));
    }
    if !parts.is_empty() {
        s += ": ";
        s += &parts.join(", ");
    }
    s
}

fn io_context<'a>(op: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

fn engine_io(e: longbow_engine::Error) -> io::Error {
    let kind = match &e {
        longbow_engine::Error::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

fn shard_index(dir: &Path) -> Option<usize> {
    dir.file_name()?.to_str()?.strip_prefix("shard-")?.parse().ok()
}

/// Walks `dir`: a data directory (`LAYOUT`, `shard-<k>/`) or one shard
/// directory. I/O errors end the walk; damage is reported to `sink`.
fn walk(dir: &Path, sink: &mut dyn FnMut(&Event) -> io::Result<()>) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let mut emit = |e: Event| -> io::Result<()> {
        tally.count(&e);
        sink(&e)
    };
    let meta = std::fs::metadata(dir).map_err(io_context("reading", dir))?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", dir.display())));
    }
    let shards = layout::shard_dirs(&FS, dir).map_err(engine_io)?;
    let is_data_dir = !shards.is_empty() || dir.join("LAYOUT").exists();
    let (layout_dir, dirs) = if is_data_dir {
        (Some(dir), shards.into_iter().map(|k| (Some(k), layout::shard_dir(dir, k))).collect::<Vec<_>>())
    } else {
        // A shard directory: the layout is its parent's, if it is there.
        let parent = dir.parent().filter(|p| p.join("LAYOUT").exists());
        (parent, vec![(shard_index(dir), dir.to_owned())])
    };
    // As `layout::read` at start: no LAYOUT beside segments is refused.
    let generation = match layout_dir.map(|d| layout::read(&FS, d)) {
        Some(Ok(l)) => l.map(|l| l.generation),
        Some(Err(e)) => {
            let file = layout_dir.unwrap_or(dir).join("LAYOUT");
            emit(Event::Damage { file, offset: 0, reason: e.to_string() })?;
            None
        }
        None => None,
    };
    for (shard, shard_dir) in dirs {
        walk_shard(&shard_dir, shard, generation, &mut emit)?;
    }
    Ok(tally)
}

/// The header of a segment file, or why it has none.
fn read_header(path: &Path) -> io::Result<Result<SegmentHeader, String>> {
    let mut buf = Vec::with_capacity(format::SEGMENT_HEADER_BYTES);
    std::fs::File::open(path)
        .and_then(|f| f.take(format::SEGMENT_HEADER_BYTES as u64).read_to_end(&mut buf))
        .map_err(io_context("reading segment header of", path))?;
    Ok(SegmentHeader::decode(&buf).map_err(|e| format!("segment header is missing or damaged: {e}")))
}

/// Walks one shard directory's segments oldest first, the LSN chain running
/// across them.
fn walk_shard(
    dir: &Path,
    shard: Option<usize>,
    generation: Option<u64>,
    emit: &mut dyn FnMut(Event) -> io::Result<()>,
) -> io::Result<()> {
    emit(Event::Shard { dir: dir.to_owned(), shard, generation })?;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_context("listing", dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names.iter().filter_map(|n| n.to_str()) {
        if longbow_engine::wal::is_segment_tmp_name(name) {
            let reason = "a segment caught during its creation (it holds no records); a start deletes it".into();
            emit(Event::Skipped { file: dir.join(name), reason })?;
        }
    }
    // As `layout::clean` at start: other generations are deleted before
    // replay, so the newest segment is the newest of the rest.
    let mut segments: Vec<(SegmentFile, Result<SegmentHeader, String>)> = Vec::new();
    for seg in replay::list_segments(&FS, dir).map_err(engine_io)? {
        let header = read_header(&seg.path)?;
        if let (Ok(h), Some(g)) = (&header, generation) {
            if h.generation != g {
                let reason = format!(
                    "generation {}, not the layout's {g}: left by an interrupted shard-count change; a start deletes it",
                    h.generation
                );
                emit(Event::Skipped { file: seg.path.clone(), reason })?;
                continue;
            }
        }
        segments.push((seg, header));
    }

    let mut schemas: HashMap<String, SchemaRef> = HashMap::new();
    let (mut frames, mut first_lsn, mut last_lsn, mut end) = (0u64, None, None::<Lsn>, None);
    // The last LSN of the chain the next segment must go on from: none
    // after damage, when the next segment is checked from its own header's
    // first LSN (replay would have stopped).
    let mut chain: Option<Lsn> = None;
    for (i, (seg, header)) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let header = match header {
            Ok(h) if h.segment_id == seg.id => *h,
            Ok(h) => {
                let reason = format!("header names segment {} but the file name says {}", h.segment_id, seg.id);
                emit(Event::Damage { file: seg.path.clone(), offset: 0, reason })?;
                (chain, end) = (None, Some(EndState::Damage));
                continue;
            }
            Err(reason) => {
                emit(Event::Damage { file: seg.path.clone(), offset: 0, reason: reason.clone() })?;
                (chain, end) = (None, Some(EndState::Damage));
                continue;
            }
        };
        let bytes = std::fs::read(&seg.path).map_err(io_context("reading", &seg.path))?;
        emit(Event::Segment {
            file: seg.path.clone(),
            segment: seg.id,
            shard: header.shard,
            generation: header.generation,
            first_lsn: header.first_lsn,
            block_bytes: header.block_bytes,
            file_bytes: bytes.len() as u64,
        })?;
        let walked = walk_segment(seg, &bytes, &header, chain.map(Lsn::next), newest, |f, offset| {
            let (frame, problem) = describe(seg, f, offset, &mut schemas);
            frames += 1;
            first_lsn = first_lsn.or(Some(frame.lsn));
            emit(Event::Frame(frame))?;
            match problem {
                Some(reason) => emit(Event::Damage { file: seg.path.clone(), offset, reason }),
                None => Ok(()),
            }
        })?;
        chain = walked.last_lsn.or(chain);
        last_lsn = walked.last_lsn.or(last_lsn);
        end = Some(walked.state);
        emit(Event::End {
            file: seg.path.clone(),
            segment: seg.id,
            state: walked.state,
            offset: walked.offset,
            last_lsn: chain,
            reason: walked.reason,
            note: walked.note,
        })?;
        if walked.state == EndState::Damage {
            chain = None;
        }
    }
    emit(Event::Summary { dir: dir.to_owned(), shard, segments: segments.len(), frames, first_lsn, last_lsn, end })
}

/// Where and how a segment's log stopped.
#[derive(Debug)]
struct Walked {
    state: EndState,
    /// Just past the last good frame (or where the damage is).
    offset: u64,
    last_lsn: Option<Lsn>,
    reason: Option<String>,
    note: Option<String>,
}

fn tail(bytes: &[u8], pos: u64) -> &[u8] {
    usize::try_from(pos).ok().and_then(|p| bytes.get(p..)).unwrap_or(&[])
}

/// Replays one segment held in `bytes` as `replay::replay_segment` does,
/// calling `visit` for every frame in order (the seal too). `expected_lsn`
/// is the LSN the first frame must carry (`None`: the header's); only the
/// `newest` segment may end torn.
fn walk_segment(
    seg: &SegmentFile,
    bytes: &[u8],
    header: &SegmentHeader,
    expected_lsn: Option<Lsn>,
    newest: bool,
    mut visit: impl FnMut(&FrameRef<'_>, u64) -> io::Result<()>,
) -> io::Result<Walked> {
    let block = u64::from(header.block_bytes);
    let mut pos = block;
    let mut commit = block;
    let mut next_lsn = expected_lsn.unwrap_or(header.first_lsn);
    let mut last_lsn = None;
    let reason: String = loop {
        let rest = tail(bytes, pos);
        let decoded = match format::decode_frame(rest) {
            // Commits are zero-padded to the block: all of it is checked.
            Err(DecodeError::Zero) if pos % block != 0 => {
                let pad = (pos.next_multiple_of(block) - pos) as usize;
                match rest.get(..pad) {
                    Some(p) if p.iter().any(|b| *b != 0) => {
                        let at = pos + p.iter().position(|b| *b != 0).unwrap_or(0) as u64;
                        break format!("non-zero byte at offset {at} in the padding after a commit");
                    }
                    // Replay does not check a padding the file ends inside.
                    _ => Err(DecodeError::Zero),
                }
            }
            d => d,
        };
        match decoded {
            Err(DecodeError::Zero) if pos % block != 0 => {
                pos = pos.next_multiple_of(block);
                continue;
            }
            Err(e) => break e.to_string(),
            Ok(f) => {
                if let Err(reason) = replay::check_chain(&f.header, seg.id, pos, block, &mut commit, next_lsn) {
                    break reason;
                }
                next_lsn = next_lsn.next();
                last_lsn = Some(f.header.lsn);
                visit(&f, pos)?;
                if f.header.kind == FrameKind::Seal {
                    let end = pos + f.len as u64;
                    return Ok(Walked {
                        state: EndState::Sealed,
                        offset: end,
                        last_lsn,
                        reason: None,
                        note: after_seal(bytes, seg.id, end),
                    });
                }
                pos += f.len as u64;
            }
        }
    };
    // The log stops at `pos`: what follows, judged as replay judges it.
    let (later, torn, overlapped) = judge_after(bytes, seg.id, pos, commit, next_lsn, block);
    let walked = |state, reason: Option<String>, note| Ok(Walked { state, offset: pos, last_lsn, reason, note });
    if let Some(at) = later {
        return walked(EndState::Damage, Some(format!("{reason}; an intact commit follows at offset {at}")), None);
    }
    if !newest {
        let reason = if torn {
            format!("{reason}; segment is not the newest and was not sealed")
        } else {
            "segment ends without a seal frame but newer segments follow it".to_owned()
        };
        return walked(EndState::Damage, Some(reason), None);
    }
    let stale = stale_frames(bytes, seg.id, pos);
    if let Some(at) = overlapped {
        let note = format!("a commit written while this one synced follows at offset {at} (never acknowledged)");
        return walked(EndState::Torn, Some(reason), Some(note));
    }
    match (torn, stale) {
        (false, Some(stale)) => {
            walked(EndState::Stale, Some(reason), Some(format!("{}; not damage", stale.describe())))
        }
        (false, None) => walked(EndState::Clean, None, None),
        (true, stale) => walked(EndState::Torn, Some(reason), stale.map(|s| s.describe())),
    }
}

/// What follows a log's end at `from` in a segment held in memory, each
/// frame header there judged by replay's own
/// `replay::judge_frame_after_end`: an intact frame of this segment that
/// starts a later commit, and whether bytes of the commit being read (which
/// started at `commit`) are there (a frame header naming it, or anything
/// but zeros in the rest of the block), and a later commit written while
/// that one synced (`replay::overlapped_commit`).
fn judge_after(
    bytes: &[u8],
    segment_id: SegmentId,
    from: u64,
    commit: u64,
    next_lsn: Lsn,
    block: u64,
) -> (Option<u64>, bool, Option<u64>) {
    let len = bytes.len() as u64;
    let header = format::FRAME_HEADER_BYTES as u64;
    let mut torn = false;
    let mut overlapped = None;
    if from % block != 0 && from < len {
        let end = from.next_multiple_of(block).min(len);
        torn = bytes[from as usize..end as usize].iter().any(|b| *b != 0);
    }
    let mut at = from.next_multiple_of(format::FRAME_ALIGN as u64);
    while at + header <= len {
        let frame = &bytes[at as usize..];
        if let Some(p) = format::peek_frame_place(frame) {
            let (torn_here, later) = replay::judge_frame_after_end(&p, segment_id, at, from, commit, next_lsn, block);
            torn |= torn_here;
            if later {
                if let Ok(f) = format::decode_frame(frame) {
                    if replay::overlapped_commit(format::durable_through(&f), next_lsn, overlapped.is_some()) {
                        overlapped = Some(at);
                    } else {
                        return (Some(at), torn, overlapped);
                    }
                }
            }
        }
        at += format::FRAME_ALIGN as u64;
    }
    (None, torn, overlapped)
}

/// Intact frames of older segments found after a log's end.
struct StaleFrames {
    from: u64,
    frames: usize,
    segments: BTreeSet<SegmentId>,
}

impl StaleFrames {
    fn describe(&self) -> String {
        let ids: Vec<String> = self.segments.iter().map(|s| s.to_string()).collect();
        format!(
            "stale (recycled) bytes from offset {}: {} intact frame(s) of older segment(s) {}",
            self.from,
            self.frames,
            ids.join(", ")
        )
    }
}

/// Intact frames of an older segment id from `from` on (8-byte aligned),
/// as a recycled file holds after its log's end.
fn stale_frames(bytes: &[u8], segment_id: SegmentId, from: u64) -> Option<StaleFrames> {
    let align = format::FRAME_ALIGN as u64;
    let mut at = from.next_multiple_of(align);
    let mut found: Option<StaleFrames> = None;
    loop {
        let rest = tail(bytes, at);
        if rest.len() < format::FRAME_HEADER_BYTES {
            return found;
        }
        match format::decode_frame(rest) {
            Ok(f) if f.header.segment_id < segment_id => {
                let s = found.get_or_insert_with(|| StaleFrames { from: at, frames: 0, segments: BTreeSet::new() });
                s.frames += 1;
                s.segments.insert(f.header.segment_id);
                at += f.len as u64;
            }
            _ => at += align,
        }
    }
}

/// What lies after a seal (replay never reads it): a note when it is not
/// zeros.
fn after_seal(bytes: &[u8], segment_id: SegmentId, end: u64) -> Option<String> {
    let rest = tail(bytes, end);
    let nonzero = rest.iter().filter(|b| **b != 0).count();
    if nonzero == 0 {
        return None;
    }
    Some(match stale_frames(bytes, segment_id, end) {
        Some(stale) => format!("after the seal (never read): {}", stale.describe()),
        None => format!("{nonzero} non-zero byte(s) after the seal (never read; a failed write sealed over)"),
    })
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Data => "data",
        FrameKind::Seal => "seal",
        FrameKind::Drop => "drop",
        FrameKind::Producers => "producers",
        FrameKind::DurableMark => "durable mark",
        FrameKind::Forget => "forget",
    }
}

/// The frame as listed, and what replay would refuse in its contents.
/// `schemas` holds each dataset's schema so far in this shard's log.
fn describe(
    seg: &SegmentFile,
    f: &FrameRef<'_>,
    offset: u64,
    schemas: &mut HashMap<String, SchemaRef>,
) -> (Frame, Option<String>) {
    let mut problem = None;
    let dataset = match std::str::from_utf8(f.dataset) {
        Ok(d) => d.to_owned(),
        Err(_) => {
            problem = Some("dataset name is not UTF-8".to_owned());
            String::from_utf8_lossy(f.dataset).into_owned()
        }
    };
    let mut frame = Frame {
        file: seg.path.clone(),
        segment: seg.id,
        offset,
        commit_start: f.header.commit_start,
        lsn: f.header.lsn,
        kind: kind_name(f.header.kind),
        version: f.version,
        dataset,
        payload_bytes: f.payload.len(),
        messages: Vec::new(),
        producer: None,
        seq: None,
        producers: None,
    };
    match f.header.kind {
        FrameKind::Seal => {}
        FrameKind::DurableMark => {
            if format::durable_through(f).is_none() {
                problem = Some(format!("durable mark with a {}-byte payload", f.payload.len()));
            }
        }
        FrameKind::Drop | FrameKind::Forget => {
            // Earlier records are void; a later schema starts anew.
            schemas.remove(&frame.dataset);
        }
        FrameKind::Producers => match serde_json::from_slice::<BTreeMap<String, ProducerSeqs>>(f.payload) {
            Ok(state) => {
                frame.producers =
                    Some(state.into_iter().map(|(id, s)| (id, s.recent.back().map(|(seq, _)| *seq))).collect());
            }
            Err(e) => problem = problem.or(Some(format!("producers' state: {e}"))),
        },
        FrameKind::Data => {
            let buf = arrow::buffer::Buffer::from_slice_ref(f.payload);
            let mut decoded = Vec::new();
            let layout = f.payload_layout();
            let result = ipc::decode_payload(&buf, layout, schemas.get(&frame.dataset).cloned(), |m| decoded.push(m));
            for m in decoded {
                match m {
                    Decoded::Schema(s) => {
                        let fields = s.fields().iter().map(|f| f.name().clone()).collect();
                        schemas.insert(frame.dataset.clone(), s);
                        frame.messages.push(Message::Schema { fields });
                    }
                    Decoded::Batch(b) => frame.messages.push(Message::RecordBatch { rows: b.num_rows() }),
                    Decoded::Producer { id, seq } => (frame.producer, frame.seq) = (Some(id), Some(seq)),
                }
            }
            if let Err(e) = result {
                problem = problem.or(Some(format!("undecodable Arrow IPC payload: {e}")));
            }
        }
    }
    (frame, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::{encode_frame, FrameHeader};

    const BLOCK: usize = 512;

    /// A segment file of `id`: header block, then `commits`, each a list of
    /// (kind, lsn) frames with empty payloads, padded to the block.
    fn segment(dir: &Path, id: u64, first_lsn: u64, commits: &[&[(FrameKind, u64)]]) -> (SegmentFile, Vec<u8>) {
        segment_with(dir, id, first_lsn, commits, 0)
    }

    /// As [`segment`], the data frames' payloads `payload` bytes of 7s.
    fn segment_with(
        dir: &Path,
        id: u64,
        first_lsn: u64,
        commits: &[&[(FrameKind, u64)]],
        payload: usize,
    ) -> (SegmentFile, Vec<u8>) {
        let (id, first_lsn) = (SegmentId(id), Lsn(first_lsn));
        let h =
            SegmentHeader { block_bytes: BLOCK as u32, shard: ShardId(0), generation: 0, segment_id: id, first_lsn };
        let mut bytes = vec![0u8; BLOCK];
        bytes[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&h.encode());
        for commit in commits {
            let start = bytes.len() as u64;
            for (kind, lsn) in *commit {
                let dataset: &[u8] = if *kind == FrameKind::Seal { b"" } else { b"ds" };
                let body = if *kind == FrameKind::Data { vec![7u8; payload] } else { Vec::new() };
                let header = FrameHeader { kind: *kind, lsn: Lsn(*lsn), segment_id: id, commit_start: start };
                bytes.extend(encode_frame(header, dataset, &body));
            }
            bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
        }
        let path = dir.join(longbow_engine::wal::segment_file_name(id));
        std::fs::write(&path, &bytes).unwrap();
        (SegmentFile { id, path }, bytes)
    }

    fn walk_one(seg: &SegmentFile, bytes: &[u8], newest: bool) -> (Walked, Vec<u64>) {
        let header = SegmentHeader::decode(bytes).unwrap();
        let mut lsns = Vec::new();
        let w = walk_segment(seg, bytes, &header, None, newest, |f, _| {
            lsns.push(f.header.lsn.get());
            Ok(())
        })
        .unwrap();
        (w, lsns)
    }

    use FrameKind::{Data, Seal};

    #[test]
    fn sealed_clean_torn_and_damaged_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, bytes) = segment(dir.path(), 1, 1, &[&[(Data, 1), (Data, 2)], &[(Seal, 3)]]);
        let (w, lsns) = walk_one(&seg, &bytes, false);
        assert_eq!((w.state, lsns), (EndState::Sealed, vec![1, 2, 3]));

        let (seg, bytes) = segment(dir.path(), 2, 1, &[&[(Data, 1)], &[(Data, 2)]]);
        assert_eq!(walk_one(&seg, &bytes, true).0.state, EndState::Clean);
        let w = walk_one(&seg, &bytes, false).0;
        assert_eq!(w.state, EndState::Damage, "unsealed, not the newest: {w:?}");

        // The last commit garbled: torn in the newest segment.
        let mut torn = bytes.clone();
        torn[2 * BLOCK + 20] ^= 0xFF;
        std::fs::write(&seg.path, &torn).unwrap();
        let w = walk_one(&seg, &torn, true).0;
        assert_eq!((w.state, w.offset, w.last_lsn), (EndState::Torn, 2 * BLOCK as u64, Some(Lsn(1))), "{w:?}");

        // The first commit garbled with an intact one after it: damage.
        let mut bad = bytes.clone();
        bad[BLOCK + 20] ^= 0xFF;
        std::fs::write(&seg.path, &bad).unwrap();
        let w = walk_one(&seg, &bad, true).0;
        assert_eq!((w.state, w.offset), (EndState::Damage, BLOCK as u64), "{w:?}");
        assert!(w.reason.unwrap().contains("an intact commit follows at offset 1024"));
    }

    /// Appends to a segment's bytes (and file) a commit of a durable mark
    /// (LSN `lsn`, saying the log was durable through `durable`) and one
    /// data frame after it.
    fn push_marked_commit(seg: &SegmentFile, bytes: &mut Vec<u8>, lsn: u64, durable: u64) -> u64 {
        let start = bytes.len() as u64;
        let mark = FrameHeader { kind: FrameKind::DurableMark, lsn: Lsn(lsn), segment_id: seg.id, commit_start: start };
        bytes.extend(encode_frame(mark, b"", &format::durable_mark_payload(Lsn(durable))));
        let data = FrameHeader { kind: Data, lsn: Lsn(lsn + 1), segment_id: seg.id, commit_start: start };
        bytes.extend(encode_frame(data, b"ds", b""));
        bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
        std::fs::write(&seg.path, &*bytes).unwrap();
        start
    }

    #[test]
    fn a_torn_commit_and_the_one_written_while_it_synced_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, mut bytes) = segment(dir.path(), 1, 1, &[&[(Data, 1)], &[(Data, 2)]]);
        // Commit 3 (from LSN 3) was written while commit 2 synced.
        let third = push_marked_commit(&seg, &mut bytes, 3, 1);
        let (w, lsns) = walk_one(&seg, &bytes, true);
        assert_eq!((w.state, lsns), (EndState::Clean, vec![1, 2, 3, 4]), "a mark is a frame of the chain: {w:?}");
        // Commit 2 garbled: torn, and so is commit 3 (never acknowledged).
        let mut torn = bytes.clone();
        torn[2 * BLOCK + 20] ^= 0xFF;
        std::fs::write(&seg.path, &torn).unwrap();
        let w = walk_one(&seg, &torn, true).0;
        assert_eq!((w.state, w.offset, w.last_lsn), (EndState::Torn, 2 * BLOCK as u64, Some(Lsn(1))), "{w:?}");
        assert!(w.note.unwrap().contains(&format!("written while this one synced follows at offset {third}")));
        // A mark saying commit 2 was durable when commit 3 was written:
        // commit 2 was acknowledged, so its damage is damage.
        let (seg, mut bytes) = segment(dir.path(), 2, 1, &[&[(Data, 1)], &[(Data, 2)]]);
        push_marked_commit(&seg, &mut bytes, 3, 2);
        bytes[2 * BLOCK + 20] ^= 0xFF;
        std::fs::write(&seg.path, &bytes).unwrap();
        let w = walk_one(&seg, &bytes, true).0;
        assert_eq!((w.state, w.offset), (EndState::Damage, 2 * BLOCK as u64), "{w:?}");
    }

    #[test]
    fn older_frames_after_the_log_are_stale_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        // Segment 1, three commits; recycled as segment 5 holding one.
        let (_, old) = segment(dir.path(), 1, 1, &[&[(Data, 1)], &[(Data, 2)], &[(Data, 3)]]);
        let (seg, new) = segment(dir.path(), 5, 9, &[&[(Data, 9)]]);
        let mut recycled = old.clone();
        recycled[..new.len()].copy_from_slice(&new);
        std::fs::write(&seg.path, &recycled).unwrap();
        let (w, lsns) = walk_one(&seg, &recycled, true);
        assert_eq!((w.state, lsns), (EndState::Stale, vec![9]), "{w:?}");
        assert!(w.note.unwrap().contains("older segment(s) 1"));
        // A torn commit of its own written over them is still torn.
        let (_, two) = segment(dir.path(), 5, 9, &[&[(Data, 9)], &[(Data, 10)]]);
        recycled[..two.len()].copy_from_slice(&two);
        recycled[2 * BLOCK + 20] ^= 0xFF;
        std::fs::write(&seg.path, &recycled).unwrap();
        let w = walk_one(&seg, &recycled, true).0;
        assert_eq!(w.state, EndState::Torn, "{w:?}");

        // The new log ends inside an old commit: its bytes there are not a
        // frame, the next old commit is.
        let (_, old) = segment_with(dir.path(), 1, 1, &[&[(Data, 1)], &[(Data, 2)]], 3000);
        let (seg, new) = segment(dir.path(), 5, 9, &[&[(Data, 9)]]);
        let mut recycled = old.clone();
        recycled[..new.len()].copy_from_slice(&new);
        std::fs::write(&seg.path, &recycled).unwrap();
        let (w, lsns) = walk_one(&seg, &recycled, true);
        assert_eq!((w.state, w.offset, lsns), (EndState::Stale, 2 * BLOCK as u64, vec![9]), "{w:?}");
        // Not in a segment that is not the newest: unsealed, it is damage.
        assert_eq!(walk_one(&seg, &recycled, false).0.state, EndState::Damage);
        // After a seal nothing is read; stale bytes there are only noted.
        let (_, sealed) = segment(dir.path(), 5, 9, &[&[(Data, 9)], &[(Seal, 10)]]);
        recycled[..sealed.len()].copy_from_slice(&sealed);
        std::fs::write(&seg.path, &recycled).unwrap();
        let w = walk_one(&seg, &recycled, false).0;
        assert_eq!(w.state, EndState::Sealed, "{w:?}");
        assert!(w.note.unwrap().contains("stale (recycled)"));
    }

    #[test]
    fn frames_decode_producers_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let seg = SegmentFile { id: SegmentId(1), path: dir.path().join("x.wal") };
        let state = br#"{"p": {"recent": [[4, 10], [5, 11]]}}"#;
        let header =
            FrameHeader { kind: FrameKind::Producers, lsn: Lsn(12), segment_id: SegmentId(1), commit_start: 512 };
        let bytes = encode_frame(header, b"ds", state);
        let f = format::decode_frame(&bytes).unwrap();
        let (frame, problem) = describe(&seg, &f, 512, &mut HashMap::new());
        assert!(problem.is_none());
        assert_eq!(frame.producers.unwrap()["p"], Some(5));
        let header = FrameHeader { kind: FrameKind::Data, lsn: Lsn(13), segment_id: SegmentId(1), commit_start: 512 };
        let bytes = encode_frame(header, b"ds", b"garbage!");
        let (_, problem) = describe(&seg, &format::decode_frame(&bytes).unwrap(), 512, &mut HashMap::new());
        assert!(problem.unwrap().contains("undecodable Arrow IPC payload"));
    }
}
