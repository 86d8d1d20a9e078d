//! Connection writes that send stored files from the page cache.
//!
//! A large stored NAR reaches hyper as windows mapped from its file (see
//! [`ncps_core::file_behind`]). hyper writes a response as a list of slices (head, then body
//! frames, unchanged); [`SendfileStream`] writes other slices as usual and passes each slice of a
//! mapped window to the kernel as `sendfile` from the same file and offset, which sends the same
//! bytes without copying them out of the page cache and back in. This is what lets one connection
//! take a stored file as fast as nginx serves it (which sends its cache with `sendfile` too).
//!
//! Only an optimisation: bytes that reach the socket any other way are the same bytes (a
//! window reads as the file's contents), so a layer that copied or re-framed the body would make
//! it slower, never wrong.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ncps_core::{FileSpan, file_behind};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A client connection that sends mapped stored-file bytes with `sendfile`.
pub(crate) struct SendfileStream {
    tcp: TcpStream,
    /// Set once the kernel refused `sendfile` for a stored file (a file system without it):
    /// from then on this connection writes windows like any other bytes.
    sendfile_refused: bool,
}

impl SendfileStream {
    /// Wraps an accepted connection.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            sendfile_refused: false,
        }
    }

    /// Where `slice` comes from, when it is to be sent with `sendfile`.
    fn mapped(&self, slice: &[u8]) -> Option<FileSpan> {
        if self.sendfile_refused {
            return None;
        }
        file_behind(slice)
    }

    /// Writes `slices` in order, as far as the socket takes them without waiting; the count
    /// written, or `Pending` when nothing could be.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        let mut rest = slices;
        while let Some(first) = rest.first() {
            let (step, asked, taken) = match self.mapped(first) {
                Some(span) => match self.poll_sendfile(cx, &span, first.len()) {
                    Poll::Ready(Err(e)) if unsupported(&e) => {
                        self.sendfile_refused = true;
                        continue; // the same slice again, written like any other
                    }
                    step => (step, first.len(), 1),
                },
                None => {
                    // The run of ordinary slices up to the next mapped one, in one writev.
                    let run = rest
                        .iter()
                        .position(|s| self.mapped(s).is_some())
                        .unwrap_or(rest.len());
                    let asked = rest[..run].iter().map(|s| s.len()).sum();
                    let step = Pin::new(&mut self.tcp).poll_write_vectored(cx, &rest[..run]);
                    (step, asked, run)
                }
            };
            match step {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < asked || n == 0 {
                        break;
                    }
                    rest = &rest[taken..];
                }
                // Report what was written; the error or the wait recurs on the next call.
                Poll::Ready(Err(_)) | Poll::Pending if written > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(written))
    }

    /// Sends up to `len` bytes of `span` with one `sendfile`.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        span: &FileSpan,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = span.offset;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*span.file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The mapping promised these bytes: the file was cut short on disk.
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a stored file ended before the bytes being sent",
                    )));
                }
                Ok(n) => {
                    #[cfg(test)]
                    tests::SENT_BY_SENDFILE
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Whether `sendfile` failed because it cannot be used here (the file's file system or the
/// kernel), not because of this connection.
fn unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP].contains(&Errno::from_raw_os_error(code))
    })
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, bufs)
    }

    /// Vectored, so hyper queues body frames as they are (its other strategy copies every
    /// frame into one buffer, and a copied window is no longer recognised).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::get;
    use ncps_nix::{Compression, NarKey, Sha256Hash};
    use ncps_store::{BlobStore, ByteRange};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::connections::{ConnectionLimits, serve};

    /// Bytes this process sent with `sendfile` (all tests share it; only this module's serve
    /// stored files).
    pub(crate) static SENT_BY_SENDFILE: AtomicU64 = AtomicU64::new(0);

    /// Serves `GET /` from the one NAR in `store` (honouring `Range: bytes=a-b`), as the NAR
    /// route does: the storage stream straight into the body.
    async fn nar_server(store: BlobStore, key: NarKey) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route(
                "/",
                get(|State((store, key)): State<(BlobStore, NarKey)>, headers: HeaderMap| async move {
                    let range = headers.get("range").map(|v| {
                        let (a, b) = v.to_str().unwrap()["bytes=".len()..].split_once('-').unwrap();
                        ByteRange { start: a.parse().unwrap(), end: b.parse::<u64>().unwrap() + 1 }
                    });
                    let read = store.read_nar(&key, range).await.unwrap().unwrap();
                    let len = range.map_or(read.total_size, |r| r.end - r.start);
                    axum::response::Response::builder()
                        .header("content-length", len)
                        .body(Body::from_stream(read.stream))
                        .unwrap()
                }),
            )
            .with_state((store, key));
        tokio::spawn(serve(
            listener,
            router,
            ConnectionLimits::new(16),
            std::future::pending(),
        ));
        addr
    }

    /// Reads one response with a Content-Length from `stream`: its body.
    async fn response_body(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_file_goes_out_with_sendfile_byte_for_byte() {
        // Several windows and a tail, with no byte repeating at a window's distance.
        let data: Vec<u8> = (0..9 * 1024 * 1024 + 12_345u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nar");
        std::fs::write(&file, &data).unwrap();
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let key = NarKey::new(Sha256Hash::digest(&data), Compression::None);
        store.put_nar_from_file(&key, &file).await.unwrap();
        let addr = nar_server(store, key).await;

        let before = SENT_BY_SENDFILE.load(Ordering::Relaxed);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The whole file, a range off page boundaries, and the whole file again on the same
        // keep-alive connection: each response's bytes are exactly the file's.
        let (a, b) = (4_194_000usize, 8_400_123usize);
        client
            .write_all(
                format!(
                    "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET / HTTP/1.1\r\nHost: x\r\nRange: bytes={a}-{b}\r\n\r\n\
                     GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let bodies = tokio::time::timeout(Duration::from_secs(30), async {
            let mut bodies = Vec::new();
            for _ in 0..3 {
                bodies.push(response_body(&mut client).await);
            }
            bodies
        })
        .await
        .expect("three responses in time");
        assert!(
            bodies[0] == data,
            "the first download differs from the file"
        );
        assert!(
            bodies[1] == data[a..=b],
            "the range differs from the file's bytes"
        );
        assert!(
            bodies[2] == data,
            "the second download differs from the file"
        );

        let sent = SENT_BY_SENDFILE.load(Ordering::Relaxed) - before;
        let mapped = 2 * data.len() as u64 + (b - a + 1) as u64;
        assert!(
            sent >= mapped,
            "{sent} of {mapped} bytes went out with sendfile; the rest were copied"
        );
    }
}
