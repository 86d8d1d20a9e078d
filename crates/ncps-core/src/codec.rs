//! Compression conversions on blocking threads, bridged to async streams.
//!
//! The cache serves a NAR in the compression its URL names, whatever form the NAR is stored in:
//! a whole file in another compression, or chunks. [`transcode`] turns one byte stream into the
//! other with bounded memory, and [`StreamReader`] lets synchronous decoders and the chunker pull
//! from an async source.

use std::io::{self, BufWriter, Read, Write};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::Compression;
use tokio::sync::mpsc;

/// Pieces queued between an async producer and a blocking consumer (and back).
const QUEUE: usize = 16;
/// Size of the pieces a blocking encoder hands back to the async side.
const OUT_PIECE: usize = 128 * 1024;
/// zstd level for NARs recompressed on the fly: fast enough to keep up with a network link.
const ZSTD_TRANSCODE_LEVEL: i32 = 3;
/// xz level for the rare URL that names xz but whose NAR is only stored in another form.
const XZ_TRANSCODE_LEVEL: u32 = 1;

/// True when NARs in this compression can be decompressed (to verify and to chunk them).
pub(crate) fn can_decode(compression: Compression) -> bool {
    matches!(
        compression,
        Compression::None
            | Compression::Xz
            | Compression::Zstd
            | Compression::Bzip2
            | Compression::Brotli
    )
}

fn unsupported(c: Compression) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{c} is not supported"))
}

/// Wraps `input` in a decompressor for `compression`; concatenated streams are read through.
pub(crate) fn decoder<'a>(
    compression: Compression,
    input: impl Read + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Compression::Brotli => Box::new(brotli::Decompressor::new(input, 64 * 1024)),
        other => return Err(unsupported(other)),
    })
}

/// A compressor writing into `out`; `finish` must be called to flush the trailer.
enum Encoder<W: Write> {
    None(W),
    Xz(xz2::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Brotli(Box<brotli::CompressorWriter<W>>),
}

impl<W: Write> Encoder<W> {
    fn new(compression: Compression, out: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::None(out),
            Compression::Xz => Self::Xz(xz2::write::XzEncoder::new(out, XZ_TRANSCODE_LEVEL)),
            Compression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(
                out,
                ZSTD_TRANSCODE_LEVEL,
            )?),
            Compression::Bzip2 => Self::Bzip2(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::fast(),
            )),
            Compression::Brotli => Self::Brotli(Box::new(brotli::CompressorWriter::new(
                out,
                64 * 1024,
                4,
                22,
            ))),
            other => return Err(unsupported(other)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::None(w) => w,
            Self::Xz(w) => w,
            Self::Zstd(w) => w,
            Self::Bzip2(w) => w,
            Self::Brotli(w) => w.as_mut(),
        }
    }

    fn finish(self) -> io::Result<()> {
        let mut out = match self {
            Self::None(w) => w,
            Self::Xz(w) => w.finish()?,
            Self::Zstd(w) => w.finish()?,
            Self::Bzip2(w) => w.finish()?,
            Self::Brotli(w) => w.into_inner(),
        };
        out.flush()
    }
}

/// A blocking `Read` over bytes an async task sends through a channel.
pub(crate) struct StreamReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl StreamReader {
    /// Spawns a task that feeds `input` into the returned reader. Read it on a blocking thread.
    pub fn spawn(mut input: BoxStream<'static, io::Result<Bytes>>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some(item) = input.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking `Write` that hands what is written to an async stream.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Re-encodes a stream from one compression to another (identity when they are equal). Errors
/// in the input or in decoding end the output stream with an error, so a client never gets a
/// body that looks complete.
pub(crate) fn transcode(
    input: BoxStream<'static, io::Result<Bytes>>,
    from: Compression,
    to: Compression,
) -> BoxStream<'static, io::Result<Bytes>> {
    if from == to {
        return input;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let reader = StreamReader::spawn(input);
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let result = (|| -> io::Result<()> {
            let mut plain = decoder(from, reader)?;
            let out = BufWriter::with_capacity(OUT_PIECE, ChannelWriter { tx });
            let mut encoder = Encoder::new(to, out)?;
            io::copy(&mut plain, encoder.writer())?;
            encoder.finish()
        })();
        if let Err(e) = result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    tokio_stream_from(rx)
}

/// The receiving end of a channel as a stream.
pub(crate) fn tokio_stream_from(
    rx: mpsc::Receiver<io::Result<Bytes>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    async fn run(input: Vec<u8>, from: Compression, to: Compression) -> io::Result<Vec<u8>> {
        let pieces: Vec<io::Result<Bytes>> = input
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let out: Vec<Bytes> = transcode(futures::stream::iter(pieces).boxed(), from, to)
            .try_collect()
            .await?;
        Ok(out.concat())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn converts_between_every_supported_pair() {
        let plain = sample();
        let all = [
            Compression::None,
            Compression::Xz,
            Compression::Zstd,
            Compression::Bzip2,
            Compression::Brotli,
        ];
        for from in all {
            let encoded = run(plain.clone(), Compression::None, from).await.unwrap();
            for to in all {
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
}
