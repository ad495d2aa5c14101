//! The storage seam: the only code that touches the WAL volume's files.
//!
//! Everything the WAL, its free files and the data directory's layout do
//! to files goes through a [`Storage`]: open, aligned `write_at`,
//! `read_at`, `fdatasync`, rename (with and without replace), `sync_dir`,
//! remove, list, size and set_len. Two implementations:
//! - [`real`]: the files on disk. The `uring` engine writes large commits
//!   and reads through glommio's DMA files (io_uring); the `sync` engine
//!   uses plain `pwrite`/`pread`/`fdatasync` on O_DIRECT descriptors.
//!   `auto` is `uring` unless io_uring is refused. Either way small
//!   commits are two syscalls on the shard thread (see `wal/mod.rs`).
//! - [`sim`]: in-memory files and directories for tests, each with a
//!   durable and a volatile state. [`sim::SimStorage::crash`] keeps only
//!   what was synced, can tear the last unsynced write at sector
//!   granularity, and the storage can flip bits in synced sectors and fail
//!   any operation with EIO or ENOSPC on a seeded schedule.
//! - [`sim_object`]: the cold tier's object store as the simulated machine
//!   reaches it: object_store's in-memory store behind a client that
//!   shares the simulated storage's power and faults (a cut loses uploads
//!   in flight; a put can land and lose its answer).
//!
//! Blocking calls: the metadata operations (`rename`, `list`, `remove`,
//! `set_len`, small reads) are synchronous and run on the calling thread;
//! on a shard that is its executor (see docs/architecture.md, "Which calls
//! block"). Data writes, reads and syncs are futures.

#[cfg(feature = "fault-injection")]
pub mod faulty;
pub mod real;
pub mod sim;
pub mod sim_object;

use std::any::Any;
use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::LocalBoxFuture;

pub use real::{IoEngine, RealStorage};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    Write,
    /// Read and write, created empty (an existing file is truncated).
    Create,
}

impl OpenMode {
    pub fn writes(self) -> bool {
        self != OpenMode::Read
    }

    /// Created empty, an existing file truncated.
    pub fn creates(self) -> bool {
        self == OpenMode::Create
    }
}

/// Whether a write or sync should run on the calling thread (lowest
/// latency for small commits) or be queued (io_uring: the shard serves
/// other work meanwhile). Engines that have only one way ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    Inline,
    Queued,
}

/// A buffer for [`File::write_at`]: aligned for O_DIRECT.
pub enum IoBuf {
    Dma(glommio::io::DmaBuffer),
    Heap(aligned_vec::AVec<u8, aligned_vec::RuntimeAlign>),
}

impl IoBuf {
    /// `len` zero bytes aligned to `align`.
    pub fn heap(align: usize, len: usize) -> Self {
        let mut v = aligned_vec::AVec::with_capacity(align, len);
        // A copy from calloc'd zeros: fast in any build, unlike a fill loop.
        v.extend_from_slice(&vec![0u8; len]);
        IoBuf::Heap(v)
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes(),
            IoBuf::Heap(b) => b.as_slice(),
        }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes_mut(),
            IoBuf::Heap(b) => b.as_mut_slice(),
        }
    }
}

/// One part of a vectored write ([`File::write_vectored_at`]).
pub enum IoChunk {
    Buf(IoBuf),
    /// Memory shared with others (a record batch body the engine keeps),
    /// aligned like an [`IoBuf`] in address and length.
    Shared(bytes::Bytes),
}

impl IoChunk {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IoChunk::Buf(b) => b.as_bytes(),
            IoChunk::Shared(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open file. Not `Send`: it lives on the shard that opened it.
pub trait File {
    /// The alignment O_DIRECT asks of offsets, lengths and buffers.
    fn alignment(&self) -> u64;
    /// A buffer of `len` bytes fit for [`File::write_at`] (its content is
    /// unspecified: fill all of it).
    fn alloc(&self, len: usize) -> IoBuf;
    /// Writes `buf` at `pos` (aligned); returns the bytes written.
    fn write_at(&self, buf: IoBuf, pos: u64, how: Submit) -> LocalBoxFuture<'_, io::Result<usize>>;
    /// Writes `chunks` back to back from `pos` (each aligned in address and
    /// length); returns the bytes written. By default the chunks are copied
    /// into one buffer for [`File::write_at`]; the real files write them as
    /// they are (`pwritev`).
    fn write_vectored_at(&self, chunks: Vec<IoChunk>, pos: u64, how: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        let mut buf = self.alloc(chunks.iter().map(IoChunk::len).sum());
        let mut at = 0;
        for c in &chunks {
            buf.as_bytes_mut()[at..at + c.len()].copy_from_slice(c.as_bytes());
            at += c.len();
        }
        self.write_at(buf, pos, how)
    }
    /// Up to `len` bytes from `pos` (fewer at the end of the file).
    fn read_at(&self, pos: u64, len: usize) -> LocalBoxFuture<'_, io::Result<Vec<u8>>>;
    /// Makes the data written so far and the file's length durable.
    fn fdatasync(&self, how: Submit) -> LocalBoxFuture<'_, io::Result<()>>;
    /// Whether an `fdatasync` submitted `how` blocks the calling thread
    /// until it is done (a plain syscall), so that nothing can be written
    /// while it runs.
    fn sync_blocks(&self, how: Submit) -> bool {
        how == Submit::Inline
    }
    fn size(&self) -> LocalBoxFuture<'_, io::Result<u64>>;
    /// Cuts or extends the file to `len` (not durable until `fdatasync`).
    fn truncate(&self, len: u64) -> LocalBoxFuture<'_, io::Result<()>>;
    fn close(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<()>>;
}

/// Space on the volume holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub available: u64,
}

/// A file system. `Send + Sync`: one is shared by every shard.
pub trait Storage: Send + Sync + Debug {
    /// The engine's name, as logged and exported (`uring`, `sync`, `sim`).
    fn engine_name(&self) -> &'static str;
    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> LocalBoxFuture<'a, io::Result<Rc<dyn File>>>;
    /// Makes the creates, renames and removals in `dir` durable.
    fn sync_dir<'a>(&'a self, dir: &'a Path) -> LocalBoxFuture<'a, io::Result<()>>;
    /// Creates `dir` and its missing parents (durable once each parent's
    /// directory is synced).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names in `dir`; `NotFound` if it does not exist.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Renames, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames, failing with `AlreadyExists` if `to` exists.
    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Cuts or extends the file at `path` (not durable until synced).
    fn set_len(&self, path: &Path, len: u64) -> io::Result<()>;
    /// A small file's whole content, through the page cache.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes from the start of a file, through the page cache.
    fn read_prefix(&self, path: &Path, len: usize) -> io::Result<Vec<u8>>;
    /// [`Storage::sync_dir`] for a thread without an executor (startup).
    fn sync_dir_blocking(&self, dir: &Path) -> io::Result<()>;
    /// Creates or replaces the file at `path` with `bytes` and syncs its
    /// data (not its directory entry).
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// An exclusive lock on the file `path` (created if missing), held
    /// until the returned guard is dropped; `WouldBlock` if another
    /// process holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Whether giving a file its length allocates it (tmpfs, the
    /// simulator): preallocation then needs no zeros written.
    fn sizing_allocates(&self, dir: &Path) -> bool;
    fn space(&self, path: &Path) -> Option<Space>;
}

/// The storage every shard shares.
pub type StorageRef = Arc<dyn Storage>;

/// The names in `dir`, none if it does not exist.
pub fn list_or_empty(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<String>> {
    match storage.list(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        r => r,
    }
}

/// Creates `dir` and its missing parents, and syncs the directory above
/// each one it created, so that none of them can vanish with what is later
/// made durable inside (a synced file in a directory whose own entry was
/// never synced is lost with it). Blocking: for startup.
pub fn create_dir_durably(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let mut created = Vec::new();
    for a in dir.ancestors() {
        match storage.is_dir(a) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => created.push(a),
            Err(e) => return Err(e),
        }
    }
    if created.is_empty() {
        return Ok(());
    }
    storage.create_dir_all(dir)?;
    for made in created {
        if let Some(parent) = made.parent() {
            // IMPORTANT: the new directory's entry lives in its parent.
            storage.sync_dir_blocking(parent)?;
        }
    }
    Ok(())
}

/// Reads a file sequentially from a starting offset.
pub struct SeqReader {
    file: Rc<dyn File>,
    pos: u64,
}

impl SeqReader {
    pub fn new(file: Rc<dyn File>, start: u64) -> Self {
        Self { file, pos: start }
    }

    /// Appends up to `len` bytes from the current offset to `out` (fewer
    /// only at the end of the file); returns how many.
    pub async fn append_to(&mut self, out: &mut Vec<u8>, len: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < len {
            let bytes = self.file.read_at(self.pos, len - n).await?;
            if bytes.is_empty() {
                break;
            }
            out.extend_from_slice(&bytes);
            n += bytes.len();
            self.pos += bytes.len() as u64;
        }
        Ok(n)
    }

    pub async fn close(self) -> io::Result<()> {
        self.file.close().await
    }
}
