//! Fast paths for storage on the local file system.
//!
//! object_store's local backend answers every call with its own blocking task, metadata lookup
//! and path checks, copies file reads through an intermediate buffer and stores a file by copying
//! it. On the hot paths (streaming a stored NAR, reading a run of chunk frames, checking that a
//! NAR's chunks exist, keeping a verified download) plain system calls on the storage root do the
//! same work with fewer copies, fewer thread hops and no second write of every byte. Keys map to
//! the very files object_store uses, so both paths see the same objects.

use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::NarKey;

use crate::chunk::{ChunkHash, chunk_storage_key};
use crate::{StoreError, mapped, nowait};

/// Size of the pieces a stored file is sent in. Each piece is read straight into the buffer that
/// goes to the socket (no intermediate copy); large enough for the kernel's read-ahead and few
/// thread hops (~12 000 per second at 3 GB/s), small enough that 100 concurrent downloads hold
/// about 25 MiB of buffers.
const FILE_PIECE: u64 = 128 * 1024;

/// Buffers for runs of chunk frames are allocated in whole multiples of this. Runs vary in
/// length (frames do); a few size classes let a freed buffer fit the next run, where exact
/// sizes left glibc holding memory in odd-sized holes (100 concurrent chunked downloads of a
/// 1 GB NAR crept up by a few MiB per round of downloads).
const RUN_ALLOC_STEP: usize = 64 * 1024;

/// A stored file opened for reading.
pub(crate) struct OpenFile {
    pub file: std::fs::File,
    pub size: u64,
    pub path: PathBuf,
}

/// The storage root of a local [`BlobStore`](crate::BlobStore).
#[derive(Debug)]
pub(crate) struct LocalDir {
    root: PathBuf,
}

/// Runs file-system work on the blocking pool; `path` names it in errors.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    on_blocking_pool(work)
        .await
        .map_err(|source| StoreError::ReadFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs `work` on the blocking pool; a task that panicked is an I/O error.
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("file task failed: {e}"))))
}

/// A unique staging name beside `path`, in object_store's form (`<name>#<digits>`), which
/// listings skip and the staging sweep removes should the process die before the rename.
fn staging_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("chunk");
    path.with_file_name(format!("{name}#{}{n:010}", std::process::id()))
}

/// `Ok(None)` for a file that is not there, so "not stored" is not an error.
fn unless_missing<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pieces read ahead of the one being sent: the next read runs while the socket takes the
/// previous piece, as a kernel read-ahead would, for one more piece of memory per download.
const PIECES_AHEAD: usize = 2;

/// Streams `range` of an open file in positional reads, one piece per blocking call.
pub(crate) fn positional_reads(
    file: std::fs::File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    pieces(Arc::new(file), path.into(), range)
}

/// Streams `range` of a stored file for sending: windows mapped in place where the file is in
/// the page cache (which a connection can pass to `sendfile`, see [`crate::mapped`]), positional
/// reads elsewhere and for small spans.
pub(crate) fn sendable_reads(
    file: std::fs::File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    let (file, path): (Arc<std::fs::File>, Arc<Path>) = (Arc::new(file), path.into());
    if range.end - range.start < mapped::MAP_FROM {
        return pieces(file, path, range);
    }
    let end = range.end;
    futures::stream::iter((range.start..end).step_by(mapped::WINDOW as usize))
        .map(move |start| {
            let window = start..(start + mapped::WINDOW).min(end);
            let len = (window.end - window.start) as usize;
            match mapped::resident_window(&file, start, len) {
                Some(bytes) => futures::stream::once(async { Ok(bytes) }).boxed(),
                None => pieces(Arc::clone(&file), Arc::clone(&path), window),
            }
        })
        .flatten()
        .boxed()
}

/// `range` of `file` in [`FILE_PIECE`]s, [`PIECES_AHEAD`] ahead: each read here when the page
/// cache holds it (see [`nowait`]), its remainder otherwise on the blocking pool.
fn pieces(
    file: Arc<std::fs::File>,
    path: Arc<Path>,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    let end = range.end;
    let offsets = (range.start..end).step_by(FILE_PIECE as usize);
    futures::stream::iter(offsets)
        .map(move |offset| {
            let file = Arc::clone(&file);
            let path = Arc::clone(&path);
            let len = (end - offset).min(FILE_PIECE) as usize;
            // Allocated here, on a runtime worker, not on the blocking thread: glibc keeps
            // memory freed into a blocking thread's arena, and 100 downloads would spread
            // their pieces over a dozen arenas.
            let mut buf = vec![0u8; len];
            async move {
                let cached = nowait::read_at(&file, &mut buf, offset);
                if cached == len {
                    return Ok(Bytes::from(buf));
                }
                blocking(&path, move || {
                    file.read_exact_at(&mut buf[cached..], offset + cached as u64)?;
                    Ok(Bytes::from(buf))
                })
                .await
            }
        })
        .buffered(PIECES_AHEAD)
        .boxed()
}

/// Whether a read may wait for the disk (on the blocking pool) or must not (on a runtime thread).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Yes,
    No,
}

/// Reads the frames of a run of chunk `files` (path, stored size) into their places in `buf`,
/// from the first one not yet in `found` (whether each is stored), pushing to `found` as it
/// goes. Without waiting, it stops at the first frame not wholly in memory.
fn read_frames(
    files: &[(PathBuf, usize)],
    buf: &mut [u8],
    found: &mut Vec<bool>,
    waiting: Waiting,
) -> std::io::Result<()> {
    let start: usize = files[..found.len()].iter().map(|(_, size)| size).sum();
    let mut rest = &mut buf[start..];
    for (file, size) in &files[found.len()..] {
        let (frame, tail) = rest.split_at_mut(*size);
        rest = tail;
        let named = |e: std::io::Error| {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            std::io::Error::new(e.kind(), format!("chunk {name}: {e}"))
        };
        let present = if waiting == Waiting::No {
            let Some(opened) = nowait::open(file) else {
                return Ok(());
            };
            match unless_missing(opened).map_err(named)? {
                Some(f) if nowait::read_at(&f, frame, 0) == frame.len() => true,
                Some(_) => return Ok(()),
                None => false,
            }
        } else {
            let read = |f: std::fs::File| f.read_exact_at(frame, 0);
            unless_missing(std::fs::File::open(file))
                .and_then(|f| f.map(read).transpose())
                .map_err(named)?
                .is_some()
        };
        found.push(present);
    }
    Ok(())
}

impl LocalDir {
    /// Storage below `root`, which must exist.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn nar_file(&self, key: &NarKey) -> PathBuf {
        self.root.join("nar").join(key.file_name().as_str())
    }

    fn chunk_file(&self, hash: &ChunkHash) -> PathBuf {
        self.root.join(chunk_storage_key(hash))
    }

    /// Opens a stored NAR: the file, its size and its path, or `None` when it is not stored.
    /// Opened here when its directory entry is in memory (see [`nowait`]), otherwise on the
    /// blocking pool.
    pub async fn open_nar(&self, key: &NarKey) -> Result<Option<OpenFile>, StoreError> {
        let path = self.nar_file(key);
        let with_size = |file: std::fs::File, path: PathBuf| -> std::io::Result<OpenFile> {
            // The inode of an open file is in memory: its size costs no disk access.
            let size = file.metadata()?.len();
            Ok(OpenFile { file, size, path })
        };
        if let Some(opened) = nowait::open(&path) {
            let open = unless_missing(opened)
                .and_then(|file| file.map(|file| with_size(file, path.clone())).transpose());
            return open.map_err(|source| StoreError::ReadFile { path, source });
        }
        let open = path.clone();
        blocking(&path, move || {
            unless_missing(std::fs::File::open(&open))?
                .map(|file| with_size(file, open))
                .transpose()
        })
        .await
    }

    /// Stores a verified file as a NAR by hard-linking it into place: no byte is copied, and the
    /// name appears atomically with the whole file behind it. `false` when linking is not
    /// possible (another file system, a file system without links); the caller then copies.
    ///
    /// Durable before it returns: the file's bytes and the directory entry are synced, so the
    /// database row written next never names a file that power loss could leave empty. A file
    /// already stored under the key is replaced (atomically, by rename), never trusted: it may
    /// be the damaged remains of an earlier write, and ours was verified just now.
    pub async fn link_nar(&self, key: &NarKey, file: &Path) -> Result<bool, StoreError> {
        let dest = self.nar_file(key);
        let source = file.to_path_buf();
        blocking(file, move || {
            let dir = dest.parent().expect("NAR files live in a directory");
            std::fs::create_dir_all(dir)?;
            std::fs::File::open(&source)?.sync_all()?;
            match std::fs::hard_link(&source, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let staged = staging_name(&dest);
                    let _ = std::fs::remove_file(&staged);
                    if std::fs::hard_link(&source, &staged).is_err() {
                        return Ok(false);
                    }
                    std::fs::rename(&staged, &dest)?;
                }
                Err(_) => return Ok(false),
            }
            std::fs::File::open(dir)?.sync_all()?;
            Ok(true)
        })
        .await
    }

    /// The stored frames of `chunks` (hash and stored size), in order, `None` for each one not
    /// stored: one buffer for the whole run (allocated on the calling worker, see
    /// [`positional_reads`]), filled here while the frames are in memory (see [`nowait`]) and
    /// from the first one that is not in one blocking call, each frame a slice of it.
    pub async fn read_chunks(
        &self,
        chunks: &[(ChunkHash, u64)],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let files: Vec<(PathBuf, usize)> = chunks
            .iter()
            .map(|(h, size)| (self.chunk_file(h), *size as usize))
            .collect();
        let total: usize = files.iter().map(|(_, size)| size).sum();
        let mut buf = Vec::with_capacity(total.div_ceil(RUN_ALLOC_STEP) * RUN_ALLOC_STEP);
        buf.resize(total, 0u8);
        let dir = self.root.join(crate::chunk::CHUNK_DIR);
        let mut found = Vec::with_capacity(files.len());
        let in_memory = read_frames(&files, &mut buf, &mut found, Waiting::No);
        let (buf, found) = match in_memory {
            Ok(()) if found.len() == files.len() => (buf, found),
            Ok(()) => {
                blocking(&dir, move || {
                    read_frames(&files, &mut buf, &mut found, Waiting::Yes)?;
                    Ok((buf, found))
                })
                .await?
            }
            Err(source) => return Err(StoreError::ReadFile { path: dir, source }),
        };
        let buf = Bytes::from(buf);
        let mut offset = 0;
        Ok(chunks
            .iter()
            .zip(found)
            .map(|((_, size), present)| {
                let frame = buf.slice(offset..offset + *size as usize);
                offset += *size as usize;
                present.then_some(frame)
            })
            .collect())
    }

    /// Deletes stored objects (by their object_store paths, which name files below the root)
    /// in one blocking call; one that is not there is not an error.
    pub async fn delete_files(&self, paths: &[object_store::path::Path]) -> Result<(), StoreError> {
        let files: Vec<PathBuf> = paths
            .iter()
            .map(|path| self.root.join(path.as_ref()))
            .collect();
        on_blocking_pool(move || {
            for file in files {
                if let Err(source) = unless_missing(std::fs::remove_file(&file)) {
                    return Ok(Err(StoreError::WriteFile { path: file, source }));
                }
            }
            Ok(Ok(()))
        })
        .await
        .map_err(|source| StoreError::WriteFile {
            path: self.root.clone(),
            source,
        })?
    }

    /// Makes everything written below the root durable: one `syncfs` for the whole file
    /// system, rather than an fsync per chunk file (a NAR has thousands of chunks).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        blocking(&self.root, move || {
            let dir = std::fs::File::open(&root)?;
            rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
        })
        .await
    }

    /// Deletes the staging files object_store leaves when a write is killed half-way
    /// (`<name>#<n>`, renamed into place only once complete): listings skip them, so nothing
    /// else would ever find them. Only files older than `older_than` go, so writes in progress
    /// (of this or another process) are left alone. Returns how many were deleted.
    pub async fn sweep_staging_files(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let files = self.staging_files(older_than).await?;
        blocking(&self.root, move || {
            let mut deleted = 0;
            for file in files {
                if unless_missing(std::fs::remove_file(file))?.is_some() {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Staging files of killed writes older than `older_than` (see
    /// [`LocalStore::sweep_staging_files`]), in path order.
    pub async fn staging_files(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let root = self.root.clone();
        blocking(&self.root, move || {
            let mut found = Vec::new();
            let mut dirs = vec![root];
            while let Some(dir) = dirs.pop() {
                let Some(entries) = unless_missing(std::fs::read_dir(&dir))? else {
                    continue;
                };
                for entry in entries {
                    let entry = entry?;
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        dirs.push(entry.path());
                        continue;
                    }
                    let name = entry.file_name();
                    let staging =
                        name.to_str()
                            .and_then(|n| n.rsplit_once('#'))
                            .is_some_and(|(_, n)| {
                                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                            });
                    if !kind.is_file() || !staging {
                        continue;
                    }
                    let Some(meta) = unless_missing(entry.metadata())? else {
                        continue;
                    };
                    if meta
                        .modified()?
                        .elapsed()
                        .is_ok_and(|age| age >= older_than)
                    {
                        found.push(entry.path());
                    }
                }
            }
            found.sort();
            Ok(found)
        })
        .await
    }

    /// Stores each frame whose chunk is not stored yet, all in one blocking call: an ingest
    /// writes thousands of chunks per gigabyte, and a metadata request plus a write through
    /// object_store cost two blocking hand-offs each. Each file appears atomically (written
    /// under a staging name, renamed into place), as object_store's would; a chunk written by a
    /// concurrent ingest meanwhile is simply replaced by the same bytes.
    pub async fn put_missing_chunks(
        &self,
        chunks: Vec<(ChunkHash, Bytes)>,
    ) -> Result<(), StoreError> {
        let files: Vec<(PathBuf, Bytes)> = chunks
            .into_iter()
            .map(|(hash, frame)| (self.chunk_file(&hash), frame))
            .collect();
        let dir = self.root.join(crate::chunk::CHUNK_DIR);
        on_blocking_pool(move || {
            for (path, frame) in &files {
                if unless_missing(std::fs::metadata(path))?.is_some() {
                    continue;
                }
                let staged = staging_name(path);
                if let Err(e) = std::fs::write(&staged, frame) {
                    if e.kind() != ErrorKind::NotFound {
                        return Err(e);
                    }
                    std::fs::create_dir_all(path.parent().expect("chunks live in a directory"))?;
                    std::fs::write(&staged, frame)?;
                }
                std::fs::rename(&staged, path)?;
            }
            Ok(())
        })
        .await
        .map_err(|source| StoreError::WriteFile { path: dir, source })
    }

    /// Whether every one of `hashes` is stored; one blocking call for the whole list.
    pub async fn all_chunks_present(&self, hashes: &[ChunkHash]) -> Result<bool, StoreError> {
        let files: Vec<PathBuf> = hashes.iter().map(|h| self.chunk_file(h)).collect();
        blocking(&self.root, move || {
            for file in &files {
                if unless_missing(std::fs::metadata(file))?.is_none() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }
}
