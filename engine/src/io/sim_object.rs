//! A simulated object store for the cold tier, reached from a simulated
//! machine.
//!
//! The remote side is object_store's [`InMemory`]: a put or a completed
//! multipart upload is there for good, an upload not completed is not, as
//! on S3. The client side lives on the machine a [`SimStorage`] simulates,
//! and shares its power and its seeded fault schedule:
//! - every request counts as one of the storage's operations, so a power
//!   cut can land between any two requests of a snapshot's upload and
//!   commit; after the cut every request fails and an upload in flight is
//!   never completed (its parts are lost);
//! - [`Faults::object_fail`](super::sim::Faults) fails a request before it
//!   reaches the store;
//! - [`Faults::object_answer_lost`](super::sim::Faults) lets a put or an
//!   upload land and then reports an error, as a timeout or a reset
//!   connection does: the client cannot tell whether it happened.
//!
//! A restarted engine gets a new client ([`SimObjectStore::new`]) on the
//! storage the power cut returned, over the same remote store.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

use super::sim::SimStorage;

/// One engine's client of the simulated object store.
#[derive(Debug, Clone)]
pub struct SimObjectStore {
    remote: Arc<InMemory>,
    machine: SimStorage,
}

impl SimObjectStore {
    /// A client of `remote` on the machine whose power and faults `machine`
    /// simulates.
    pub fn new(remote: Arc<InMemory>, machine: SimStorage) -> Self {
        Self { remote, machine }
    }

    fn begin(&self, what: &'static str, path: &Path) -> Result<()> {
        self.machine.begin_object_request(what).map_err(|e| failed(what, path, e.to_string()))
    }

    /// After a request that changed the store: its answer, or an error if
    /// the answer was lost.
    fn answer<T>(&self, what: &'static str, path: &Path, r: Result<T>) -> Result<T> {
        let r = r?;
        if self.machine.object_answer_lost(what) {
            return Err(failed(what, path, "the connection was reset before the answer".into()));
        }
        Ok(r)
    }
}

fn failed(what: &'static str, path: &Path, why: String) -> object_store::Error {
    object_store::Error::Generic { store: "simulated", source: format!("{what} {path}: {why}").into() }
}

impl std::fmt::Display for SimObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimObjectStore({})", self.remote)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for SimObjectStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.begin("put", location)?;
        let r = self.remote.put_opts(location, payload, opts).await;
        self.answer("put", location, r)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.begin("starting an upload", location)?;
        let inner = self.remote.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SimUpload { store: self.clone(), path: location.clone(), inner }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.begin("get", location)?;
        self.remote.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.begin("get", location)?;
        self.remote.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let client = self.clone();
        let checked = locations.map(move |l| {
            let l = l?;
            client.begin("delete", &l)?;
            Ok(l)
        });
        self.remote.delete_stream(checked.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.begin("list", prefix.unwrap_or(&Path::default())) {
            Ok(()) => self.remote.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.begin("list", prefix.unwrap_or(&Path::default())) {
            Ok(()) => self.remote.list_with_offset(prefix, offset),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.begin("list", prefix.unwrap_or(&Path::default()))?;
        self.remote.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.begin("copy", to)?;
        let r = self.remote.copy_opts(from, to, options).await;
        self.answer("copy", to, r)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.begin("rename", to)?;
        let r = self.remote.rename_opts(from, to, options).await;
        self.answer("rename", to, r)
    }
}

/// An upload from the simulated machine: its parts wait in the remote
/// store's upload until `complete`, which a power cut prevents.
#[derive(Debug)]
struct SimUpload {
    store: SimObjectStore,
    path: Path,
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for SimUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let checked = self.store.begin("uploading a part", &self.path);
        let part = self.inner.put_part(data);
        Box::pin(async move {
            checked?;
            part.await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.store.begin("completing an upload", &self.path)?;
        let r = self.inner.complete().await;
        self.store.answer("completing an upload", &self.path, r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.store.begin("aborting an upload", &self.path)?;
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::Faults;
    use object_store::ObjectStoreExt;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_put_lands_for_good_and_an_upload_cut_off_by_the_power_never_does() {
        let remote = Arc::new(InMemory::new());
        let machine = SimStorage::new(1, std::path::Path::new("/sim"));
        let client = SimObjectStore::new(remote.clone(), machine.clone());
        let done = Path::from("t/done");
        let cut = Path::from("t/cut");
        block_on(client.put(&done, Bytes::from_static(b"kept").into())).unwrap();
        let mut upload = block_on(client.put_multipart(&cut)).unwrap();
        block_on(upload.put_part(Bytes::from(vec![7u8; 5 << 20]).into())).unwrap();
        let machine = machine.crash(true);
        assert!(block_on(upload.complete()).is_err(), "no request leaves a machine without power");
        assert!(block_on(client.get(&done)).is_err());

        let restarted = SimObjectStore::new(remote, machine);
        let got = block_on(async { restarted.get(&done).await.unwrap().bytes().await.unwrap() });
        assert_eq!(&got[..], b"kept");
        assert!(matches!(block_on(restarted.head(&cut)), Err(object_store::Error::NotFound { .. })));
    }

    #[test]
    fn a_lost_answer_hides_a_put_that_landed() {
        let remote = Arc::new(InMemory::new());
        let machine = SimStorage::new(2, std::path::Path::new("/sim"));
        machine.set_faults(Faults { object_answer_lost: 1_000_000, ..Faults::default() });
        let client = SimObjectStore::new(remote.clone(), machine.clone());
        let p = Path::from("t/x");
        assert!(block_on(client.put(&p, Bytes::from_static(b"x").into())).is_err());
        machine.set_faults(Faults::default());
        assert!(block_on(client.head(&p)).is_ok(), "the put landed although its client saw an error");
        assert!(machine.events().iter().any(|e| e.contains("answer lost")));
    }

    #[test]
    fn a_failed_request_changes_nothing() {
        let remote = Arc::new(InMemory::new());
        let machine = SimStorage::new(3, std::path::Path::new("/sim"));
        machine.set_faults(Faults { object_fail: 1_000_000, ..Faults::default() });
        let client = SimObjectStore::new(remote.clone(), machine.clone());
        let p = Path::from("t/y");
        assert!(block_on(client.put(&p, Bytes::from_static(b"y").into())).is_err());
        assert!(block_on(remote.head(&p)).is_err());
    }
}
