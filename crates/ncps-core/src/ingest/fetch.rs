//! The task behind a [`Download`]: fetch the NAR from its upstream, verify it, store it.
//!
//! Whole-file mode keeps the upstream file as is (and queues it for lazy chunking when that is
//! on); eager chunking decompresses and chunks while downloading, and the download's file holds
//! the spliced zstd frames that clients follow.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::WholeFile;
use ncps_nix::NarKey;
use ncps_upstream::{NarResponse, UpstreamError};
use tracing::{debug, error, info, warn};

use super::Ingest;
use super::chunking::{ChunkSettings, FrameSink, chunk_verified};
use super::download::{Download, Progress};
use super::verify::{Expected, write_verified};
use crate::CacheError;

impl Ingest {
    #[tracing::instrument(
        name = "nar.download",
        skip_all,
        fields(
            nar = %download.nar().0,
            upstream = %download.origin().upstream_url,
            chunked = eager_chunks.is_some(),
        )
    )]
    pub(super) async fn run_download(
        self,
        download: Arc<Download>,
        file: std::fs::File,
        eager_chunks: Option<ChunkSettings>,
    ) {
        let (nar_hash, _) = download.nar();
        let upstream = download.origin().upstream_url.clone();
        debug!(nar = %nar_hash, %upstream, "downloading NAR");
        self.0.metrics.downloads_in_flight.inc();
        let started = std::time::Instant::now();
        let result = match eager_chunks {
            Some(settings) => self.download_chunked(&download, file, settings).await,
            None => self.download_whole(&download, file).await,
        };
        if let Err(e) = result {
            warn!(nar = %nar_hash, %upstream, error = %e, "NAR download failed; nothing cached");
            download.fail(e);
        }
        self.0.downloads.remove(&download);
        self.0.metrics.downloads_in_flight.dec();
        self.0
            .metrics
            .go
            .upstream_nar_fetch_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Opens the upstream body, checks its announced length against the narinfo, and tells the
    /// download's readers it is running: with the size they will receive when `as_is` (the
    /// file is the upstream's bytes), without when the bytes are produced as they arrive.
    async fn open_upstream(
        &self,
        download: &Download,
        as_is: bool,
    ) -> Result<NarResponse, CacheError> {
        let origin = download.origin();
        let mut response = self
            .0
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
        let fetched = self.0.metrics.nar_bytes_fetched.clone();
        response.body = response
            .body
            .inspect(move |piece| {
                if let Ok(bytes) = piece {
                    fetched.inc_by(bytes.len() as u64);
                }
            })
            .boxed();
        download.set(Progress::Running {
            written: 0,
            total: if as_is {
                origin.file_size.or(response.content_length)
            } else {
                None
            },
        });
        Ok(response)
    }

    async fn download_whole(
        &self,
        download: &Arc<Download>,
        file: std::fs::File,
    ) -> Result<(), CacheError> {
        let (nar_hash, nar_size) = download.nar();
        let response = self.open_upstream(download, true).await?;
        let verified = write_verified(
            file,
            promised(download),
            io_stream(response.body),
            Some(download.clone()),
        )
        .await?;
        download.set(Progress::Done {
            size: verified.file_size,
        });
        let whole = WholeFile {
            key: NarKey::new(verified.file_hash, download.compression()),
            size: verified.file_size,
        };
        // Every client already has its verified bytes: a failure to store only costs a refetch.
        match self
            .commit_whole_file(&nar_hash, nar_size, whole, download.path())
            .await
        {
            Ok(()) => info!(nar = %nar_hash, size = verified.file_size, "stored NAR"),
            Err(e) => error!(nar = %nar_hash, error = %e, "verified NAR could not be stored"),
        }
        Ok(())
    }

    async fn download_chunked(
        &self,
        download: &Arc<Download>,
        file: std::fs::File,
        settings: ChunkSettings,
    ) -> Result<(), CacheError> {
        let (nar_hash, nar_size) = download.nar();
        let response = self.open_upstream(download, false).await?;
        let sink = FrameSink {
            download: download.clone(),
            file: Arc::new(file),
            written: 0,
        };
        let chunked = chunk_verified(
            &self.0.store,
            &self.0.db,
            io_stream(response.body),
            &promised(download),
            settings,
            Some(sink),
        )
        .await?;
        download.set(Progress::Done {
            size: chunked.summary.file_size,
        });
        // Every client already has its verified bytes: a failure to record only costs a refetch.
        match self.commit_chunks(&nar_hash, nar_size, &chunked).await {
            Ok(_) => {
                info!(nar = %nar_hash, chunks = chunked.refs.len(), size = chunked.summary.file_size, "stored NAR as chunks")
            }
            Err(e) => {
                error!(nar = %nar_hash, error = %e, "verified chunks could not be recorded")
            }
        }
        Ok(())
    }
}

/// What the upstream's narinfo promised about the file and the NAR a download brings.
fn promised(download: &Download) -> Expected {
    let (nar_hash, nar_size) = download.nar();
    let origin = download.origin();
    Expected::exactly(
        origin.compression,
        origin.file_hash,
        origin.file_size,
        nar_hash,
        nar_size,
    )
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
