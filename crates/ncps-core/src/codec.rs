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

/// The compressions ncps can decompress (to verify and chunk NARs) and produce (to convert
/// them): the one table. Every match below is exhaustive, so a compression added to
/// [`Compression`] must be decided in [`Codec::of`], and a codec added here must be given a
/// decoder, a streaming decoder and an encoder, before anything compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
}

impl Codec {
    /// The codec of a compression, or `None` when ncps cannot decode it (then it can neither
    /// verify such a NAR nor serve it in another form).
    pub fn of(compression: Compression) -> Option<Self> {
        match compression {
            Compression::None => Some(Self::None),
            Compression::Xz => Some(Self::Xz),
            Compression::Zstd => Some(Self::Zstd),
            Compression::Bzip2 => Some(Self::Bzip2),
            Compression::Brotli => Some(Self::Brotli),
            Compression::Lz4 | Compression::Gzip => None,
        }
    }

    /// The codec of a compression, or an `Unsupported` error naming it.
    pub fn require(compression: Compression) -> io::Result<Self> {
        Self::of(compression).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("NARs compressed with {compression} are not supported"),
            )
        })
    }

    /// Wraps `input` in a decompressor; concatenated streams (spliced frames) read through.
    pub fn decoder<'a>(
        self,
        input: impl Read + Send + 'a,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Self::None => Box::new(input),
            Self::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(input)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
            Self::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Self::Brotli => Box::new(brotli::Decompressor::new(input, 64 * 1024)),
        })
    }

    /// A decompressor that is written to and writes the plain bytes into `sink` (the verifier
    /// pushes bytes through it as they arrive).
    pub fn write_decoder<W: Write>(self, sink: W) -> io::Result<WriteDecoder<W>> {
        Ok(match self {
            Self::None => WriteDecoder::Plain(sink),
            Self::Xz => WriteDecoder::Xz(Box::new(xz2::write::XzDecoder::new_multi_decoder(sink))),
            Self::Zstd => WriteDecoder::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?)),
            Self::Bzip2 => WriteDecoder::Bzip2(Box::new(bzip2::write::BzDecoder::new(sink))),
            Self::Brotli => {
                WriteDecoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 64 * 1024)))
            }
        })
    }

    /// A compressor writing into `out`, at the levels used for conversions on the fly.
    fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Self::None => Encoder::None(out),
            Self::Xz => Encoder::Xz(xz2::write::XzEncoder::new(out, XZ_TRANSCODE_LEVEL)),
            Self::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                out,
                ZSTD_TRANSCODE_LEVEL,
            )?),
            Self::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::fast(),
            )),
            Self::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                out,
                64 * 1024,
                4,
                22,
            ))),
        })
    }
}

/// True when NARs in this compression can be decompressed (to verify and to chunk them).
pub(crate) fn can_decode(compression: Compression) -> bool {
    Codec::of(compression).is_some()
}

/// A streaming decompressor that is written to; see [`Codec::write_decoder`].
pub(crate) enum WriteDecoder<W: Write> {
    Plain(W),
    Xz(Box<xz2::write::XzDecoder<W>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, W>>),
    Bzip2(Box<bzip2::write::BzDecoder<W>>),
    Brotli(Box<brotli::DecompressorWriter<W>>),
}

impl<W: Write> WriteDecoder<W> {
    /// Decompresses `buf` into the sink.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(buf),
            Self::Xz(w) => w.write_all(buf),
            Self::Zstd(w) => w.write_all(buf),
            Self::Bzip2(w) => w.write_all(buf),
            Self::Brotli(w) => w.write_all(buf),
        }
    }

    /// Ends the stream and gives the sink back; a stream cut short is an `UnexpectedEof`.
    pub fn finish(self) -> io::Result<W> {
        let truncated = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "compressed stream is truncated",
            )
        };
        match self {
            Self::Plain(s) => Ok(s),
            Self::Xz(mut w) => w.finish(),
            Self::Zstd(mut w) => {
                w.flush()?;
                Ok(w.into_inner())
            }
            Self::Bzip2(mut w) => w.finish(),
            Self::Brotli(w) => w.into_inner().map_err(|_| truncated()),
        }
    }
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
            let mut plain = Codec::require(from)?.decoder(reader)?;
            let out = BufWriter::with_capacity(OUT_PIECE, ChannelWriter { tx });
            let mut encoder = Codec::require(to)?.encoder(out)?;
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
        let all: Vec<Compression> = Compression::ALL
            .into_iter()
            .filter(|c| can_decode(*c))
            .collect();
        assert_eq!(all.len(), 5);
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
}
