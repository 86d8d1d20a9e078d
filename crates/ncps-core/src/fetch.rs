//! The task behind a [`Download`]: fetch the NAR from its upstream, verify it, store it.
//!
//! Whole-file mode keeps the upstream file as is (and queues it for lazy chunking when that is
//! on); eager chunking decompresses and chunks while downloading, and the download's file holds
//! the spliced zstd frames that clients follow.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{CachedNarInfo, NarOrigin, WholeFile};
use ncps_nix::NarKey;
use ncps_upstream::{NarResponse, UpstreamError};
use tracing::{debug, error, info, warn};

use crate::chunking::{ChunkSettings, FrameSink, check_chunked, chunk_nar};
use crate::download::{Download, Progress};
use crate::verify::{Expected, write_verified};
use crate::{Cache, CacheError};

impl Cache {
    #[tracing::instrument(
        name = "nar.download",
        skip_all,
        fields(
            nar = %cached.narinfo.nar_hash,
            upstream = %origin.upstream_url,
            chunked = eager_chunks.is_some(),
        )
    )]
    pub(crate) async fn run_download(
        self,
        download: Arc<Download>,
        file: std::fs::File,
        cached: CachedNarInfo,
        origin: NarOrigin,
        eager_chunks: Option<ChunkSettings>,
    ) {
        let nar_hash = cached.narinfo.nar_hash;
        debug!(nar = %nar_hash, upstream = %origin.upstream_url, "downloading NAR");
        self.inner.metrics.downloads_in_flight.inc();
        let result = match eager_chunks {
            Some(settings) => {
                self.download_chunked(&download, file, &cached, &origin, settings)
                    .await
            }
            None => self.download_whole(&download, file, &cached, &origin).await,
        };
        if let Err(e) = result {
            warn!(nar = %nar_hash, upstream = %origin.upstream_url, error = %e, "NAR download failed; nothing cached");
            download.fail(e);
        }
        self.inner.downloads.remove(&download);
        self.inner.metrics.downloads_in_flight.dec();
    }

    /// Opens the upstream body and checks its announced length against the narinfo.
    async fn open_upstream(&self, origin: &NarOrigin) -> Result<NarResponse, CacheError> {
        let mut response = self
            .inner
            .upstreams
            .fetch_nar(&origin.upstream_url, &origin.nar_url)
            .await?;
        if let (Some(sent), Some(promised)) = (response.content_length, origin.file_size)
            && sent != promised
        {
            return Err(CacheError::Integrity(format!(
                "upstream sends {sent} bytes, FileSize says {promised}"
            )));
        }
        let fetched = self.inner.metrics.nar_bytes_fetched.clone();
        response.body = response
            .body
            .inspect(move |piece| {
                if let Ok(bytes) = piece {
                    fetched.inc_by(bytes.len() as u64);
                }
            })
            .boxed();
        Ok(response)
    }

    async fn download_whole(
        &self,
        download: &Arc<Download>,
        file: std::fs::File,
        cached: &CachedNarInfo,
        origin: &NarOrigin,
    ) -> Result<(), CacheError> {
        let n = &cached.narinfo;
        let expected = Expected::exactly(
            origin.compression,
            origin.file_hash,
            origin.file_size,
            n.nar_hash,
            n.nar_size,
        );
        let response = self.open_upstream(origin).await?;
        download.set(Progress::Running {
            written: 0,
            total: origin.file_size.or(response.content_length),
        });
        let verified = write_verified(
            file,
            expected,
            io_stream(response.body),
            Some(download.clone()),
        )
        .await?;
        download.set(Progress::Done {
            size: verified.file_size,
        });
        let whole = WholeFile {
            key: NarKey::new(verified.file_hash, origin.compression),
            size: verified.file_size,
        };
        if let Err(e) = self
            .commit_whole(download, n.nar_hash, n.nar_size, whole)
            .await
        {
            error!(nar = %n.nar_hash, error = %e, "verified NAR could not be stored");
            return Ok(());
        }
        info!(nar = %n.nar_hash, size = verified.file_size, "stored NAR");
        if self.inner.config.cdc.is_some_and(|c| c.lazy) {
            let _ = self.inner.chunk_queue.send(n.nar_hash);
        }
        Ok(())
    }

    #[tracing::instrument(
        name = "store.put_nar",
        skip_all,
        fields(nar = %nar_hash, size = whole.size)
    )]
    async fn commit_whole(
        &self,
        download: &Download,
        nar_hash: ncps_nix::Sha256Hash,
        nar_size: u64,
        whole: WholeFile,
    ) -> Result<(), CacheError> {
        self.inner
            .store
            .put_nar_from_file(&whole.key, download.path())
            .await?;
        self.inner
            .db
            .record_whole_file(&nar_hash, nar_size, whole, None)
            .await?;
        Ok(())
    }

    async fn download_chunked(
        &self,
        download: &Arc<Download>,
        file: std::fs::File,
        cached: &CachedNarInfo,
        origin: &NarOrigin,
        settings: ChunkSettings,
    ) -> Result<(), CacheError> {
        let n = &cached.narinfo;
        let response = self.open_upstream(origin).await?;
        download.set(Progress::Running {
            written: 0,
            total: None,
        });
        let sink = FrameSink {
            download: download.clone(),
            file: tokio::fs::File::from_std(file),
            written: 0,
        };
        let chunked = chunk_nar(
            &self.inner.store,
            io_stream(response.body),
            origin.compression,
            n.nar_size,
            settings,
            Some(sink),
        )
        .await?;
        check_chunked(
            &chunked,
            &n.nar_hash,
            n.nar_size,
            origin.file_hash,
            origin.file_size,
        )?;
        download.set(Progress::Done {
            size: chunked.summary.file_size,
        });
        let committed = self
            .inner
            .db
            .commit_chunks(
                &n.nar_hash,
                n.nar_size,
                &chunked.refs,
                chunked.summary.file_hash,
            )
            .await;
        match committed {
            Ok(_) => {
                info!(nar = %n.nar_hash, chunks = chunked.refs.len(), size = chunked.summary.file_size, "stored NAR as chunks")
            }
            Err(e) => {
                error!(nar = %n.nar_hash, error = %e, "verified chunks could not be recorded")
            }
        }
        Ok(())
    }
}

/// An upstream body as plain I/O: a broken or stalled body reads as an aborted connection.
fn io_stream(
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    body.map(|r| {
        r.map_err(|e| {
            let kind = if e.is_timeout() {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::ConnectionAborted
            };
            io::Error::new(kind, e.to_string())
        })
    })
    .boxed()
}
