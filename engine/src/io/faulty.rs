//! Faults on the real file system, for end-to-end tests that start the
//! binary (compiled only with the `fault-injection` feature). The
//! simulator ([`super::sim`]) covers these and more in-process; this
//! wrapper keeps a few tests honest about the real syscalls and the
//! server's answers.
//!
//! Each fault is armed as "succeed `after` times, then fail `times` times"
//! (`u64::MAX` = for ever), counted over the operations it applies to:
//! - `fsync`: `fdatasync` of a WAL segment (`*.wal`) reports EIO;
//! - `write`: a write into a WAL segment past its header (a commit or a
//!   seal) puts its first half on disk, then reports EIO: the worst kind,
//!   valid frames among what reached the file;
//! - `create`: writing a new segment's header (`.<id>.wal.tmp`) reports
//!   EIO;
//! - on the cold tier, [`FaultyObjectStore`]: uploading a snapshot file
//!   reports EIO.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use futures::future::LocalBoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};

use super::{File, IoBuf, OpenMode, Space, Storage, StorageRef, Submit};

/// "Succeed `after` times, then fail `times` times."
pub type Arm = (u64, u64);

#[derive(Debug, Default, Clone, Copy)]
pub struct FaultPlan {
    pub fsync: Option<Arm>,
    pub write: Option<Arm>,
    pub create: Option<Arm>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fsync,
    Write,
    Create,
}

#[derive(Debug)]
pub struct FaultyStorage {
    inner: StorageRef,
    plan: Arc<Mutex<FaultPlan>>,
    /// Where files were renamed to, so that an open file knows its name:
    /// a segment is written under its temporary name, then renamed.
    renamed: Arc<Mutex<HashMap<PathBuf, PathBuf>>>,
}

impl FaultyStorage {
    pub fn new(inner: StorageRef, plan: FaultPlan) -> Self {
        Self { inner, plan: Arc::new(Mutex::new(plan)), renamed: Arc::default() }
    }

    fn record_rename(&self, from: &Path, to: &Path) {
        self.renamed.lock().unwrap_or_else(|e| e.into_inner()).insert(from.to_owned(), to.to_owned());
    }
}

/// Whether this operation of `kind` must fail, counting it.
fn fails(plan: &Mutex<FaultPlan>, kind: Kind) -> bool {
    let mut p = plan.lock().unwrap_or_else(|e| e.into_inner());
    let arm = match kind {
        Kind::Fsync => &mut p.fsync,
        Kind::Write => &mut p.write,
        Kind::Create => &mut p.create,
    };
    let fails = count(arm);
    if fails {
        tracing::warn!(?kind, "injected fault");
    }
    fails
}

/// Counts one operation against an arm; whether this one fails.
fn count(arm: &mut Option<Arm>) -> bool {
    match arm {
        None => false,
        Some((after, _)) if *after > 0 => {
            *after -= 1;
            false
        }
        Some((_, 0)) => false,
        Some((_, times)) => {
            if *times != u64::MAX {
                *times -= 1;
            }
            true
        }
    }
}

fn injected() -> io::Error {
    io::Error::other(format!("injected fault: {}", io::Error::from_raw_os_error(nix::libc::EIO)))
}

fn is_segment(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).and_then(crate::wal::parse_segment_file_name).is_some()
}

fn is_new_segment(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(crate::wal::is_segment_tmp_name)
}

impl Storage for FaultyStorage {
    fn engine_name(&self) -> &'static str {
        self.inner.engine_name()
    }

    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> LocalBoxFuture<'a, io::Result<Rc<dyn File>>> {
        async move {
            let file = self.inner.open(path, mode).await?;
            let (plan, renamed) = (self.plan.clone(), self.renamed.clone());
            Ok(Rc::new(FaultyFile { file, opened_as: path.to_owned(), plan, renamed }) as Rc<dyn File>)
        }
        .boxed_local()
    }

    fn sync_dir<'a>(&'a self, dir: &'a Path) -> LocalBoxFuture<'a, io::Result<()>> {
        self.inner.sync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.inner.is_dir(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        self.record_rename(from, to);
        Ok(())
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename_no_replace(from, to)?;
        self.record_rename(from, to);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.set_len(path, len)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }

    fn read_prefix(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_prefix(path, len)
    }

    fn sync_dir_blocking(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir_blocking(dir)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_synced(path, bytes)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn sizing_allocates(&self, dir: &Path) -> bool {
        self.inner.sizing_allocates(dir)
    }

    fn space(&self, path: &Path) -> Option<Space> {
        self.inner.space(path)
    }
}

struct FaultyFile {
    file: Rc<dyn File>,
    opened_as: PathBuf,
    plan: Arc<Mutex<FaultPlan>>,
    renamed: Arc<Mutex<HashMap<PathBuf, PathBuf>>>,
}

impl FaultyFile {
    /// The file's name now, following renames since it was opened.
    fn path(&self) -> PathBuf {
        let renamed = self.renamed.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.opened_as.clone();
        for _ in 0..8 {
            match renamed.get(&p) {
                Some(to) if *to != p => p = to.clone(),
                _ => break,
            }
        }
        p
    }
}

impl File for FaultyFile {
    fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    fn alloc(&self, len: usize) -> IoBuf {
        self.file.alloc(len)
    }

    fn write_at(&self, buf: IoBuf, pos: u64, how: Submit) -> LocalBoxFuture<'_, io::Result<usize>> {
        async move {
            let path = self.path();
            if pos == 0 && is_new_segment(&path) && fails(&self.plan, Kind::Create) {
                return Err(injected());
            }
            if pos > 0 && is_segment(&path) && fails(&self.plan, Kind::Write) {
                let align = self.file.alignment().max(512) as usize;
                let half = (buf.len() / 2).next_multiple_of(align).min(buf.len());
                let mut first = self.file.alloc(half);
                first.as_bytes_mut().copy_from_slice(&buf.as_bytes()[..half]);
                let _ = self.file.write_at(first, pos, Submit::Inline).await;
                return Err(injected());
            }
            self.file.write_at(buf, pos, how).await
        }
        .boxed_local()
    }

    fn read_at(&self, pos: u64, len: usize) -> LocalBoxFuture<'_, io::Result<Vec<u8>>> {
        self.file.read_at(pos, len)
    }

    fn fdatasync(&self, how: Submit) -> LocalBoxFuture<'_, io::Result<()>> {
        async move {
            if is_segment(&self.path()) && fails(&self.plan, Kind::Fsync) {
                return Err(injected());
            }
            self.file.fdatasync(how).await
        }
        .boxed_local()
    }

    fn sync_blocks(&self, how: Submit) -> bool {
        self.file.sync_blocks(how)
    }

    fn size(&self) -> LocalBoxFuture<'_, io::Result<u64>> {
        self.file.size()
    }

    fn truncate(&self, len: u64) -> LocalBoxFuture<'_, io::Result<()>> {
        self.file.truncate(len)
    }

    fn close(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<()>> {
        match Rc::try_unwrap(self) {
            Ok(f) => f.file.close(),
            Err(_) => async { Ok(()) }.boxed_local(),
        }
    }
}

/// Faults on the cold tier's object store, for the same end-to-end tests:
/// with `upload` armed, putting an object whose name ends with `suffix`
/// (by default a snapshot file, `.parquet`, in one put or as a multipart
/// upload) reports EIO before anything is stored. Everything else is
/// untouched. The simulator covers the cold tier's other faults in-process
/// ([`super::sim_object`]).
#[derive(Debug)]
pub struct FaultyObjectStore {
    inner: Arc<dyn ObjectStore>,
    suffix: &'static str,
    upload: Mutex<Option<Arm>>,
}

impl FaultyObjectStore {
    pub fn new(inner: Arc<dyn ObjectStore>, upload: Arm) -> Self {
        Self::failing_puts_of(inner, ".parquet", upload)
    }

    /// Fails puts of objects whose names end with `suffix`.
    pub fn failing_puts_of(inner: Arc<dyn ObjectStore>, suffix: &'static str, upload: Arm) -> Self {
        Self { inner, suffix, upload: Mutex::new(Some(upload)) }
    }

    fn check(&self, location: &ObjectPath) -> object_store::Result<()> {
        if !location.as_ref().ends_with(self.suffix) {
            return Ok(());
        }
        if count(&mut self.upload.lock().unwrap_or_else(|e| e.into_inner())) {
            tracing::warn!(%location, "injected fault: put");
            return Err(object_store::Error::Generic {
                store: "fault injection",
                source: format!("uploading {location}: {}", injected()).into(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for FaultyObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyObjectStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyObjectStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjectPath, to: &ObjectPath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
