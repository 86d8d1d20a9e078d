use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use ncps_nix::NarKey;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::StoreError;
use crate::chunk::{CHUNK_DIR, ChunkHash, chunk_from_storage_key, chunk_storage_key};
use crate::local::{LocalDir, OpenFile, positional_reads, sendable_reads};

/// Size of the pieces a file is streamed to the backend in: large enough for S3's 5 MiB minimum
/// multipart part, small enough to keep memory flat.
const UPLOAD_PART_SIZE: usize = 8 * 1024 * 1024;

/// Files below this size are written with one `put`, which is one request on every backend.
const SINGLE_PUT_LIMIT: u64 = UPLOAD_PART_SIZE as u64;

/// Concurrent existence checks against a remote backend.
const PRESENCE_CHECKS: usize = 32;

/// An inclusive-exclusive byte range `[start, end)` of a stored object, already validated against
/// the object's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte sent.
    pub start: u64,
    /// One past the last byte sent.
    pub end: u64,
}

/// An open read of a stored object: its total size is known before the first byte is sent, so
/// the HTTP layer can send Content-Length (a short body is a hard failure for Nix).
pub struct BlobRead {
    /// Size of the whole object.
    pub total_size: u64,
    /// The bytes of the requested range (or of the whole object).
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// Where an S3-compatible bucket is and how to talk to it.
#[derive(Clone, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL with scheme (e.g. `http://127.0.0.1:3900`); AWS when unset.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when unset).
    pub region: Option<String>,
    /// Access key id; the environment's AWS credentials when unset.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO, Garage and most
    /// self-hosted servers need.
    pub force_path_style: bool,
}

/// Where an Azure Blob storage container is.
#[derive(Clone, Default)]
pub struct AzureConfig {
    /// Container name.
    pub container: String,
    /// Storage account; the environment's (`AZURE_STORAGE_ACCOUNT_NAME`) when unset.
    pub account: Option<String>,
    /// Account access key; the environment's credentials (`AZURE_STORAGE_ACCOUNT_KEY`, a SAS,
    /// a managed identity, …) when unset.
    pub access_key: Option<String>,
    /// Endpoint URL (`https://<account>.blob.core.windows.net` when unset), for sovereign
    /// clouds and self-hosted servers.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AzureConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConfig")
            .field("container", &self.container)
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Where a Google Cloud Storage bucket is.
#[derive(Clone, Debug, Default)]
pub struct GcsConfig {
    /// Bucket name.
    pub bucket: String,
    /// Service account key file (JSON); the environment's credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT`, the metadata server) when
    /// unset. A key file with `gcs_base_url` (and `disable_oauth`) points at an emulator.
    pub credentials_file: Option<String>,
}

impl std::fmt::Debug for S3Config {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("force_path_style", &self.force_path_style)
            .finish_non_exhaustive()
    }
}

/// Object storage for NAR files, addressed by typed keys.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Set for local storage, whose hot paths bypass object_store (see `local.rs`).
    local: Option<Arc<LocalDir>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.inner)
    }
}

/// True when a GCS key file points at a plain-HTTP endpoint (`"gcs_base_url": "http://…"`).
fn names_http_endpoint(key_file: &str) -> bool {
    key_file
        .split("\"gcs_base_url\"")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .is_some_and(|url| url.starts_with("http://"))
}

fn nar_path(key: &NarKey) -> ObjectPath {
    ObjectPath::from_iter(["nar", key.file_name().as_str()])
}

/// Chunk writes in flight at once to a remote store: enough to hide its latency.
const CHUNK_UPLOADS_AT_ONCE: usize = 8;

fn chunk_path(hash: &ChunkHash) -> ObjectPath {
    // The key is built from hex digits only, so it is always a valid object path.
    ObjectPath::from(chunk_storage_key(hash))
}

impl BlobStore {
    /// Storage on the local file system below `root` (created when missing).
    pub fn local(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::Open {
            path: root.to_path_buf(),
            source,
        })?;
        // Absolute, as object_store keeps it: both paths must name the same files whatever
        // the working directory.
        let root = std::fs::canonicalize(root).map_err(|source| StoreError::Open {
            path: root.to_path_buf(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Self {
            inner: Arc::new(fs),
            local: Some(Arc::new(LocalDir::new(&root))),
        })
    }

    /// Storage in an S3-compatible bucket. Objects stream in and out; large NARs use multipart
    /// uploads. Credentials stay inside the client and never reach a log line.
    pub fn s3(config: &S3Config) -> Result<Self, StoreError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.force_path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = builder.with_region(config.region.as_deref().unwrap_or("us-east-1"));
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        Ok(Self::from_object_store(Arc::new(builder.build()?)))
    }

    /// Storage in an Azure Blob storage container, with the same streaming, multipart (block)
    /// writes and aborts as S3. Settings not given come from the environment as the Azure
    /// tools name them (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
    /// `AZURE_STORAGE_USE_EMULATOR`, …); credentials stay inside the client.
    pub fn azure(config: &AzureConfig) -> Result<Self, StoreError> {
        let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(&config.container);
        if let Some(account) = &config.account {
            builder = builder.with_account(account);
        }
        if let Some(key) = &config.access_key {
            builder = builder.with_access_key(key);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        Ok(Self::from_object_store(Arc::new(builder.build()?)))
    }

    /// Storage in a Google Cloud Storage bucket, with the same streaming, multipart writes and
    /// aborts as S3. Credentials stay inside the client.
    pub fn gcs(config: &GcsConfig) -> Result<Self, StoreError> {
        let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&config.bucket);
        if let Some(file) = &config.credentials_file {
            builder = builder.with_service_account_path(file);
            // An emulator (`gcs_base_url` in the key file) answers over plain HTTP.
            if std::fs::read_to_string(file).is_ok_and(|text| names_http_endpoint(&text)) {
                builder = builder
                    .with_client_options(object_store::ClientOptions::new().with_allow_http(true));
            }
        }
        Ok(Self::from_object_store(Arc::new(builder.build()?)))
    }

    /// Wraps any `object_store` backend (S3, GCS, Azure, in-memory).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner, local: None }
    }

    /// Whether objects are files on this machine: reads are then cheap and need little
    /// read-ahead, unlike a bucket's round trips.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// An object the Go ncps stored, at `path` below its storage root (`store/nar/<a>/<ab>/…`,
    /// `store/chunk/<a>/<ab>/…`): the same key in a bucket; on local disk the Go ncps's
    /// `store/` is this store's own root. `None` when it is not there (or `path` is no plain
    /// relative path below `store/`). Only read: ncps never writes Go objects.
    pub async fn read_go_object(
        &self,
        path: &str,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StoreError>>>, StoreError> {
        let key = if self.is_local() {
            match path.strip_prefix("store/") {
                Some(key) => key,
                None => return Ok(None),
            }
        } else {
            path
        };
        let Ok(location) = ObjectPath::parse(key) else {
            return Ok(None);
        };
        if location.as_ref() != key {
            return Ok(None);
        }
        match self.inner.get(&location).await {
            Ok(result) => Ok(Some(
                result
                    .into_stream()
                    .map(|r| r.map_err(StoreError::from))
                    .boxed(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored size of a NAR, or `None` when it is not stored. Costs one metadata request.
    pub async fn nar_size(&self, key: &NarKey) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&nar_path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a NAR for reading, optionally a byte range of it; `None` when it is not stored.
    pub async fn read_nar(
        &self,
        key: &NarKey,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobRead>, StoreError> {
        if let Some(local) = &self.local {
            let Some(OpenFile { file, size, path }) = local.open_nar(key).await? else {
                return Ok(None);
            };
            let span = range.map_or(0..size, |r| r.start..r.end);
            if span.end > size {
                return Err(StoreError::ReadFile {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("range ends at {} but the file has {size} bytes", span.end),
                    ),
                });
            }
            return Ok(Some(BlobRead {
                total_size: size,
                stream: sendable_reads(file, path, span),
            }));
        }
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end)),
            ..GetOptions::default()
        };
        match self.inner.get_opts(&nar_path(key), options).await {
            Ok(result) => {
                let total_size = result.meta.size;
                let stream = match result.payload {
                    GetResultPayload::File(file, path) => {
                        positional_reads(file, path, result.range)
                    }
                    GetResultPayload::Stream(s) => s.map(|r| r.map_err(StoreError::from)).boxed(),
                };
                Ok(Some(BlobRead { total_size, stream }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a NAR from a local file, streaming it so memory stays flat whatever its size. The
    /// object appears atomically: a reader sees either nothing or the whole file. On local
    /// storage the file is hard-linked into place when it can be (the caller's file stays
    /// valid, and must not be written to afterwards).
    pub async fn put_nar_from_file(&self, key: &NarKey, file: &Path) -> Result<(), StoreError> {
        if let Some(local) = &self.local
            && local.link_nar(key, file).await?
        {
            return Ok(());
        }
        let read_err = |source| StoreError::ReadFile {
            path: file.to_path_buf(),
            source,
        };
        let mut f = tokio::fs::File::open(file).await.map_err(read_err)?;
        let len = f.metadata().await.map_err(read_err)?.len();
        let path = nar_path(key);
        if len <= SINGLE_PUT_LIMIT {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await.map_err(read_err)?;
            self.inner.put(&path, PutPayload::from(buf)).await?;
            return Ok(());
        }
        let upload = self.inner.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_SIZE);
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    writer.abort().await.ok();
                    return Err(read_err(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                writer.abort().await.ok();
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        // `finish` aborts when completing fails, not when a last part does: wait for the parts
        // here, so a failed upload never leaves its parts behind (S3 keeps and bills them).
        if let Err(e) = writer.wait_for_capacity(0).await {
            writer.abort().await.ok();
            return Err(e.into());
        }
        writer.finish().await?;
        Ok(())
    }

    /// Makes the objects written so far durable before the database names them: on local
    /// storage, one sync of the file system (chunk files are written without a sync each);
    /// object storage is durable once a write returns.
    pub async fn sync_written(&self) -> Result<(), StoreError> {
        match &self.local {
            Some(local) => local.sync().await,
            None => Ok(()),
        }
    }

    /// Deletes staging files of writes killed half-way, older than `older_than` (local storage
    /// only; object storage keeps nothing of an unfinished single write, and aborts multipart
    /// ones). Returns how many were deleted.
    pub async fn sweep_staging_files(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, StoreError> {
        match &self.local {
            Some(local) => local.sweep_staging_files(older_than).await,
            None => Ok(0),
        }
    }

    /// Staging files of killed writes older than `older_than` (local storage only), for fsck.
    pub async fn staging_files(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<std::path::PathBuf>, StoreError> {
        match &self.local {
            Some(local) => local.staging_files(older_than).await,
            None => Ok(Vec::new()),
        }
    }

    /// Removes a NAR; removing one that is not there is not an error.
    pub async fn delete_nar(&self, key: &NarKey) -> Result<(), StoreError> {
        self.delete_nars(std::slice::from_ref(key)).await
    }

    /// Removes NARs, many at once (an eviction batch frees hundreds): on local storage in one
    /// blocking call, elsewhere through the backend's bulk deletion (S3's `DeleteObjects`,
    /// Azure's batch requests; a few requests at a time where there is none), not one request
    /// after another. Removing one that is not there is not an error.
    pub async fn delete_nars(&self, keys: &[NarKey]) -> Result<(), StoreError> {
        self.delete_objects(keys.iter().map(nar_path).collect())
            .await
    }

    /// Removes objects by path, many at once (see [`Self::delete_nars`]); one that is not
    /// there is not an error.
    async fn delete_objects(&self, paths: Vec<ObjectPath>) -> Result<(), StoreError> {
        if let Some(local) = &self.local {
            return local.delete_files(&paths).await;
        }
        let paths = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.inner.delete_stream(paths);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Stores a chunk's compressed frame under its hash. Idempotent: storing a chunk that is
    /// already there rewrites the same bytes, atomically, so concurrent ingests of NARs sharing
    /// chunks need no coordination. The caller vouches that `frame` decodes to `hash` (the
    /// [`Chunker`](crate::Chunker) guarantees it).
    pub async fn put_chunk(&self, hash: &ChunkHash, frame: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&chunk_path(hash), PutPayload::from_bytes(frame))
            .await?;
        Ok(())
    }

    /// Stores the frames of `chunks` whose chunk is not stored yet (see [`Self::put_chunk`]):
    /// on local storage in one blocking call, elsewhere a few requests at a time.
    pub async fn put_missing_chunks(
        &self,
        chunks: Vec<(ChunkHash, Bytes)>,
    ) -> Result<(), StoreError> {
        if let Some(local) = &self.local {
            return local.put_missing_chunks(chunks).await;
        }
        futures::stream::iter(chunks)
            .map(|(hash, frame)| async move {
                if !self.has_chunk(&hash).await? {
                    self.put_chunk(&hash, frame).await?;
                }
                Ok::<_, StoreError>(())
            })
            .buffer_unordered(CHUNK_UPLOADS_AT_ONCE)
            .try_collect::<()>()
            .await
    }

    /// Whether a chunk is stored; costs one metadata request. Used to skip uploads of chunks
    /// shared with NARs already stored.
    pub async fn has_chunk(&self, hash: &ChunkHash) -> Result<bool, StoreError> {
        match self.inner.head(&chunk_path(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A chunk's compressed frame, or `None` when it is not stored. Frames are small (at most a
    /// few hundred KiB), so they are read whole; check them with
    /// [`ChunkDecoder`](crate::chunk::ChunkDecoder) before trusting the bytes.
    pub async fn read_chunk(&self, hash: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(&chunk_path(hash)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored frames of a run of chunks given with their recorded stored sizes, in order,
    /// `None` for each one not stored. Local storage reads them into one buffer in one blocking
    /// call (a frame shorter than recorded is an error there); other backends fetch them
    /// concurrently, whole.
    pub async fn read_chunks(
        &self,
        chunks: &[(ChunkHash, u64)],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        if let Some(local) = &self.local {
            return local.read_chunks(chunks).await;
        }
        futures::future::try_join_all(chunks.iter().map(|(h, _)| self.read_chunk(h))).await
    }

    /// Whether every one of `hashes` is stored, so a 200 is only sent when the whole body can
    /// follow. Local storage checks them in one blocking call; other backends ask
    /// `PRESENCE_CHECKS` at a time.
    pub async fn all_chunks_present(&self, hashes: &[ChunkHash]) -> Result<bool, StoreError> {
        if let Some(local) = &self.local {
            return local.all_chunks_present(hashes).await;
        }
        let mut checks = futures::stream::iter(hashes.to_vec())
            .map(|hash| {
                let store = self.clone();
                async move { store.has_chunk(&hash).await }
            })
            .buffer_unordered(PRESENCE_CHECKS);
        while let Some(present) = checks.next().await {
            if !present? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes a chunk; removing one that is not there is not an error, so a sweep can be
    /// rerun after a crash.
    pub async fn delete_chunk(&self, hash: &ChunkHash) -> Result<(), StoreError> {
        self.delete_chunks(std::slice::from_ref(hash)).await
    }

    /// Removes chunks, many at once (the collector frees a batch at a time; see
    /// [`Self::delete_nars`]); removing one that is not there is not an error.
    pub async fn delete_chunks(&self, hashes: &[ChunkHash]) -> Result<(), StoreError> {
        self.delete_objects(hashes.iter().map(chunk_path).collect())
            .await
    }

    /// Every stored chunk, read from storage alone (no database), for garbage collection and
    /// fsck. Objects under `chunks/` whose key is not a chunk key are skipped, never reported.
    /// Order is unspecified.
    pub fn list_chunks(&self) -> BoxStream<'static, Result<ChunkHash, StoreError>> {
        self.inner
            .list(Some(&ObjectPath::from(CHUNK_DIR)))
            .filter_map(|item| {
                futures::future::ready(match item {
                    Ok(meta) => chunk_from_storage_key(meta.location.as_ref()).map(Ok),
                    Err(e) => Some(Err(e.into())),
                })
            })
            .boxed()
    }
}

/// A stored object as a storage listing reports it, for fsck: sizes catch truncated files, ages
/// tell a leftover from a write still in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredObject<K> {
    /// What the object is (a NAR file's key, a chunk's hash).
    pub key: K,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: std::time::SystemTime,
}

/// Turns a listing entry into a typed object, skipping keys `parse` does not recognise.
fn stored_object<K>(
    item: object_store::Result<object_store::ObjectMeta>,
    parse: impl Fn(&str) -> Option<K>,
) -> Option<Result<StoredObject<K>, StoreError>> {
    match item {
        Ok(meta) => parse(meta.location.as_ref()).map(|key| {
            Ok(StoredObject {
                key,
                size: meta.size,
                last_modified: meta.last_modified.into(),
            })
        }),
        Err(e) => Some(Err(e.into())),
    }
}

impl BlobStore {
    /// The stored whole NAR files that `keep` selects, with their sizes and ages, read from
    /// storage alone (no database), for fsck. NAR files share one flat directory, so a caller
    /// that must bound its memory lists them in several passes, each keeping one share of the
    /// keys. Objects under `nar/` whose name is not a NAR file name are skipped, never
    /// reported; order is unspecified.
    pub async fn list_nars_where(
        &self,
        keep: impl Fn(&NarKey) -> bool,
    ) -> Result<Vec<StoredObject<NarKey>>, StoreError> {
        let listing = self
            .inner
            .list(Some(&ObjectPath::from("nar")))
            .filter_map(|item| {
                futures::future::ready(stored_object(item, |location| {
                    let name = location.strip_prefix("nar/")?;
                    NarKey::parse_file_name(name).ok().filter(&keep)
                }))
            });
        futures::TryStreamExt::try_collect(listing).await
    }

    /// The stored chunks whose hash starts with the byte `prefix` (one of the 256 directories
    /// under `chunks/`, see [`chunk_storage_key`]), with sizes and ages: fsck compares storage
    /// and rows one directory at a time, so its memory is that of one directory whatever the
    /// number of chunks. Order is unspecified.
    pub async fn list_chunk_directory(
        &self,
        prefix: u8,
    ) -> Result<Vec<StoredObject<ChunkHash>>, StoreError> {
        let directory = ObjectPath::from_iter([CHUNK_DIR, format!("{prefix:02x}").as_str()]);
        let listing = self
            .inner
            .list(Some(&directory))
            .filter_map(|item| futures::future::ready(stored_object(item, chunk_from_storage_key)));
        futures::TryStreamExt::try_collect(listing).await
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn an_emulator_key_file_names_its_http_endpoint() {
        assert!(names_http_endpoint(
            r#"{"gcs_base_url": "http://127.0.0.1:4443", "disable_oauth": true}"#
        ));
        assert!(!names_http_endpoint(
            r#"{"gcs_base_url":"https://storage.example"}"#
        ));
        assert!(!names_http_endpoint(r#"{"client_email": "a@b"}"#));
    }
    use ncps_nix::{Compression, Sha256Hash};

    #[tokio::test]
    async fn lists_nars_and_chunks_with_sizes_and_ages() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        let key = NarKey::new(Sha256Hash::digest(b"x"), Compression::Zstd);
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        store.put_nar_from_file(&key, &file).await.unwrap();
        std::fs::write(root.join("nar/not-a-nar"), b"?").unwrap();
        let chunk = ChunkHash::digest(b"c");
        store
            .put_chunk(&chunk, Bytes::from_static(b"frame"))
            .await
            .unwrap();

        let nars = store.list_nars_where(|_| true).await.unwrap();
        assert_eq!(nars.len(), 1);
        assert_eq!((nars[0].key, nars[0].size), (key, 5));
        let age = nars[0].last_modified.elapsed().unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(600), "{age:?}");
        assert!(
            store
                .list_nars_where(|k| *k != key)
                .await
                .unwrap()
                .is_empty()
        );
        let prefix = chunk.as_bytes()[0];
        let chunks = store.list_chunk_directory(prefix).await.unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].key, chunks[0].size), (chunk, 5));
        let other = store.list_chunk_directory(prefix.wrapping_add(1)).await;
        assert!(other.unwrap().is_empty(), "another directory lists nothing");

        let empty = BlobStore::local(&dir.path().join("empty")).unwrap();
        assert!(empty.list_nars_where(|_| true).await.unwrap().is_empty());
        assert!(empty.list_chunk_directory(0).await.unwrap().is_empty());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::TryStreamExt;
    use ncps_nix::{Compression, Sha256Hash};

    async fn collect(read: BlobRead) -> Vec<u8> {
        let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        chunks.concat()
    }

    fn key_for(data: &[u8]) -> NarKey {
        NarKey::new(Sha256Hash::digest(data), Compression::Xz)
    }

    /// Object storage whose multipart parts fail, recording whether uploads were aborted.
    #[derive(Debug, Default)]
    struct FailingParts {
        inner: object_store::memory::InMemory,
        aborted: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::fmt::Display for FailingParts {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FailingParts")
        }
    }

    #[derive(Debug)]
    struct FailingUpload(Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait::async_trait]
    impl object_store::MultipartUpload for FailingUpload {
        fn put_part(&mut self, _data: PutPayload) -> object_store::UploadPart {
            Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "FailingParts",
                    source: "the part was refused".into(),
                })
            })
        }

        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            unreachable!("a failed upload is never completed")
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingParts {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            _location: &ObjectPath,
            _opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            Ok(Box::new(FailingUpload(self.aborted.clone())))
        }

        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
            self.inner.delete(location).await
        }

        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }

        async fn copy_if_not_exists(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
        ) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// A file already under the key (the same size, damaged) is replaced by the verified one.
    #[tokio::test]
    async fn a_damaged_file_under_the_key_is_replaced_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let data = b"the verified bytes of a NAR".to_vec();
        let key = key_for(&data);
        let damaged = dir.path().join("damaged");
        std::fs::write(&damaged, vec![0u8; data.len()]).unwrap();
        store.put_nar_from_file(&key, &damaged).await.unwrap();
        let verified = dir.path().join("verified");
        std::fs::write(&verified, &data).unwrap();
        store.put_nar_from_file(&key, &verified).await.unwrap();
        let read = store.read_nar(&key, None).await.unwrap().unwrap();
        assert_eq!(collect(read).await, data);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("store/nar"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[tokio::test]
    async fn written_objects_can_be_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        store
            .put_chunk(&ChunkHash::digest(b"c"), Bytes::from_static(b"frame"))
            .await
            .unwrap();
        store.sync_written().await.unwrap();
        let remote = BlobStore::from_object_store(Arc::new(object_store::memory::InMemory::new()));
        remote.sync_written().await.unwrap();
    }

    /// Staging files of killed writes go once old; fresh ones (writes in progress) and stored
    /// objects stay.
    #[tokio::test]
    async fn staging_files_of_killed_writes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let hash = ChunkHash::digest(b"chunk");
        store
            .put_chunk(&hash, Bytes::from_static(b"frame"))
            .await
            .unwrap();
        let stored = dir.path().join(chunk_storage_key(&hash));
        let old = stored.with_file_name(format!(
            "{}#3",
            stored.file_name().unwrap().to_str().unwrap()
        ));
        let fresh = stored.with_file_name(format!(
            "{}#4",
            stored.file_name().unwrap().to_str().unwrap()
        ));
        for file in [&old, &fresh] {
            std::fs::write(file, b"half a frame").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let swept = store
            .sweep_staging_files(std::time::Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(swept, 1);
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(stored.exists());
    }

    /// A multipart upload whose parts fail is aborted, so object storage keeps no parts.
    #[tokio::test]
    async fn a_failed_multipart_upload_is_aborted() {
        let failing = Arc::new(FailingParts::default());
        let aborted = failing.aborted.clone();
        let store = BlobStore::from_object_store(failing);
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; SINGLE_PUT_LIMIT as usize * 2 + 1];
        let file = dir.path().join("nar");
        std::fs::write(&file, &data).unwrap();
        let key = key_for(&data);
        assert!(store.put_nar_from_file(&key, &file).await.is_err());
        assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(store.nar_size(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn put_read_range_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        // Larger than one part, so the multipart path is exercised too.
        for len in [10usize, SINGLE_PUT_LIMIT as usize + 12345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let file = dir.path().join("tmp");
            std::fs::write(&file, &data).unwrap();
            let key = key_for(&data);
            assert_eq!(store.nar_size(&key).await.unwrap(), None);
            store.put_nar_from_file(&key, &file).await.unwrap();
            assert_eq!(store.nar_size(&key).await.unwrap(), Some(len as u64));
            let whole = store.read_nar(&key, None).await.unwrap().unwrap();
            assert_eq!(whole.total_size, len as u64);
            assert_eq!(collect(whole).await, data);
            let range = ByteRange { start: 3, end: 9 };
            let part = store.read_nar(&key, Some(range)).await.unwrap().unwrap();
            assert_eq!(collect(part).await, &data[3..9]);
            store.delete_nar(&key).await.unwrap();
            assert!(store.read_nar(&key, None).await.unwrap().is_none());
            store.delete_nar(&key).await.unwrap();
        }
    }

    /// A run of `count` chunk frames (frame `i` is `len + i` bytes of `i`) as a chunk list
    /// names them, every one stored except the last: the frames and the run.
    pub(super) async fn run_missing_its_last(
        store: &BlobStore,
        count: u8,
        len: usize,
    ) -> (Vec<Bytes>, Vec<(ChunkHash, u64)>) {
        let frames: Vec<Bytes> = (0..count)
            .map(|i| Bytes::from(vec![i; len + usize::from(i)]))
            .collect();
        let run: Vec<(ChunkHash, u64)> = (0..count)
            .zip(&frames)
            .map(|(i, f)| (ChunkHash::digest(&[i]), f.len() as u64))
            .collect();
        for ((hash, _), frame) in run.iter().zip(&frames).take(frames.len() - 1) {
            store.put_chunk(hash, frame.clone()).await.unwrap();
        }
        (frames, run)
    }

    /// Drops a stored file from the page cache, so reading it would wait for the disk.
    fn evict(path: &std::path::Path) {
        let file = std::fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }

    /// A stored NAR partly in the page cache comes back whole and in order: the cached start
    /// of a piece is read on the runtime thread, the rest from the first byte that is not on
    /// the blocking pool; likewise a run of chunk frames whose middle one is not cached.
    #[tokio::test]
    async fn stored_bytes_partly_in_the_page_cache_are_read_whole() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        let data: Vec<u8> = (0..400_000usize).map(|i| (i * 13 % 251) as u8).collect();
        let file = dir.path().join("download");
        std::fs::write(&file, &data).unwrap();
        let key = key_for(&data);
        store.put_nar_from_file(&key, &file).await.unwrap();
        let stored = root.join("nar").join(key.file_name().as_str());
        // Only the start of the first piece in the page cache (read back without read-ahead).
        evict(&stored);
        let warm = std::fs::File::open(&stored).unwrap();
        rustix::fs::fadvise(&warm, 0, None, rustix::fs::Advice::Random).unwrap();
        warm.read_exact_at(&mut [0u8; 1000], 0).unwrap();
        let mut first_piece = vec![0u8; 128 * 1024];
        let cached = crate::nowait::read_at(&warm, &mut first_piece, 0);
        assert!(
            cached > 0 && cached < first_piece.len(),
            "the first piece is not partly cached ({cached} bytes)"
        );
        let whole = store.read_nar(&key, None).await.unwrap().unwrap();
        assert_eq!(collect(whole).await, data);
        evict(&stored);
        let range = ByteRange {
            start: 5000,
            end: 390_000,
        };
        let part = store.read_nar(&key, Some(range)).await.unwrap().unwrap();
        assert_eq!(collect(part).await, &data[5000..390_000]);

        let (frames, run) = run_missing_its_last(&store, 4, 5000).await;
        evict(&root.join(crate::chunk::chunk_storage_key(&run[1].0)));
        let read = store.read_chunks(&run).await.unwrap();
        let expected: Vec<Option<Bytes>> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| (i < 3).then(|| f.clone()))
            .collect();
        assert_eq!(read, expected);
    }

    #[tokio::test]
    async fn a_local_put_links_the_file_and_keeps_it_valid() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let data = b"some nar bytes".to_vec();
        let file = dir.path().join("download");
        std::fs::write(&file, &data).unwrap();
        let key = key_for(&data);
        store.put_nar_from_file(&key, &file).await.unwrap();
        // Stored again (a second replica of the same download): same content, no error.
        store.put_nar_from_file(&key, &file).await.unwrap();
        std::fs::remove_file(&file).unwrap();
        let read = store.read_nar(&key, None).await.unwrap().unwrap();
        assert_eq!(collect(read).await, data);
        // A range past the end of the stored file is refused, not answered short.
        let past = ByteRange { start: 0, end: 100 };
        assert!(store.read_nar(&key, Some(past)).await.is_err());
    }

    /// Stores five NARs, deletes three of them and one that was never stored in one call, and
    /// checks that exactly the other two are left.
    pub(super) async fn deletes_many_nars_at_once(store: &BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Vec::new();
        for i in 0..5u8 {
            let data = vec![i; 100 + usize::from(i)];
            let file = dir.path().join(format!("nar{i}"));
            std::fs::write(&file, &data).unwrap();
            let key = key_for(&data);
            store.put_nar_from_file(&key, &file).await.unwrap();
            keys.push(key);
        }
        let never_stored = key_for(b"never stored");
        store
            .delete_nars(&[keys[0], keys[2], never_stored, keys[4]])
            .await
            .unwrap();
        for (i, key) in keys.iter().enumerate() {
            let kept = store.nar_size(key).await.unwrap().is_some();
            assert_eq!(kept, i == 1 || i == 3, "NAR {i}");
        }
        store.delete_nars(&[]).await.unwrap();
    }

    #[tokio::test]
    async fn many_nars_are_deleted_at_once_locally_and_on_object_storage() {
        let dir = tempfile::tempdir().unwrap();
        deletes_many_nars_at_once(&BlobStore::local(&dir.path().join("store")).unwrap()).await;
        let memory = Arc::new(object_store::memory::InMemory::new());
        deletes_many_nars_at_once(&BlobStore::from_object_store(memory)).await;
    }

    mod services {
        /// S3's bulk deletion (`DeleteObjects`), on Garage.
        #[tokio::test]
        async fn many_nars_are_deleted_at_once_on_s3() {
            let s3 = ncps_test_services::s3();
            let bucket = format!("ncps-store-{}-{}", std::process::id(), line!());
            let garage = |args: &[&str]| {
                let status = std::process::Command::new(ncps_test_services::tool("garage"))
                    .args(["-c", s3.garage_config.as_str()])
                    .args(args)
                    .status()
                    .unwrap();
                assert!(status.success(), "garage {args:?}");
            };
            garage(&["bucket", "create", &bucket]);
            garage(&[
                "bucket", "allow", "--read", "--write", &bucket, "--key", &s3.key_id,
            ]);
            let store = super::BlobStore::s3(&super::S3Config {
                bucket,
                endpoint: Some(s3.endpoint.clone()),
                region: Some("garage".into()),
                access_key_id: Some(s3.key_id.clone()),
                secret_access_key: Some(s3.secret.clone()),
                force_path_style: true,
            })
            .unwrap();
            super::deletes_many_nars_at_once(&store).await;
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use crate::chunk::{compress_chunk, decompress_chunk};
    use futures::TryStreamExt;

    #[tokio::test]
    async fn many_chunks_are_deleted_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let memory = BlobStore::from_object_store(Arc::new(object_store::memory::InMemory::new()));
        for store in [store, memory] {
            let chunks: Vec<(ChunkHash, Bytes)> = (0..4u32)
                .map(|i| {
                    let plain = format!("chunk {i}").into_bytes();
                    (
                        ChunkHash::digest(&plain),
                        compress_chunk(&plain, 1).unwrap(),
                    )
                })
                .collect();
            let hashes: Vec<ChunkHash> = chunks.iter().map(|(h, _)| *h).collect();
            store.put_missing_chunks(chunks).await.unwrap();
            let never_stored = ChunkHash::digest(b"never stored");
            store
                .delete_chunks(&[hashes[0], never_stored, hashes[2]])
                .await
                .unwrap();
            for (i, hash) in hashes.iter().enumerate() {
                assert_eq!(
                    store.has_chunk(hash).await.unwrap(),
                    i % 2 == 1,
                    "chunk {i}"
                );
            }
        }
    }

    #[tokio::test]
    async fn missing_chunks_are_written_in_one_call_and_stored_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        let chunks: Vec<(ChunkHash, Bytes)> = (0..40u32)
            .map(|i| {
                let plain = format!("chunk {i}").repeat(50).into_bytes();
                (
                    ChunkHash::digest(&plain),
                    compress_chunk(&plain, 3).unwrap(),
                )
            })
            .collect();
        // One already stored, with bytes a rewrite would change.
        let (kept, _) = &chunks[7];
        store
            .put_chunk(kept, Bytes::from_static(b"stored"))
            .await
            .unwrap();

        store.put_missing_chunks(chunks.clone()).await.unwrap();
        for (hash, frame) in &chunks {
            let read = store.read_chunk(hash).await.unwrap().expect("stored");
            if hash == kept {
                assert_eq!(
                    read,
                    Bytes::from_static(b"stored"),
                    "a stored chunk was rewritten"
                );
            } else {
                assert_eq!(&read, frame);
            }
        }
        // Twice is fine, and no staging file is left behind.
        store.put_missing_chunks(chunks.clone()).await.unwrap();
        let listed: Vec<_> = store.list_chunks().try_collect().await.unwrap();
        assert_eq!(listed.len(), chunks.len());
        assert!(
            store
                .staging_files(std::time::Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn chunk_put_has_read_delete_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        let mut hashes = Vec::new();
        for i in 0..5u32 {
            let plain = format!("chunk number {i}").repeat(100).into_bytes();
            let hash = ChunkHash::digest(&plain);
            let frame = compress_chunk(&plain, 3).unwrap();
            assert!(!store.has_chunk(&hash).await.unwrap());
            assert_eq!(store.read_chunk(&hash).await.unwrap(), None);
            store.put_chunk(&hash, frame.clone()).await.unwrap();
            // A second put of the same chunk is fine.
            store.put_chunk(&hash, frame.clone()).await.unwrap();
            assert!(store.has_chunk(&hash).await.unwrap());
            let read = store.read_chunk(&hash).await.unwrap().unwrap();
            assert_eq!(read, frame);
            assert_eq!(decompress_chunk(&hash, &read).unwrap(), plain);
            assert!(root.join(chunk_storage_key(&hash)).is_file());
            hashes.push(hash);
        }

        // Foreign files under chunks/ are not reported; NARs are not chunks.
        let h = hashes[0].to_string();
        std::fs::write(root.join("chunks/README"), "hi").unwrap();
        std::fs::create_dir_all(root.join("chunks/zz")).unwrap();
        std::fs::write(root.join(format!("chunks/zz/{h}.zst")), "misplaced").unwrap();
        std::fs::write(root.join(format!("chunks/{}/{h}.tmp", &h[..2])), "partial").unwrap();
        std::fs::create_dir_all(root.join("nar")).unwrap();
        std::fs::write(root.join("nar/x.nar"), "nar").unwrap();

        let mut listed: Vec<ChunkHash> = store.list_chunks().try_collect().await.unwrap();
        listed.sort();
        let mut expected = hashes.clone();
        expected.sort();
        assert_eq!(listed, expected);

        store.delete_chunk(&hashes[0]).await.unwrap();
        store.delete_chunk(&hashes[0]).await.unwrap();
        assert!(!store.has_chunk(&hashes[0]).await.unwrap());
        assert_eq!(store.read_chunk(&hashes[0]).await.unwrap(), None);
        let listed: Vec<ChunkHash> = store.list_chunks().try_collect().await.unwrap();
        assert_eq!(listed.len(), 4);
        assert!(!listed.contains(&hashes[0]));
    }

    #[tokio::test]
    async fn runs_of_chunks_are_read_together_and_checked_for_presence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let local = BlobStore::local(&root).unwrap();
        let remote = BlobStore::from_object_store(Arc::new(
            LocalFileSystem::new_with_prefix(&root).unwrap(),
        ));
        let (frames, run) = super::tests::run_missing_its_last(&local, 3, 100).await;
        let hashes: Vec<ChunkHash> = run.iter().map(|(hash, _)| *hash).collect();
        for store in [&local, &remote] {
            let read = store.read_chunks(&run).await.unwrap();
            assert_eq!(read[0].as_ref(), Some(&frames[0]));
            assert_eq!(read[1].as_ref(), Some(&frames[1]));
            assert_eq!(read[2], None);
            assert!(store.all_chunks_present(&hashes[..2]).await.unwrap());
            assert!(!store.all_chunks_present(&hashes).await.unwrap());
        }
        // A frame shorter than recorded is an error, never a short body.
        let too_long = [(hashes[0], frames[0].len() as u64 + 1)];
        assert!(local.read_chunks(&too_long).await.is_err());
    }

    #[tokio::test]
    async fn list_chunks_on_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let listed: Vec<ChunkHash> = store.list_chunks().try_collect().await.unwrap();
        assert!(listed.is_empty());
    }
}
