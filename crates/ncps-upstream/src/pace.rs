//! The slowest an upstream body may arrive. A per-read timeout alone lets an upstream that
//! sends one byte just before each timeout hold a download, its lock and every client waiting
//! on it forever; so over every window the body must bring a minimum of bytes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Instant;

use crate::UpstreamError;

/// Fewest bytes a body must bring per window: 64 KiB a minute is about 1 KiB/s, far below any
/// working link.
pub(crate) const MIN_BYTES_PER_WINDOW: u64 = 64 * 1024;

/// `body` that fails with a timeout once a window of `window` brought fewer than `min_bytes`.
pub(crate) fn paced(
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    url: String,
    window: Duration,
    min_bytes: u64,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    Paced {
        body,
        url,
        window,
        min_bytes,
        window_start: Instant::now(),
        in_window: 0,
        failed: false,
    }
    .boxed()
}

struct Paced {
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    url: String,
    window: Duration,
    min_bytes: u64,
    window_start: Instant,
    in_window: u64,
    failed: bool,
}

impl Stream for Paced {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = match self.body.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => bytes,
            other => return other,
        };
        self.in_window += item.len() as u64;
        if self.window_start.elapsed() >= self.window {
            if self.in_window < self.min_bytes {
                self.failed = true;
                tracing::warn!(
                    url = %self.url,
                    bytes = self.in_window,
                    window = ?self.window,
                    "upstream body too slow; giving up"
                );
                return Poll::Ready(Some(Err(UpstreamError::Timeout {
                    url: self.url.clone(),
                })));
            }
            self.window_start = Instant::now();
            self.in_window = 0;
        }
        Poll::Ready(Some(Ok(item)))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    /// A body that sends `piece` bytes every `every`, `count` times.
    fn dripping(
        piece: usize,
        every: Duration,
        count: usize,
    ) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
        futures::stream::iter(0..count)
            .then(move |_| async move {
                tokio::time::sleep(every).await;
                Ok(Bytes::from(vec![7u8; piece]))
            })
            .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_drip_just_under_the_read_timeout_is_cut_off() {
        let window = Duration::from_secs(60);
        let body = paced(
            dripping(1, Duration::from_secs(29), 100),
            "u".into(),
            window,
            1024,
        );
        let started = Instant::now();
        let err = body.try_collect::<Vec<_>>().await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() <= window + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_arrives_whole() {
        let body = paced(
            dripping(2048, Duration::from_secs(1), 200),
            "u".into(),
            Duration::from_secs(60),
            64 * 1024,
        );
        let pieces: Vec<Bytes> = body.try_collect().await.unwrap();
        assert_eq!(pieces.len(), 200);
    }
}
