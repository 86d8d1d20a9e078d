//! The compression table, and a bridge from async byte streams to blocking readers.
//!
//! [`Codec`] says, for every compression, how ncps decodes and encodes it;
//! [`crate::conversions`] uses it to serve a NAR in another compression than it is stored in,
//! verification and chunking to read NARs. [`StreamReader`] lets synchronous decoders and the
//! chunker pull from an async source.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::Compression;
use tokio::sync::mpsc;

/// Pieces queued between an async producer and a blocking consumer (and back).
pub(crate) const QUEUE: usize = 16;
/// zstd level for NARs recompressed on the fly: fast enough to keep up with a network link.
const ZSTD_TRANSCODE_LEVEL: i32 = 3;
/// Most memory an xz decoder may take. The largest standard preset (`xz -9`) needs 65 MiB; a
/// stream that asks for more (a tiny upload declaring a dictionary of gigabytes would otherwise
/// commit them) is refused as corrupt.
const XZ_MEMORY_LIMIT: u64 = 128 << 20;
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
    /// Decoded only: liblzma has no lzip encoder, and no URL ncps hands out names lzip unless
    /// the NAR is stored so (then it is sent as stored, never encoded).
    Lzip,
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
            Compression::Lzip => Some(Self::Lzip),
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
            Self::Xz => {
                let stream = liblzma::stream::Stream::new_auto_decoder(
                    XZ_MEMORY_LIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Box::new(liblzma::read::XzDecoder::new_stream(input, stream))
            }
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
            Self::Lzip => Box::new(liblzma::read::XzDecoder::new_stream(input, lzip_stream()?)),
            Self::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Self::Brotli => Box::new(brotli::Decompressor::new(input, 64 * 1024)),
        })
    }

    /// A decompressor that is written to and writes the plain bytes into `sink` (the verifier
    /// pushes bytes through it as they arrive).
    pub fn write_decoder<W: Write>(self, sink: W) -> io::Result<WriteDecoder<W>> {
        Ok(match self {
            Self::None => WriteDecoder::Plain(sink),
            Self::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMORY_LIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                WriteDecoder::Xz(Box::new(liblzma::write::XzDecoder::new_stream(
                    sink, stream,
                )))
            }
            Self::Zstd => WriteDecoder::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?)),
            Self::Lzip => WriteDecoder::Xz(Box::new(liblzma::write::XzDecoder::new_stream(
                sink,
                lzip_stream()?,
            ))),
            Self::Bzip2 => WriteDecoder::Bzip2(Box::new(bzip2::write::BzDecoder::new(sink))),
            Self::Brotli => {
                WriteDecoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 64 * 1024)))
            }
        })
    }

    /// A compressor writing into `out`, at the levels used for conversions on the fly.
    pub(crate) fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Self::Lzip => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "ncps cannot produce lzip; ask for the NAR in another compression",
                ));
            }
            Self::None => Encoder::None(out),
            Self::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(out, XZ_TRANSCODE_LEVEL)),
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

/// An lzip decoder (concatenated members read through), memory bounded as xz's.
fn lzip_stream() -> io::Result<liblzma::stream::Stream> {
    liblzma::stream::Stream::new_lzip_decoder(XZ_MEMORY_LIMIT, liblzma::stream::CONCATENATED)
        .map_err(io::Error::other)
}

/// True when NARs in this compression can be decompressed (to verify and to chunk them).
pub(crate) fn can_decode(compression: Compression) -> bool {
    Codec::of(compression).is_some()
}

/// A streaming decompressor that is written to; see [`Codec::write_decoder`].
pub(crate) enum WriteDecoder<W: Write> {
    Plain(W),
    Xz(Box<liblzma::write::XzDecoder<W>>),
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
            Self::Xz(w) => w.finish(),
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
pub(crate) enum Encoder<W: Write> {
    None(W),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Brotli(Box<brotli::CompressorWriter<W>>),
}

impl<W: Write> Encoder<W> {
    /// Where the plain bytes go.
    pub(crate) fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::None(w) => w,
            Self::Xz(w) => w,
            Self::Zstd(w) => w,
            Self::Bzip2(w) => w,
            Self::Brotli(w) => w.as_mut(),
        }
    }

    /// Writes the trailer and flushes.
    pub(crate) fn finish(self) -> io::Result<()> {
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
    watch: Option<Watch>,
}

/// What a reader waiting for input also watches, so that it never waits in vain: whoever its
/// output goes to leaving, and input that stops coming.
pub(crate) struct Watch {
    /// The runtime the waits run on.
    pub runtime: tokio::runtime::Handle,
    /// Closed when the consumer of the reader's output went away.
    pub consumer: mpsc::Sender<io::Result<Bytes>>,
    /// The longest wait for the next piece of input.
    pub stall: std::time::Duration,
}

impl StreamReader {
    /// Spawns a task that feeds `input` into the returned reader. Read it on a blocking thread.
    pub fn spawn(input: BoxStream<'static, io::Result<Bytes>>) -> Self {
        Self::spawn_watched(input, None)
    }

    /// [`StreamReader::spawn`], whose reads give up (`BrokenPipe`, `TimedOut`) as `watch` says.
    pub fn spawn_watched(
        mut input: BoxStream<'static, io::Result<Bytes>>,
        watch: Option<Watch>,
    ) -> Self {
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
            watch,
        }
    }

    fn next_piece(&mut self) -> io::Result<Option<io::Result<Bytes>>> {
        let Some(watch) = &self.watch else {
            return Ok(self.rx.blocking_recv());
        };
        let rx = &mut self.rx;
        watch.runtime.block_on(async {
            tokio::select! {
                piece = rx.recv() => Ok(piece),
                () = watch.consumer.closed() => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the client went away",
                )),
                () = tokio::time::sleep(watch.stall) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no input for {:?}", watch.stall),
                )),
            }
        })
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.next_piece()? {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xz stream whose block header declares a 4 GiB dictionary.
    fn huge_dictionary_xz() -> Vec<u8> {
        let mut xz = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new(&mut xz, 0);
        encoder.write_all(&[0u8; 10_000]).unwrap();
        encoder.finish().unwrap();
        // Stream header (12 bytes), then the block header: its size, flags, the LZMA2 filter
        // (id 0x21, one property byte: the dictionary size code), padding, CRC-32.
        let header_len = (usize::from(xz[12]) + 1) * 4;
        let header = &mut xz[12..12 + header_len];
        let filter = header.windows(2).position(|w| w == [0x21, 0x01]).unwrap();
        header[filter + 2] = 40; // 4 GiB - 1
        let crc = crc32fast::hash(&header[..header_len - 4]);
        header[header_len - 4..].copy_from_slice(&crc.to_le_bytes());
        xz
    }

    /// After an input error the feeding task stops pulling input: the reader gives up at the
    /// error, so anything read past it would be wasted work (or a stalled source held open).
    #[tokio::test(flavor = "multi_thread")]
    async fn input_is_not_read_past_an_error() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let input = futures::stream::iter(0..)
            .map(move |i| {
                counter.fetch_add(1, Ordering::SeqCst);
                if i == 1 {
                    Err(io::Error::other("broken input"))
                } else {
                    Ok(Bytes::from_static(b"x"))
                }
            })
            .boxed();
        let mut reader = StreamReader::spawn(input);
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let result = reader.read_to_end(&mut all);
            (result, reader)
        })
        .await
        .unwrap();
        assert!(read.0.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            2,
            "input was read past its error"
        );
        drop(read);
    }

    #[test]
    fn an_xz_stream_asking_for_gigabytes_is_refused() {
        let bomb = huge_dictionary_xz();
        let mut decoder = Codec::Xz.write_decoder(Vec::new()).unwrap();
        let written = decoder
            .write_all(&bomb)
            .and_then(|()| decoder.finish().map(drop));
        assert!(written.is_err(), "a 4 GiB dictionary was accepted");
        let mut plain = Vec::new();
        let read = Codec::Xz
            .decoder(&bomb[..])
            .unwrap()
            .read_to_end(&mut plain);
        assert!(read.is_err(), "a 4 GiB dictionary was accepted");

        // An ordinary stream still decodes.
        let mut xz = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new(&mut xz, 9);
        encoder.write_all(b"nix-archive-1").unwrap();
        encoder.finish().unwrap();
        let mut plain = Vec::new();
        Codec::Xz
            .decoder(&xz[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"nix-archive-1");
    }
}
