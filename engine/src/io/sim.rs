//! A simulated file system that forgets what was not synced.
//!
//! Files and directories live in memory, each with a durable and a
//! volatile state, the way a disk with a volatile cache and the kernel's
//! page cache and dentry cache behave under power loss:
//! - a write changes the volatile data; `fdatasync` makes the file's data
//!   and length durable;
//! - a create, rename or remove changes the volatile directory; `sync_dir`
//!   makes that directory's entries durable (a new directory's own entry
//!   needs its parent synced);
//! - an `fdatasync` covers the writes that completed before it was called
//!   and completes a few polls later (drawn from the seed), so a caller can
//!   write more while it is in flight;
//! - [`SimStorage::crash`] returns the storage a restart finds: durable
//!   state only, except that each unsynced write may have reached the disk
//!   in part, a prefix of whole sectors (a torn write), independently of
//!   the others (a disk's cache writes back in any order).
//!
//! Faults, all drawn from the storage's seeded generator, so a seed
//! replays the same decisions for the same sequence of calls:
//! [`Faults`] fails operations with EIO or ENOSPC (a failed write leaves
//! a prefix of its sectors behind, like a real one can), a capacity makes
//! writes past it ENOSPC, [`SimStorage::crash_after`] freezes the storage
//! after a number of operations (every later call fails with EIO and
//! changes nothing: the process may run on, but nothing it does reaches
//! the disk), and [`SimStorage::flip_bit`] damages synced data.

use std::any::Any;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{File, IoBuf, OpenMode, Space, Storage, Submit};

/// At most this many polls pass before a simulated `fdatasync` completes
/// (a glommio executor polls a task that woke itself again at once, so a
/// few are needed for the caller's other tasks to run meanwhile).
const SYNC_POLLS_MAX: u32 = 6;

/// At most this long a simulated `fdatasync` takes, for half of them.
const SYNC_WAIT_MAX: Duration = Duration::from_micros(400);

/// Returns Pending once (waking itself), then Ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Sector size: the granularity of torn writes.
pub const SECTOR: usize = 512;

/// Probabilities (per million operations of each kind) of injected failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A data write fails with EIO after part of it reached the file.
    pub write_eio: u32,
    /// A data write fails with ENOSPC (nothing written).
    pub write_enospc: u32,
    /// An `fdatasync` fails with EIO (nothing more became durable).
    pub fsync_eio: u32,
    /// A create, rename, remove or directory sync fails with EIO.
    pub meta_eio: u32,
    /// A request of the simulated object store's client
    /// ([`super::sim_object`]) fails before it reaches the store.
    pub object_fail: u32,
    /// A put or completed upload lands, but its answer is lost (a timeout,
    /// a reset connection): the client sees an error.
    pub object_answer_lost: u32,
}

#[derive(Debug, Clone)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync, each with the number of
    /// the write (or length change) that made it dirty.
    dirty: Vec<(usize, usize, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// What a `list` or `open` sees.
    volatile: BTreeMap<PathBuf, Node>,
    /// What a crash keeps.
    durable: BTreeMap<PathBuf, Node>,
    faults: Faults,
    /// Bytes all files may hold together; writes past it are ENOSPC.
    capacity: Option<u64>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    /// Writes not yet synced, oldest first: number, inode, offset, bytes.
    /// A crash may keep a prefix of each (a disk's cache writes back in
    /// any order).
    unsynced: Vec<(u64, u64, u64, Vec<u8>)>,
    /// Writes and length changes so far (numbers the dirty ranges).
    writes: u64,
    align: u64,
    sizing_allocates: bool,
    /// Every injected fault and damage, for failure reports.
    events: Vec<String>,
}

/// Operation kinds, for fault injection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Fsync,
    Meta,
    Read,
    /// A request of the simulated object store's client.
    Object,
}

/// `v` grown or cut to `len`, new bytes zero (calloc and a copy: quick in
/// debug builds too, where `resize` fills byte by byte).
fn resize(v: &mut Vec<u8>, len: usize) {
    if len <= v.len() {
        v.truncate(len);
        return;
    }
    let mut grown = vec![0u8; len];
    grown[..v.len()].copy_from_slice(v);
    *v = grown;
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOSPC)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl State {
    /// Counts an operation; fails it if the storage crashed or a fault
    /// is drawn for it.
    fn begin(&mut self, op: Op, what: &str) -> io::Result<()> {
        if self.crashed {
            return Err(eio());
        }
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops > at) {
            self.crashed = true;
            self.events.push(format!("power lost before op {} ({what})", self.ops));
            return Err(eio());
        }
        let p = match op {
            Op::Fsync => self.faults.fsync_eio,
            Op::Meta => self.faults.meta_eio,
            Op::Object => self.faults.object_fail,
            Op::Write | Op::Read => 0,
        };
        if p > 0 && self.rng.random_range(0..1_000_000) < p {
            self.events.push(format!("op {}: injected EIO on {what}", self.ops));
            return Err(eio());
        }
        Ok(())
    }

    fn draw(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.rng.random_range(0..1_000_000) < per_million
    }

    fn used(&self) -> u64 {
        self.inodes.values().map(|i| i.volatile.len().max(i.durable.len()) as u64).sum()
    }

    fn node(&self, path: &Path) -> Option<Node> {
        self.volatile.get(path).copied()
    }

    fn parent_is_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent().map(|p| self.node(p)) {
            Some(Some(Node::Dir)) => Ok(()),
            _ => Err(not_found(path)),
        }
    }

    fn new_file(&mut self, path: &Path) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, Inode { volatile: Vec::new(), durable: Vec::new(), dirty: Vec::new() });
        self.volatile.insert(path.to_owned(), Node::File(id));
        id
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.node(path) {
            Some(Node::File(id)) => Ok(id),
            Some(Node::Dir) => Err(io::Error::new(io::ErrorKind::IsADirectory, path.display().to_string())),
            None => Err(not_found(path)),
        }
    }

    fn write(&mut self, id: u64, pos: u64, bytes: &[u8]) -> io::Result<usize> {
        let end = pos as usize + bytes.len();
        let inode = self.inodes.get(&id).ok_or_else(eio)?;
        let grow = end.saturating_sub(inode.volatile.len()) as u64;
        if self.capacity.is_some_and(|c| self.used() + grow > c) {
            self.events.push(format!("op {}: volume full", self.ops));
            return Err(enospc());
        }
        let inode = self.inodes.get_mut(&id).expect("checked");
        if inode.volatile.len() < end {
            resize(&mut inode.volatile, end);
        }
        inode.volatile[pos as usize..end].copy_from_slice(bytes);
        self.writes += 1;
        inode.dirty.push((pos as usize, end, self.writes));
        self.unsynced.push((self.writes, id, pos, bytes.to_vec()));
        Ok(bytes.len())
    }

    /// Makes durable the file's length and its writes numbered up to
    /// `upto` (those that completed before the sync was called).
    fn sync_file(&mut self, id: u64, upto: u64) {
        let Some(inode) = self.inodes.get_mut(&id) else { return };
        let len = inode.volatile.len();
        resize(&mut inode.durable, len);
        let (synced, later): (Vec<_>, Vec<_>) = std::mem::take(&mut inode.dirty).into_iter().partition(|d| d.2 <= upto);
        inode.dirty = later;
        for (from, to, _) in synced {
            let to = to.min(len);
            if from < to {
                inode.durable[from..to].copy_from_slice(&inode.volatile[from..to]);
            }
        }
        self.unsynced.retain(|(n, i, _, _)| *i != id || *n > upto);
    }

    fn set_len(&mut self, id: u64, len: u64) -> io::Result<()> {
        let inode = self.inodes.get(&id).ok_or_else(eio)?;
        let grow = (len as usize).saturating_sub(inode.volatile.len()) as u64;
        if self.capacity.is_some_and(|c| self.used() + grow > c) {
            return Err(enospc());
        }
        let inode = self.inodes.get_mut(&id).expect("checked");
        let old = inode.volatile.len();
        resize(&mut inode.volatile, len as usize);
        if len as usize > old {
            self.writes += 1;
            inode.dirty.push((old, len as usize, self.writes));
        }
        Ok(())
    }

    fn children(map: &BTreeMap<PathBuf, Node>, dir: &Path) -> Vec<PathBuf> {
        map.keys().filter(|k| k.parent() == Some(dir)).cloned().collect()
    }
}

/// The simulated file system; clones share it.
#[derive(Clone, Debug)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl SimStorage {
    /// An empty file system whose directory `root` (and its ancestors)
    /// exists durably. `seed` drives every random decision.
    pub fn new(seed: u64, root: &Path) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let align = if rng.random_bool(0.5) { 512 } else { 4096 };
        let sizing_allocates = rng.random_bool(0.5);
        let mut dirs = BTreeMap::new();
        for a in root.ancestors() {
            dirs.insert(a.to_owned(), Node::Dir);
        }
        let state = State {
            rng,
            inodes: BTreeMap::new(),
            next_inode: 1,
            volatile: dirs.clone(),
            durable: dirs,
            faults: Faults::default(),
            capacity: None,
            ops: 0,
            crash_at: None,
            crashed: false,
            unsynced: Vec::new(),
            writes: 0,
            align,
            sizing_allocates,
            events: Vec::new(),
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Loses power after `n` more operations.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.lock();
        s.crash_at = Some(s.ops + n);
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Counts a request of the simulated object store's client on this
    /// machine: fails once the power is lost, or when a fault is drawn.
    pub(crate) fn begin_object_request(&self, what: &str) -> io::Result<()> {
        self.lock().begin(Op::Object, what)
    }

    /// Whether the answer to a request that reached the store is lost:
    /// always once the power is lost, otherwise when a fault is drawn.
    pub(crate) fn object_answer_lost(&self, what: &str) -> bool {
        let mut s = self.lock();
        if s.crashed {
            return true;
        }
        let p = s.faults.object_answer_lost;
        if s.draw(p) {
            let ops = s.ops;
            s.events.push(format!("op {ops}: {what} landed, its answer lost"));
            return true;
        }
        false
    }

    /// The faults and damage injected so far, oldest first.
    pub fn events(&self) -> Vec<String> {
        self.lock().events.clone()
    }

    /// Loses power now (if it was not lost already) and returns the file
    /// system a restart finds: synced data and directory entries only,
    /// with a torn prefix of each unsynced write if `tear` and the
    /// generator say so. This storage fails every call from now on.
    pub fn crash(&self, tear: bool) -> SimStorage {
        let mut s = self.lock();
        s.crashed = true;
        let mut rng = StdRng::seed_from_u64(s.rng.random());
        let mut events = std::mem::take(&mut s.events);
        // A directory whose own entry was not durable takes its subtree with it.
        let mut durable: BTreeMap<PathBuf, Node> = BTreeMap::new();
        for (path, node) in &s.durable {
            let reachable = path.parent().is_none_or(|p| durable.get(p) == Some(&Node::Dir));
            if reachable {
                durable.insert(path.clone(), *node);
            }
        }
        let mut inodes = BTreeMap::new();
        for node in durable.values() {
            if let Node::File(id) = node {
                if let Some(i) = s.inodes.get(id) {
                    inodes.insert(
                        *id,
                        Inode { volatile: i.durable.clone(), durable: i.durable.clone(), dirty: Vec::new() },
                    );
                }
            }
        }
        let unsynced = if tear { std::mem::take(&mut s.unsynced) } else { Vec::new() };
        for (_, id, pos, bytes) in unsynced {
            if let Some(inode) = inodes.get_mut(&id) {
                let sectors = bytes.len().div_ceil(SECTOR);
                let kept = rng.random_range(0..=sectors);
                let n = (kept * SECTOR).min(bytes.len());
                if n > 0 {
                    let end = pos as usize + n;
                    // A write inside the durable length tears in place; one
                    // past it would need the length synced too: it is lost.
                    if end <= inode.durable.len() {
                        inode.durable[pos as usize..end].copy_from_slice(&bytes[..n]);
                        inode.volatile = inode.durable.clone();
                        events.push(format!("torn write: {kept} of {sectors} sectors at offset {pos} kept"));
                    }
                }
            }
        }
        let state = State {
            rng,
            inodes,
            next_inode: s.next_inode,
            volatile: durable.clone(),
            durable,
            faults: s.faults,
            capacity: s.capacity,
            ops: 0,
            crash_at: None,
            crashed: false,
            unsynced: Vec::new(),
            writes: 0,
            align: s.align,
            sizing_allocates: s.sizing_allocates,
            events,
        };
        SimStorage { state: Arc::new(Mutex::new(state)) }
    }

    /// Flips bit `bit` of byte `offset` of the file at `path`, in its
    /// durable and volatile data. False if there is no such byte.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let mut s = self.lock();
        let Ok(id) = s.file(path) else { return false };
        let inode = s.inodes.get_mut(&id).expect("listed");
        let o = offset as usize;
        if o >= inode.durable.len() {
            return false;
        }
        inode.durable[o] ^= 1 << (bit % 8);
        if o < inode.volatile.len() {
            inode.volatile[o] ^= 1 << (bit % 8);
        }
        s.events.push(format!("flipped bit {} at {}:{offset}", bit % 8, path.display()));
        true
    }

    /// Every file under `dir` with its length, in path order.
    pub fn files_under(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        let s = self.lock();
        s.volatile
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), s.inodes[id].volatile.len() as u64)),
                Node::Dir => None,
            })
            .collect()
    }
}

impl Storage for SimStorage {
    fn engine_name(&self) -> &'static str {
        "sim"
    }

    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> LocalBoxFuture<'a, io::Result<Rc<dyn File>>> {
        let r = (|| {
            let mut s = self.lock();
            s.begin(if mode == OpenMode::Create { Op::Meta } else { Op::Read }, "open")?;
            let id = match (mode, s.node(path)) {
                (OpenMode::Create, None) => {
                    s.parent_is_dir(path)?;
                    s.new_file(path)
                }
                (OpenMode::Create, Some(Node::File(id))) => {
                    s.set_len(id, 0)?;
                    id
                }
                _ => s.file(path)?,
            };
            let align = s.align;
            Ok(Rc::new(SimFile { storage: self.clone(), id, align, path: path.to_owned() }) as Rc<dyn File>)
        })();
        async move { r }.boxed_local()
    }

    fn sync_dir<'a>(&'a self, dir: &'a Path) -> LocalBoxFuture<'a, io::Result<()>> {
        let r = (|| {
            let mut s = self.lock();
            s.begin(Op::Meta, "sync_dir")?;
            if s.node(dir) != Some(Node::Dir) {
                return Err(not_found(dir));
            }
            for gone in State::children(&s.durable, dir) {
                if !s.volatile.contains_key(&gone) {
                    s.durable.remove(&gone);
                }
            }
            for p in State::children(&s.volatile, dir) {
                let n = s.volatile[&p];
                s.durable.insert(p, n);
            }
            Ok(())
        })();
        async move { r }.boxed_local()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Meta, "create_dir_all")?;
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|a| s.node(a).is_none()).collect();
        missing.reverse();
        for d in missing {
            s.volatile.insert(d.to_owned(), Node::Dir);
        }
        match s.node(dir) {
            Some(Node::Dir) => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::AlreadyExists, dir.display().to_string())),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        s.begin(Op::Read, "list")?;
        if s.node(dir) != Some(Node::Dir) {
            return Err(not_found(dir));
        }
        Ok(State::children(&s.volatile, dir)
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        let s = self.lock();
        match s.node(path) {
            Some(n) => Ok(n == Node::Dir),
            None => Err(not_found(path)),
        }
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut s = self.lock();
        s.begin(Op::Read, "stat")?;
        let id = s.file(path)?;
        Ok(s.inodes[&id].volatile.len() as u64)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Meta, "rename")?;
        let id = s.file(from)?;
        s.parent_is_dir(to)?;
        if s.node(to) == Some(Node::Dir) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, to.display().to_string()));
        }
        s.volatile.remove(from);
        s.volatile.insert(to.to_owned(), Node::File(id));
        Ok(())
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        {
            let s = self.lock();
            if s.node(to).is_some() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, to.display().to_string()));
            }
        }
        self.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Meta, "remove_file")?;
        s.file(path)?;
        s.volatile.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Meta, "remove_dir_all")?;
        if s.node(path) != Some(Node::Dir) {
            return Err(not_found(path));
        }
        let under: Vec<PathBuf> = s.volatile.keys().filter(|k| k.starts_with(path)).cloned().collect();
        for k in under {
            s.volatile.remove(&k);
        }
        Ok(())
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Write, "set_len")?;
        let id = s.file(path)?;
        s.set_len(id, len)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.begin(Op::Read, "read")?;
        let id = s.file(path)?;
        Ok(s.inodes[&id].volatile.clone())
    }

    fn read_prefix(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.begin(Op::Read, "read")?;
        let id = s.file(path)?;
        let data = &s.inodes[&id].volatile;
        Ok(data[..len.min(data.len())].to_vec())
    }

    fn sync_dir_blocking(&self, dir: &Path) -> io::Result<()> {
        futures::executor::block_on(self.sync_dir(dir))
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Op::Meta, "create")?;
        let id = match s.node(path) {
            Some(Node::File(id)) => id,
            Some(Node::Dir) => return Err(io::Error::new(io::ErrorKind::IsADirectory, path.display().to_string())),
            None => {
                s.parent_is_dir(path)?;
                s.new_file(path)
            }
        };
        s.set_len(id, 0)?;
        s.write(id, 0, bytes)?;
        s.begin(Op::Fsync, "fsync")?;
        s.sync_file(id, u64::MAX);
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        Ok(Box::new(()))
    }

    fn sizing_allocates(&self, _dir: &Path) -> bool {
        self.lock().sizing_allocates
    }

    fn space(&self, _path: &Path) -> Option<Space> {
        let s = self.lock();
        let total = s.capacity.unwrap_or(1 << 40);
        Some(Space { total, available: total.saturating_sub(s.used()) })
    }
}

struct SimFile {
    storage: SimStorage,
    id: u64,
    align: u64,
    path: PathBuf,
}

impl SimFile {
    fn state(&self) -> MutexGuard<'_, State> {
        self.storage.lock()
    }

    fn check_aligned(&self, pos: u64, len: usize) -> io::Result<()> {
        if pos % self.align != 0 || len as u64 % self.align != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: unaligned O_DIRECT write of {len} bytes at {pos}", self.path.display()),
            ));
        }
        Ok(())
    }
}

impl File for SimFile {
    fn alignment(&self) -> u64 {
        self.align
    }

    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf::heap(self.align as usize, len)
    }

    fn write_at(&self, buf: IoBuf, pos: u64, _: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        let r = (|| {
            self.check_aligned(pos, buf.len())?;
            let mut s = self.state();
            s.begin(Op::Write, "write")?;
            if !s.inodes.contains_key(&self.id) {
                return Err(eio());
            }
            let bytes = buf.as_bytes();
            let (eio_p, enospc_p) = (s.faults.write_eio, s.faults.write_enospc);
            if s.draw(enospc_p) {
                let msg = format!("op {}: injected ENOSPC on write to {}", s.ops, self.path.display());
                s.events.push(msg);
                return Err(enospc());
            }
            if s.draw(eio_p) {
                let sectors = bytes.len().div_ceil(SECTOR);
                let kept = s.rng.random_range(0..=sectors);
                let n = (kept * SECTOR).min(bytes.len());
                if n > 0 {
                    s.write(self.id, pos, &bytes[..n])?;
                }
                let msg = format!(
                    "op {}: injected EIO on write to {} at {pos} after {kept} of {sectors} sectors",
                    s.ops,
                    self.path.display()
                );
                s.events.push(msg);
                return Err(eio());
            }
            s.write(self.id, pos, bytes)
        })();
        async move { r }.boxed_local()
    }

    fn read_at(&self, pos: u64, len: usize) -> LocalBoxFuture<'_, io::Result<Vec<u8>>> {
        let r = (|| {
            let mut s = self.state();
            s.begin(Op::Read, "read")?;
            let data = &s.inodes.get(&self.id).ok_or_else(eio)?.volatile;
            let from = (pos as usize).min(data.len());
            let to = (from + len).min(data.len());
            Ok(data[from..to].to_vec())
        })();
        async move { r }.boxed_local()
    }

    /// Never: the simulated flush completes polls later, whatever `how`.
    fn sync_blocks(&self, _: Submit) -> bool {
        false
    }

    /// Covers the writes that completed before the call; it completes
    /// only after the caller has had a chance to go on (a flush in flight
    /// while the next write is issued), and makes nothing durable if the
    /// power is lost meanwhile.
    fn fdatasync(&self, _: Submit) -> LocalBoxFuture<'_, io::Result<()>> {
        let called: io::Result<(u64, u32, Duration)> = (|| {
            let mut s = self.state();
            s.begin(Op::Fsync, "fdatasync")?;
            // How long the flush takes: a few polls of its caller's
            // executor, and for half of them up to SYNC_WAIT_MAX as well
            // (the other threads, such as the writers, go on meanwhile).
            let polls = s.rng.random_range(0..=SYNC_POLLS_MAX);
            let wait =
                if s.rng.random_bool(0.5) { s.rng.random_range(Duration::ZERO..SYNC_WAIT_MAX) } else { Duration::ZERO };
            Ok((s.writes, polls, wait))
        })();
        async move {
            let (upto, polls, wait) = called?;
            for _ in 0..polls {
                YieldOnce(false).await;
            }
            let until = std::time::Instant::now() + wait;
            while std::time::Instant::now() < until {
                YieldOnce(false).await;
            }
            let mut s = self.state();
            if s.crashed {
                return Err(eio());
            }
            s.sync_file(self.id, upto);
            Ok(())
        }
        .boxed_local()
    }

    fn size(&self) -> LocalBoxFuture<'_, io::Result<u64>> {
        let r = (|| {
            let mut s = self.state();
            s.begin(Op::Read, "stat")?;
            Ok(s.inodes.get(&self.id).ok_or_else(eio)?.volatile.len() as u64)
        })();
        async move { r }.boxed_local()
    }

    fn truncate(&self, len: u64) -> LocalBoxFuture<'_, io::Result<()>> {
        let r = (|| {
            let mut s = self.state();
            s.begin(Op::Write, "truncate")?;
            s.set_len(self.id, len)
        })();
        async move { r }.boxed_local()
    }

    fn close(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<()>> {
        async move { Ok(()) }.boxed_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_crash_keeps_only_what_was_synced() {
        let root = Path::new("/sim");
        let fs = SimStorage::new(1, root);
        let a = root.join("a");
        let b = root.join("b");
        run(async {
            let f = fs.open(&a, OpenMode::Create).await.unwrap();
            let mut buf = f.alloc(4096);
            buf.as_bytes_mut().fill(7);
            f.write_at(buf, 0, Submit::Inline).await.unwrap();
            f.fdatasync(Submit::Inline).await.unwrap();
            fs.sync_dir(root).await.unwrap();
            let mut buf = f.alloc(4096);
            buf.as_bytes_mut().fill(9);
            f.write_at(buf, 4096, Submit::Inline).await.unwrap(); // never synced
            let g = fs.open(&b, OpenMode::Create).await.unwrap(); // entry never synced
            let mut buf = g.alloc(4096);
            buf.as_bytes_mut().fill(1);
            g.write_at(buf, 0, Submit::Inline).await.unwrap();
            g.fdatasync(Submit::Inline).await.unwrap();
        });
        let after = fs.crash(false);
        assert_eq!(after.read(&a).unwrap(), vec![7u8; 4096], "unsynced data is lost");
        assert_eq!(after.list(root).unwrap(), vec!["a".to_string()], "an unsynced create is lost");
        assert!(fs.read(&a).is_err(), "the crashed storage refuses every call");
    }

    #[test]
    fn a_rename_without_a_directory_sync_is_undone() {
        let root = Path::new("/sim");
        let fs = SimStorage::new(2, root);
        fs.write_synced(&root.join("x.tmp"), b"new").unwrap();
        run(fs.sync_dir(root)).unwrap();
        fs.rename(&root.join("x.tmp"), &root.join("x")).unwrap();
        let after = fs.crash(false);
        assert_eq!(after.list(root).unwrap(), vec!["x.tmp".to_string()]);
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_sectors() {
        let root = Path::new("/sim");
        for seed in 0..32 {
            let fs = SimStorage::new(seed, root);
            let p = root.join("f");
            let len = run(async {
                let f = fs.open(&p, OpenMode::Create).await.unwrap();
                f.truncate(8192).await.unwrap();
                f.fdatasync(Submit::Inline).await.unwrap();
                fs.sync_dir(root).await.unwrap();
                let mut buf = f.alloc(8192);
                buf.as_bytes_mut().fill(5);
                f.write_at(buf, 0, Submit::Inline).await.unwrap();
                8192
            });
            let data = fs.crash(true).read(&p).unwrap();
            assert_eq!(data.len(), len);
            let kept = data.iter().take_while(|b| **b == 5).count();
            assert_eq!(kept % SECTOR, 0, "seed {seed}: torn at a sector boundary");
            assert!(data[kept..].iter().all(|b| *b == 0), "seed {seed}: only a prefix");
        }
    }
}
