//! Single-flight NAR downloads with progressive readers.
//!
//! One [`Download`] per NAR key at a time. The download task appends to a temporary file and
//! publishes how many bytes are on disk; every client reads that file from the start and follows
//! the writer. The last byte is held back until the whole file verified, so a client can never
//! receive a complete body that turned out to be wrong: a failed download ends every reader
//! early, and Nix treats the short body as a failed transfer.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use ncps_db::NarOrigin;
use ncps_nix::{Compression, Sha256Hash};
use tempfile::TempPath;
use tokio::sync::watch;

use crate::CacheError;
use crate::temp::{TempFiles, TempKind};

/// Largest piece a reader sends at once.
const READ_PIECE: u64 = 256 * 1024;

/// Where a download stands; readers watch it.
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the temporary file.
    Running { written: u64, total: Option<u64> },
    /// The whole file (`size` bytes) is on disk and verified.
    Done { size: u64 },
    /// The download failed; nothing was cached.
    Failed(Arc<CacheError>),
}

/// One NAR being downloaded, keyed by its NarHash (several URLs may name the same NAR).
pub(crate) struct Download {
    key: Sha256Hash,
    nar_size: u64,
    origin: NarOrigin,
    compression: Compression,
    path: TempPath,
    progress: watch::Sender<Progress>,
}

impl Download {
    /// The NAR's hash and size (NarHash, NarSize).
    pub fn nar(&self) -> (Sha256Hash, u64) {
        (self.key, self.nar_size)
    }

    /// Where the NAR is fetched from.
    pub fn origin(&self) -> &NarOrigin {
        &self.origin
    }

    /// The compression of the bytes in the download's file.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The temporary file the download writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes a new state.
    pub fn set(&self, progress: Progress) {
        self.progress.send_replace(progress);
    }

    /// Records that bytes `0..written` are on disk.
    pub fn advance(&self, written: u64) {
        self.progress.send_modify(|p| {
            if let Progress::Running { written: w, .. } = p {
                *w = written;
            }
        });
    }

    /// Marks the download failed unless it already ended.
    pub fn fail(&self, error: CacheError) {
        let error = Arc::new(error);
        self.progress.send_if_modified(|p| match p {
            Progress::Connecting | Progress::Running { .. } => {
                *p = Progress::Failed(error.clone());
                true
            }
            Progress::Done { .. } | Progress::Failed(_) => false,
        });
    }

    /// Waits for the upstream's headers, so an upstream that fails at once gives the client a
    /// 502/504 instead of a 200 with no body. Returns the expected size, when known.
    pub async fn started(&self) -> Result<Option<u64>, CacheError> {
        let mut rx = self.progress.subscribe();
        let state = rx
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
            .map_err(|_| CacheError::Io(io::Error::other("download vanished")))?;
        match &*state {
            Progress::Failed(e) => Err(CacheError::Shared(e.clone())),
            Progress::Running { total, .. } => Ok(*total),
            Progress::Done { size } => Ok(Some(*size)),
            Progress::Connecting => unreachable!("waited for a later state"),
        }
    }

    /// A stream of the whole file that follows the writer.
    pub fn reader(self: Arc<Self>) -> BoxStream<'static, io::Result<Bytes>> {
        let state = Reader {
            rx: self.progress.subscribe(),
            download: self,
            file: None,
            pos: 0,
            ended: false,
        };
        stream::unfold(state, |mut r| async move {
            if r.ended {
                return None;
            }
            let item = r.next_piece().await?;
            r.ended = item.is_err();
            Some((item, r))
        })
        .boxed()
    }
}

struct Reader {
    download: Arc<Download>,
    rx: watch::Receiver<Progress>,
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    ended: bool,
}

impl Reader {
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let state = self.rx.borrow_and_update().clone();
            let readable = match &state {
                // Hold the last byte back until the file verified.
                Progress::Running { written, .. } => written.saturating_sub(1),
                Progress::Done { size } => *size,
                Progress::Connecting => 0,
                Progress::Failed(e) => {
                    return Some(Err(io::Error::other(format!("download failed: {e}"))));
                }
            };
            if self.pos < readable {
                return Some(self.read(readable - self.pos).await);
            }
            if matches!(state, Progress::Done { .. }) {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(io::Error::other("download ended unexpectedly")));
            }
        }
    }

    /// Reads the next piece: a window mapped from the file when the writer is at least a window
    /// ahead and its pages are in the page cache (the connection sends it with `sendfile`, see
    /// [`ncps_store::growing_file_window`]); otherwise opening the file (first time) and reading
    /// happen in one blocking call, at an explicit offset, into the buffer that is sent.
    async fn read(&mut self, available: u64) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        if let Some(window) = self
            .file
            .as_ref()
            .and_then(|file| ncps_store::growing_file_window(file, self.pos, available))
        {
            self.pos += window.len() as u64;
            return Ok(window);
        }
        let file = self.file.clone();
        let path = self.download.path().to_path_buf();
        let offset = self.pos;
        let mut buf = vec![0u8; available.min(READ_PIECE) as usize];
        let (file, buf) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let file = match file {
                Some(file) => file,
                None => Arc::new(std::fs::File::open(&path)?),
            };
            file.read_exact_at(&mut buf, offset)?;
            Ok((file, buf))
        })
        .await
        .map_err(io::Error::other)??;
        self.file = Some(file);
        self.pos += buf.len() as u64;
        Ok(Bytes::from(buf))
    }
}

/// The downloads in flight, by NAR key.
pub(crate) struct Downloads {
    temp: TempFiles,
    map: Mutex<HashMap<Sha256Hash, Arc<Download>>>,
    /// When the last download ended (or when the process started), for [`Downloads::idle_for`].
    last_ended: Mutex<Instant>,
}

impl Downloads {
    /// Downloads write their temporary files to `temp`.
    pub fn new(temp: TempFiles) -> Self {
        Self {
            temp,
            map: Mutex::new(HashMap::new()),
            last_ended: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256Hash, Arc<Download>>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The download in flight for `key`, if any.
    pub fn join(&self, key: &Sha256Hash) -> Option<Arc<Download>> {
        self.lock().get(key).cloned()
    }

    /// Joins the download of the NAR `nar` (NarHash, NarSize), or registers a new one from
    /// `origin` whose file will hold bytes in `compression` and hands it with its open file to
    /// `start`, which must spawn the task that fills it.
    pub fn join_or_start(
        &self,
        nar: (Sha256Hash, u64),
        compression: Compression,
        origin: NarOrigin,
        start: impl FnOnce(Arc<Download>, std::fs::File),
    ) -> io::Result<Arc<Download>> {
        let (key, nar_size) = nar;
        let mut map = self.lock();
        if let Some(existing) = map.get(&key) {
            return Ok(existing.clone());
        }
        let (file, path) = self.temp.create(TempKind::Download)?;
        let (progress, _) = watch::channel(Progress::Connecting);
        let download = Arc::new(Download {
            key,
            nar_size,
            origin,
            compression,
            path,
            progress,
        });
        map.insert(key, download.clone());
        drop(map);
        start(download.clone(), file);
        Ok(download)
    }

    /// Forgets a finished download; readers that joined it keep their handle.
    pub fn remove(&self, download: &Download) {
        let mut map = self.lock();
        if map
            .get(&download.key)
            .is_some_and(|d| std::ptr::eq(Arc::as_ptr(d), download))
        {
            map.remove(&download.key);
        }
        *self.last_ended.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long no download has been in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        let map = self.lock();
        let last_ended = *self.last_ended.lock().unwrap_or_else(|p| p.into_inner());
        map.is_empty().then(|| last_ended.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::io::Write;

    fn key() -> Sha256Hash {
        Sha256Hash::digest(b"k")
    }

    fn origin() -> NarOrigin {
        NarOrigin {
            upstream_url: "http://127.0.0.1:1".into(),
            nar_url: "nar/k.nar".into(),
            compression: Compression::None,
            file_hash: None,
            file_size: None,
        }
    }

    /// Starts a download; returns the client's handle, and the writer's handle with its file.
    fn start(downloads: &Downloads) -> (Arc<Download>, Arc<Download>, std::fs::File) {
        let mut handle = None;
        let dl = downloads
            .join_or_start((key(), 10), Compression::None, origin(), |dl, file| {
                handle = Some((dl, file))
            })
            .unwrap();
        let (writer_dl, file) = handle.unwrap();
        (dl, writer_dl, file)
    }

    #[tokio::test]
    async fn readers_follow_the_writer_and_see_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = Downloads::new(TempFiles::new(dir.path().to_path_buf()));
        let (dl, writer_dl, mut file) = start(&downloads);
        let joined = downloads.join(&key()).unwrap();
        assert!(Arc::ptr_eq(&dl, &joined));
        let early = tokio::spawn(joined.clone().reader().try_collect::<Vec<Bytes>>());
        // Large enough that a reader starting behind the writer gets mapped windows.
        let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        writer_dl.set(Progress::Running {
            written: 0,
            total: Some(data.len() as u64),
        });
        assert_eq!(dl.started().await.unwrap(), Some(data.len() as u64));
        let mut written = 0;
        for piece in data.chunks(100_000) {
            file.write_all(piece).unwrap();
            written += piece.len() as u64;
            writer_dl.advance(written);
            tokio::task::yield_now().await;
        }
        writer_dl.set(Progress::Done { size: written });
        downloads.remove(&writer_dl);
        assert!(downloads.join(&key()).is_none());
        let late = dl.reader().try_collect::<Vec<Bytes>>().await.unwrap();
        assert!(late.concat() == data, "a late reader saw other bytes");
        assert!(
            late.iter()
                .any(|piece| ncps_store::file_behind(piece).is_some()),
            "a reader a whole file behind got no window to send with sendfile"
        );
        assert!(
            early.await.unwrap().unwrap().concat() == data,
            "a reader following the writer saw other bytes"
        );
    }

    #[tokio::test]
    async fn a_failed_download_never_delivers_the_last_byte() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = Downloads::new(TempFiles::new(dir.path().to_path_buf()));
        let (dl, writer_dl, mut file) = start(&downloads);
        let reader = tokio::spawn(dl.clone().reader().collect::<Vec<io::Result<Bytes>>>());
        writer_dl.set(Progress::Running {
            written: 0,
            total: Some(10),
        });
        file.write_all(&[7u8; 10]).unwrap();
        writer_dl.advance(10);
        tokio::task::yield_now().await;
        writer_dl.fail(CacheError::Integrity("bad".into()));
        let pieces = reader.await.unwrap();
        let ok: usize = pieces
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(Bytes::len)
            .sum();
        assert!(ok < 10, "a failed download must not deliver every byte");
        assert!(pieces.last().unwrap().is_err());
        assert!(dl.started().await.is_err());
    }
}
