//! Serving a NAR in another compression than it is stored in, on the fly, within bounds.
//!
//! Any stored NAR can be asked for in any compression (its NarHash is public in every narinfo),
//! and a conversion costs a core while it runs. So conversions are counted: beyond the limit a
//! request gets [`CacheError::Busy`] (503 with Retry-After) at once. A running conversion decodes
//! and encodes on a blocking thread, but never waits there for long: not for input that stopped
//! coming, not for a client that stopped reading, and not at all for a client that left (its
//! thread, input task and slot are released at once). Such a conversion ends its body with an
//! error, so nobody mistakes what was sent for a whole NAR.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::Compression;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::CacheError;
use crate::codec::{Codec, QUEUE, StreamReader, Watch};

/// Size of the pieces a blocking encoder hands back to the async side.
const OUT_PIECE: usize = 128 * 1024;
/// The longest a conversion waits for its next input piece, or for its client to take the next
/// output piece, before it gives up.
pub(crate) const CONVERSION_STALL: Duration = Duration::from_secs(60);

/// The conversions of one cache and their limit; cheap to clone.
#[derive(Clone)]
pub(crate) struct Conversions {
    slots: Arc<Semaphore>,
    limit: usize,
    stall: Duration,
}

impl Conversions {
    /// At most `limit` conversions at once, each giving up after `stall` without progress.
    pub fn new(limit: usize, stall: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            stall,
        }
    }

    /// `input` (in `from`) in the compression `to`: itself when they are equal, otherwise a
    /// conversion, or `Busy` when `limit` conversions are running.
    pub fn convert(
        &self,
        input: BoxStream<'static, io::Result<Bytes>>,
        from: Compression,
        to: Compression,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, CacheError> {
        if from == to {
            return Ok(input);
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            CacheError::Busy(format!(
                "{} conversions between compressions are running, the most this server runs \
                 at once; try again shortly, or ask for the URL the narinfo names",
                self.limit
            ))
        })?;
        Ok(transcode(input, from, to, slot, self.stall))
    }
}

/// A blocking `Write` that hands what is written to an async stream, waiting at most `stall`
/// for room.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    runtime: Handle,
    stall: Duration,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let piece = Ok(Bytes::copy_from_slice(buf));
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.stall, self.tx.send(piece)));
        match sent {
            Ok(Ok(())) => Ok(buf.len()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", self.stall),
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Re-encodes `input` from one compression to another on a blocking thread that holds `slot`
/// until it ends. The stream ends with an error unless the conversion finished, so a client
/// never gets a body that looks complete.
fn transcode(
    input: BoxStream<'static, io::Result<Bytes>>,
    from: Compression,
    to: Compression,
    slot: OwnedSemaphorePermit,
    stall: Duration,
) -> BoxStream<'static, io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let runtime = Handle::current();
    let watch = Watch {
        runtime: runtime.clone(),
        consumer: tx.clone(),
        stall,
    };
    let reader = StreamReader::spawn_watched(input, Some(watch));
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let result = (|| -> io::Result<()> {
            let mut plain = Codec::require(from)?.decoder(reader)?;
            let writer = ChannelWriter { tx, runtime, stall };
            let out = BufWriter::with_capacity(OUT_PIECE, writer);
            let mut encoder = Codec::require(to)?.encoder(out)?;
            io::copy(&mut plain, encoder.writer())?;
            encoder.finish()
        })();
        match result {
            Ok(()) => done.store(true, Ordering::Release),
            // The reason, if there is room for it; the stream ends in an error either way.
            Err(e) => {
                let _ = err_tx.try_send(Err(e));
            }
        }
    });
    futures::stream::unfold((rx, finished), |(mut rx, finished)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, finished))),
            None if finished.load(Ordering::Acquire) => None,
            None => {
                let cut = io::Error::other("the conversion was cut short");
                // Said once: the state after is an empty, finished channel.
                finished.store(true, Ordering::Release);
                Some((Err(cut), (rx, finished)))
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::codec::can_decode;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn pieces(input: Vec<u8>) -> BoxStream<'static, io::Result<Bytes>> {
        let pieces: Vec<io::Result<Bytes>> = input
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces).boxed()
    }

    async fn run(input: Vec<u8>, from: Compression, to: Compression) -> io::Result<Vec<u8>> {
        let conversions = Conversions::new(1, CONVERSION_STALL);
        let out: Vec<Bytes> = conversions
            .convert(pieces(input), from, to)
            .map_err(io::Error::other)?
            .try_collect()
            .await?;
        Ok(out.concat())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn converts_between_every_supported_pair() {
        let plain = sample();
        // lzip is decoded only (there is no lzip encoder to make its input).
        let all: Vec<Compression> = Compression::ALL
            .into_iter()
            .filter(|c| can_decode(*c) && *c != Compression::Lzip)
            .collect();
        assert_eq!(all.len(), 5);
        let refused = run(plain.clone(), Compression::None, Compression::Lzip).await;
        assert_eq!(
            refused.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::Unsupported)
        );
        for &from in &all {
            let encoded = run(plain.clone(), Compression::None, from).await.unwrap();
            for &to in &all {
                let converted = run(encoded.clone(), from, to).await.unwrap();
                let back = run(converted, to, Compression::None).await.unwrap();
                assert!(back == plain, "{from} -> {to}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concatenated_zstd_frames_decode_as_one_stream() {
        let plain = sample();
        let mut spliced = Vec::new();
        for piece in plain.chunks(70_000) {
            spliced.extend(zstd::bulk::compress(piece, 1).unwrap());
        }
        assert_eq!(
            run(spliced, Compression::Zstd, Compression::None)
                .await
                .unwrap(),
            plain
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn corrupt_input_ends_in_an_error() {
        let mut encoded = zstd::encode_all(&sample()[..], 3).unwrap();
        encoded.truncate(encoded.len() / 2);
        assert!(
            run(encoded, Compression::Zstd, Compression::Xz)
                .await
                .is_err()
        );
    }

    /// Input that never comes (a stalled source).
    fn endless() -> BoxStream<'static, io::Result<Bytes>> {
        futures::stream::pending().boxed()
    }

    /// Whether a conversion can start within two seconds (slots are released by threads
    /// that end on their own time).
    async fn slot_frees(conversions: &Conversions) -> bool {
        for _ in 0..100 {
            if conversions
                .convert(endless(), Compression::Xz, Compression::None)
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn beyond_the_limit_a_conversion_is_refused_and_a_gone_client_frees_its_slot() {
        let conversions = Conversions::new(2, CONVERSION_STALL);
        let (xz, none) = (Compression::Xz, Compression::None);
        let first = conversions.convert(endless(), xz, none).unwrap();
        let _second = conversions.convert(endless(), xz, none).unwrap();
        let err = conversions.convert(endless(), xz, none).err().unwrap();
        assert!(matches!(err, CacheError::Busy(_)), "{err}");
        // No conversion at all between equal compressions: never refused.
        assert!(conversions.convert(endless(), xz, xz).is_ok());

        // The client of the first leaves while its conversion waits for input.
        drop(first);
        assert!(
            slot_frees(&conversions).await,
            "the slot of a conversion whose client left was not released"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stalled_conversion_gives_up_with_an_error_and_frees_its_slot() {
        let stall = Duration::from_millis(200);
        // Input stops after its first piece.
        let conversions = Conversions::new(1, stall);
        let stalled = futures::stream::iter(vec![Ok(Bytes::from(sample()[..1000].to_vec()))])
            .chain(futures::stream::pending())
            .boxed();
        let out: Result<Vec<Bytes>, _> = conversions
            .convert(stalled, Compression::None, Compression::Zstd)
            .unwrap()
            .try_collect()
            .await;
        assert_eq!(out.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(slot_frees(&conversions).await);

        // A client that stops reading: far more output than the queue holds.
        let conversions = Conversions::new(1, stall);
        let plain: Vec<u8> = sample().repeat(8);
        let compressed = zstd::encode_all(&plain[..], 1).unwrap();
        let mut unread = conversions
            .convert(pieces(compressed), Compression::Zstd, Compression::None)
            .unwrap();
        assert!(
            slot_frees(&conversions).await,
            "a conversion nobody reads must give up"
        );
        let mut received = 0;
        let mut failed = false;
        while let Some(piece) = unread.next().await {
            match piece {
                Ok(bytes) => received += bytes.len(),
                Err(_) => failed = true,
            }
        }
        assert!(
            received < plain.len(),
            "the conversion gave up before its end"
        );
        assert!(failed, "a conversion that gave up must end in an error");
    }
}
