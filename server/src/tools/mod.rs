//! The offline tools of the `longbow` binary, in the spirit of
//! `pg_waldump`, `kafka-dump-log` and `etcdutl`: they read a stopped
//! server's data and snapshot directories (or copies of them) with plain
//! std file I/O, change nothing, take no lock and need neither glommio nor
//! io_uring, so they run where the server cannot start.
//!
//! - `longbow wal verify DIR`: every frame checksum and the LSN chain, as
//!   startup replay checks them ([`wal`]).
//! - `longbow wal dump DIR [--dataset D] [--from-lsn N]`: segments and
//!   frames ([`wal`]).
//! - `longbow snapshot ls DIR`: what the snapshot manifests hold
//!   ([`snapshot`]).
//!
//! `main.rs` hands the arguments here before the server's own parser sees
//! them ([`dispatch`]), so the server's flags and `LONGBOW_*` variables are
//! untouched; these parsers read no environment.
//!
//! Exit status: [`EXIT_OK`] (clean, or only a torn tail: the state a crash
//! leaves), [`EXIT_DAMAGE`] (damage a start would refuse), [`EXIT_ERROR`]
//! (a directory or file that cannot be read), 2 (bad arguments, clap's).

pub mod snapshot;
pub mod wal;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Clean, or a torn tail only.
pub const EXIT_OK: u8 = 0;
/// Something could not be read (missing directory, permissions, EIO).
pub const EXIT_ERROR: u8 = 1;
/// Damage: a server start would refuse (or, told to, truncate) here.
pub const EXIT_DAMAGE: u8 = 3;

/// The first arguments that select a tool instead of the server.
pub const COMMANDS: [&str; 2] = ["wal", "snapshot"];

#[derive(Debug, Parser)]
#[command(
    name = "longbow",
    about = "Longbow's offline tools: read a stopped server's WAL and snapshots (or copies); nothing is changed",
    after_help = "Exit status: 0 clean (or only a torn tail, which a start drops), 3 damage, 1 unreadable, 2 usage.\n\
                  On a running server's directories the newest segment may look torn: its last commit is being written."
)]
struct Tools {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The write-ahead log: verify or dump the segments of a data directory.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Parquet snapshots: what their manifests hold.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Check every frame's checksum, the commits and the LSN chain across
    /// segments as startup replay does; tell a clean end, a torn tail (the
    /// newest segment's last, unacknowledged commit) and damage apart.
    /// Exit 0 when clean or torn tail only, 3 on damage.
    Verify {
        /// A data directory (with shard-N/ subdirectories) or one shard directory.
        dir: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List segments (header) and frames (LSN, dataset, kind, version,
    /// payload, IPC messages, producer and sequence number, commit). Exit
    /// status as verify's.
    Dump {
        /// A data directory (with shard-N/ subdirectories) or one shard directory.
        dir: PathBuf,
        /// Only frames of this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Only frames with this LSN or a later one.
        #[arg(long)]
        from_lsn: Option<u64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Datasets of a snapshot root (LONGBOW_SNAPSHOT_PATH): files, rows,
    /// bytes, covered LSN and producers, from the manifests. Exit 3 when a
    /// manifest is unreadable or lists a file that is missing.
    Ls {
        /// The snapshot root.
        dir: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the tool `args` (the whole command line, program name first) names
/// and returns its exit status; `None` when the first argument names no
/// tool (the server parses them then).
pub fn dispatch(args: &[OsString]) -> Option<u8> {
    let first = args.get(1)?.to_str()?;
    if !COMMANDS.contains(&first) {
        return None;
    }
    let tools = match Tools::try_parse_from(args) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.print();
            return Some(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match tools.command {
        Command::Wal(WalCommand::Verify { dir, json }) => wal::verify(&dir, json, &mut out),
        Command::Wal(WalCommand::Dump { dir, dataset, from_lsn, json }) => {
            let filter = wal::Filter { dataset, from_lsn: from_lsn.map(longbow_engine::Lsn) };
            wal::dump(&dir, &filter, json, &mut out)
        }
        Command::Snapshot(SnapshotCommand::Ls { dir, json }) => snapshot::ls(&dir, json, &mut out),
    };
    Some(match result.and_then(|code| out.flush().map(|()| code)) {
        Ok(code) => code,
        // `longbow wal dump DIR | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("longbow: {e}");
            EXIT_ERROR
        }
    })
}
