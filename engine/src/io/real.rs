//! The files on disk: glommio DMA files (io_uring) or plain syscalls on
//! O_DIRECT descriptors, chosen by [`IoEngine`].

use std::any::Any;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use glommio::io::{DmaFile, OpenOptions};

use super::{File, IoBuf, IoChunk, OpenMode, Space, Storage, Submit};

/// How data is read and written (`LONGBOW_IO_ENGINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// `uring` unless the kernel or a seccomp filter refuses io_uring.
    #[default]
    Auto,
    /// glommio's DMA files over io_uring.
    Uring,
    /// `pwrite`, `pread` and `fdatasync` on the calling thread.
    Sync,
}

impl std::str::FromStr for IoEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            "uring" => Ok(IoEngine::Uring),
            "sync" => Ok(IoEngine::Sync),
            _ => Err(format!("unknown I/O engine {s:?}: expected auto, uring or sync")),
        }
    }
}

/// Whether this process may set up an io_uring (a container's default
/// seccomp profile refuses `io_uring_setup` with EPERM; old kernels lack it).
pub fn uring_allowed() -> bool {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes only `params`; the returned
    // descriptor, if any, is closed at once.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned to us and nothing else owns it.
    unsafe { nix::libc::close(fd as i32) };
    true
}

/// The real file system, with the engine resolved.
#[derive(Debug, Clone, Copy)]
pub struct RealStorage {
    uring: bool,
}

impl RealStorage {
    /// Plain syscalls, usable from any thread.
    pub const SYNC: RealStorage = RealStorage { uring: false };

    /// Resolves `auto` by probing io_uring.
    pub fn new(engine: IoEngine) -> Self {
        let uring = match engine {
            IoEngine::Uring => true,
            IoEngine::Sync => false,
            IoEngine::Auto => uring_allowed(),
        };
        Self { uring }
    }
}

/// O_DIRECT alignment the sync engine uses: a multiple of every logical
/// block size devices report.
const SYNC_ALIGN: u64 = 4096;

fn std_open(path: &Path, mode: OpenMode) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(mode.writes())
        .create(mode.creates())
        .truncate(mode.creates())
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
}

impl Storage for RealStorage {
    fn engine_name(&self) -> &'static str {
        if self.uring {
            "uring"
        } else {
            "sync"
        }
    }

    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> LocalBoxFuture<'a, io::Result<Rc<dyn File>>> {
        async move {
            if !self.uring {
                let file = std_open(path, mode)?;
                return Ok(Rc::new(SyncFile { file }) as Rc<dyn File>);
            }
            let file = OpenOptions::new()
                .read(true)
                .write(mode.writes())
                .create(mode.creates())
                .truncate(mode.creates())
                .dma_open(path)
                .await
                .map_err(io::Error::from)?;
            Ok(Rc::new(UringFile { file }) as Rc<dyn File>)
        }
        .boxed_local()
    }

    fn sync_dir<'a>(&'a self, dir: &'a Path) -> LocalBoxFuture<'a, io::Result<()>> {
        async move {
            if !self.uring {
                return std::fs::File::open(dir)?.sync_all();
            }
            let d = glommio::io::Directory::open(dir).await.map_err(io::Error::from)?;
            d.sync().await.map_err(io::Error::from)?;
            d.close().await.map_err(io::Error::from)
        }
        .boxed_local()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(path)?.is_dir())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        std::fs::File::options().write(true).open(path)?.set_len(len)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_prefix(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::with_capacity(len);
        std::fs::File::open(path)?.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn sync_dir_blocking(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        use nix::fcntl::{Flock, FlockArg};
        let file = std::fs::File::options().create(true).truncate(false).write(true).open(path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Box::new(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(io::ErrorKind::WouldBlock.into()),
            Err((_, e)) => Err(e.into()),
        }
    }

    fn sizing_allocates(&self, dir: &Path) -> bool {
        nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    }

    fn space(&self, path: &Path) -> Option<Space> {
        let s = nix::sys::statvfs::statvfs(path).ok()?;
        let frag = s.fragment_size() as u64;
        Some(Space { total: s.blocks() as u64 * frag, available: s.blocks_available() as u64 * frag })
    }
}

/// `pwrite` until all of `bytes` is written; a zero-byte write is ENOSPC.
fn pwrite_all(fd: BorrowedFd<'_>, bytes: &[u8], at: u64) -> io::Result<usize> {
    let mut written = 0usize;
    while written < bytes.len() {
        match nix::sys::uio::pwrite(fd, &bytes[written..], (at + written as u64) as i64) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// Writes `chunks` back to back from `at` with `pwritev`, on the calling
/// thread; returns the bytes written (fewer only if the file system wrote
/// fewer: a full volume).
fn pwritev_all(fd: BorrowedFd<'_>, chunks: &[IoChunk], at: u64) -> io::Result<usize> {
    // Linux's IOV_MAX.
    const IOVECS_MAX: usize = 1024;
    let total: usize = chunks.iter().map(IoChunk::len).sum();
    let mut written = 0usize;
    // The first chunk not yet wholly written, and how much of it is.
    let (mut first, mut skip) = (0usize, 0usize);
    while written < total {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(IOVECS_MAX)
            .enumerate()
            .map(|(i, c)| std::io::IoSlice::new(if i == 0 { &c.as_bytes()[skip..] } else { c.as_bytes() }))
            .collect();
        match nix::sys::uio::pwritev(fd, &slices, (at + written as u64) as i64) {
            Ok(0) => return Ok(written),
            Ok(mut n) => {
                written += n;
                while n > 0 {
                    let left = chunks[first].len() - skip;
                    if n >= left {
                        n -= left;
                        first += 1;
                        skip = 0;
                    } else {
                        skip += n;
                        n = 0;
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

fn fdatasync_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fdatasync(fd).map_err(io::Error::from)
}

struct UringFile {
    file: DmaFile,
}

impl UringFile {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.file`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.file.as_raw_fd()) }
    }
}

impl File for UringFile {
    fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf::Dma(self.file.alloc_dma_buffer(len))
    }

    fn write_at(&self, buf: IoBuf, pos: u64, how: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        async move {
            if how == Submit::Inline {
                return pwrite_all(self.fd(), buf.as_bytes(), pos);
            }
            let dma = match buf {
                IoBuf::Dma(b) => b,
                IoBuf::Heap(h) => {
                    let mut b = self.file.alloc_dma_buffer(h.len());
                    b.as_bytes_mut().copy_from_slice(&h);
                    b
                }
            };
            self.file.write_at(dma, pos).await.map_err(io::Error::from)
        }
        .boxed_local()
    }

    fn write_vectored_at(&self, chunks: Vec<IoChunk>, pos: u64, _: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        // glommio writes only its own DMA buffers, and a body is not one:
        // `pwritev` on the shard thread (docs/architecture.md, "Which calls
        // block"). The `fdatasync` after it may still be queued.
        let r = pwritev_all(self.fd(), &chunks, pos);
        async move { r }.boxed_local()
    }

    fn read_at(&self, pos: u64, len: usize) -> LocalBoxFuture<'_, io::Result<Vec<u8>>> {
        async move {
            let r = self.file.read_at(pos, len).await.map_err(io::Error::from)?;
            Ok(r.to_vec())
        }
        .boxed_local()
    }

    fn fdatasync(&self, how: Submit) -> LocalBoxFuture<'_, io::Result<()>> {
        async move {
            match how {
                Submit::Inline => fdatasync_fd(self.fd()),
                Submit::Queued => self.file.fdatasync().await.map_err(io::Error::from),
            }
        }
        .boxed_local()
    }

    fn size(&self) -> LocalBoxFuture<'_, io::Result<u64>> {
        async move { self.file.file_size().await.map_err(io::Error::from) }.boxed_local()
    }

    fn truncate(&self, len: u64) -> LocalBoxFuture<'_, io::Result<()>> {
        async move { self.file.truncate(len).await.map_err(io::Error::from) }.boxed_local()
    }

    fn close(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<()>> {
        async move {
            match Rc::try_unwrap(self) {
                Ok(f) => f.file.close().await.map_err(io::Error::from),
                Err(_) => Ok(()), // still shared: closed when the last holder drops it
            }
        }
        .boxed_local()
    }
}

struct SyncFile {
    file: std::fs::File,
}

impl File for SyncFile {
    fn alignment(&self) -> u64 {
        SYNC_ALIGN
    }

    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf::heap(SYNC_ALIGN as usize, len)
    }

    fn write_at(&self, buf: IoBuf, pos: u64, _: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        let r = pwrite_all(self.file.as_fd(), buf.as_bytes(), pos);
        async move { r }.boxed_local()
    }

    fn write_vectored_at(&self, chunks: Vec<IoChunk>, pos: u64, _: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        let r = pwritev_all(self.file.as_fd(), &chunks, pos);
        async move { r }.boxed_local()
    }

    fn read_at(&self, pos: u64, len: usize) -> LocalBoxFuture<'_, io::Result<Vec<u8>>> {
        // O_DIRECT: read the aligned range around the one asked for.
        let r = (|| {
            let start = pos - pos % SYNC_ALIGN;
            let end = (pos + len as u64).next_multiple_of(SYNC_ALIGN);
            let mut buf = IoBuf::heap(SYNC_ALIGN as usize, (end - start) as usize);
            let mut got = 0usize;
            let out = buf.as_bytes_mut();
            while got < out.len() {
                match nix::sys::uio::pread(self.file.as_fd(), &mut out[got..], (start + got as u64) as i64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
            let from = ((pos - start) as usize).min(got);
            let to = (from + len).min(got);
            Ok(out[from..to].to_vec())
        })();
        async move { r }.boxed_local()
    }

    fn fdatasync(&self, _: Submit) -> LocalBoxFuture<'_, io::Result<()>> {
        let r = fdatasync_fd(self.file.as_fd());
        async move { r }.boxed_local()
    }

    fn size(&self) -> LocalBoxFuture<'_, io::Result<u64>> {
        let r = self.file.metadata().map(|m| m.len());
        async move { r }.boxed_local()
    }

    fn truncate(&self, len: u64) -> LocalBoxFuture<'_, io::Result<()>> {
        let r = self.file.set_len(len);
        async move { r }.boxed_local()
    }

    fn close(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<()>> {
        async move { Ok(()) }.boxed_local()
    }
}

/// fsync a directory of the real file system through glommio (the snapshot
/// volume, which is not behind [`Storage`]).
pub async fn sync_dir(dir: &Path) -> crate::Result<()> {
    RealStorage { uring: true }.sync_dir(dir).await.map_err(crate::Error::io("fsyncing directory", dir, 0))
}
