//! Checks a NAR file against its narinfo while it is written, in one pass: the compressed bytes
//! are hashed (FileHash/FileSize) and decompressed on the fly to hash the plain NAR
//! (NarHash/NarSize). An uncompressed file is the NAR itself and is hashed once, its hash and
//! size standing for both. Runs on a blocking thread; nothing is buffered beyond the decoder's
//! window.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::{Compression, Sha256Hash};
use sha2::{Digest, Sha256};

use super::download::Download;
use crate::CacheError;
use crate::codec::{Codec, WriteDecoder};

/// What the narinfo promises about the NAR file. An upload arrives before its narinfo, so
/// everything but the compression may be unknown; `max_size` then bounds the file and the NAR.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub compression: Compression,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Option<Sha256Hash>,
    pub nar_size: Option<u64>,
    pub max_size: u64,
}

impl Expected {
    /// Every promise a narinfo makes about its NAR (for downloads).
    pub fn exactly(
        compression: Compression,
        file_hash: Option<Sha256Hash>,
        file_size: Option<u64>,
        nar_hash: Sha256Hash,
        nar_size: u64,
    ) -> Self {
        Self {
            compression,
            file_hash,
            file_size,
            nar_hash: Some(nar_hash),
            nar_size: Some(nar_size),
            max_size: u64::MAX,
        }
    }

    /// The promises of an uncompressed NAR with these bytes (tests that chunk plain NARs).
    #[cfg(test)]
    pub(crate) fn plain_nar(nar: &[u8]) -> Self {
        Self::exactly(
            Compression::None,
            None,
            None,
            Sha256Hash::digest(nar),
            nar.len() as u64,
        )
    }
}

/// What was measured on a file that passed every check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verified {
    pub file_hash: Sha256Hash,
    pub file_size: u64,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
}

/// Hashes the decompressed NAR and refuses to grow past NarSize, so a decompression bomb costs
/// nothing.
struct NarSink {
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        if self.size + len > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("NAR is larger than its NarSize of {} bytes", self.limit),
            ));
        }
        self.hasher.update(buf);
        self.size += len;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The file half of a check: writes the compressed bytes to disk, hashes them and holds them
/// to FileSize.
struct FileSide {
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl FileSide {
    fn new(file: std::fs::File, expected: &Expected) -> Self {
        let mut limit = expected.file_size.unwrap_or(expected.max_size);
        if expected.compression == Compression::None {
            // The file is the NAR: NarSize bounds it as well.
            limit = limit.min(expected.nar_size.unwrap_or(expected.max_size));
        }
        Self {
            file,
            hasher: Sha256::new(),
            size: 0,
            limit,
        }
    }

    /// Appends compressed bytes to the file. Readers may read them once this returns.
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(invalid(format!(
                "file is larger than the {} bytes its narinfo announces",
                self.limit
            )));
        }
        self.file.write_all(chunk)
    }

    fn hash(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
    }

    /// SHA-256 and size of everything written.
    fn finish(self) -> (Sha256Hash, u64) {
        (
            Sha256Hash::from_bytes(self.hasher.finalize().into()),
            self.size,
        )
    }
}

/// The NAR half of a check: decompresses the same bytes and hashes the plain NAR.
struct NarSide {
    decoder: WriteDecoder<NarSink>,
}

impl NarSide {
    /// The NAR half of a compressed file; `None` for an uncompressed one, which is the NAR (the
    /// file half's hash is the NAR's: hashing the same bytes twice cost a second SHA-256 pass
    /// per cold download). Fails when the compression cannot be verified.
    fn new(expected: &Expected) -> io::Result<Option<Self>> {
        if expected.compression == Compression::None {
            return Ok(None);
        }
        let sink = NarSink {
            hasher: Sha256::new(),
            size: 0,
            limit: expected.nar_size.unwrap_or(expected.max_size),
        };
        Ok(Some(Self {
            decoder: Codec::require(expected.compression)?.write_decoder(sink)?,
        }))
    }

    fn check(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.decoder.write_all(chunk)
    }

    /// SHA-256 and size of the plain NAR; fails when the compressed stream is cut short.
    fn finish(self) -> io::Result<(Sha256Hash, u64)> {
        let sink = self.decoder.finish()?;
        Ok((
            Sha256Hash::from_bytes(sink.hasher.finalize().into()),
            sink.size,
        ))
    }
}

/// Checks every promise of the narinfo once the whole file was seen by both halves.
fn judge(exp: &Expected, file: (Sha256Hash, u64), nar: (Sha256Hash, u64)) -> io::Result<Verified> {
    let ((file_hash, file_size), (nar_hash, nar_size)) = (file, nar);
    if let Some(size) = exp.file_size.filter(|&s| s != file_size) {
        return Err(invalid(format!(
            "got {file_size} bytes, FileSize says {size}"
        )));
    }
    if let Some(hash) = exp.file_hash.filter(|&h| h != file_hash) {
        return Err(invalid(format!(
            "FileHash mismatch: narinfo says {hash}, got {file_hash}"
        )));
    }
    if let Some(size) = exp.nar_size.filter(|&s| s != nar_size) {
        return Err(invalid(format!(
            "NarSize mismatch: narinfo says {size}, got {nar_size}"
        )));
    }
    if let Some(hash) = exp.nar_hash.filter(|&h| h != nar_hash) {
        return Err(invalid(format!(
            "NarHash mismatch: narinfo says {hash}, got {nar_hash}"
        )));
    }
    Ok(Verified {
        file_hash,
        file_size,
        nar_hash,
        nar_size,
    })
}

/// Writes a NAR file to disk while checking it against its narinfo, both halves on the
/// caller's thread (small files; see [`write_verified`] for large ones).
pub(crate) struct NarIngest {
    file: FileSide,
    nar: Option<NarSide>,
    expected: Expected,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl NarIngest {
    /// Starts checking into `file`; fails when the compression cannot be verified.
    pub fn new(file: std::fs::File, expected: Expected) -> io::Result<Self> {
        Ok(Self {
            file: FileSide::new(file, &expected),
            nar: NarSide::new(&expected)?,
            expected,
        })
    }

    /// Appends compressed bytes to the file. Readers may read them once this returns.
    pub fn write_file(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write(chunk)?;
        self.file.hash(chunk);
        Ok(())
    }

    /// Feeds the same bytes through decompression and the NAR hash.
    pub fn check(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.nar {
            Some(nar) => nar.check(chunk),
            None => Ok(()),
        }
    }

    /// Checks every promise of the narinfo now that the whole file was seen.
    pub fn finish(self) -> io::Result<Verified> {
        let file = self.file.finish();
        let nar = match self.nar {
            Some(nar) => nar.finish()?,
            None => file,
        };
        judge(&self.expected, file, nar)
    }
}

/// Bytes queued between the source and the blocking writer; bounds memory per NAR.
const INGEST_QUEUE: usize = 16;

/// Files announced at or below this size are written and checked on the calling task: hashing
/// and decompressing 64 KiB takes well under a millisecond, less than the hand-offs to a
/// blocking thread and back would add to every small path of a cold closure.
const INLINE_INGEST_LIMIT: u64 = 64 * 1024;

/// [`write_verified`] for a small file, without a blocking thread. Memory stays bounded: a
/// body longer than announced is refused at the first piece past the announced size.
async fn write_verified_inline(
    file: std::fs::File,
    expected: Expected,
    mut source: BoxStream<'static, io::Result<Bytes>>,
    progress: Option<Arc<Download>>,
) -> Result<Verified, CacheError> {
    let mut ingest = NarIngest::new(file, expected).map_err(CacheError::from_read)?;
    let mut written = 0u64;
    while let Some(piece) = source.next().await {
        let piece = piece.map_err(CacheError::from_read)?;
        // write_file refuses more bytes than announced, so memory stays bounded.
        ingest.write_file(&piece).map_err(CacheError::from_read)?;
        ingest.check(&piece).map_err(CacheError::from_read)?;
        written += piece.len() as u64;
    }
    let verified = ingest.finish().map_err(CacheError::from_read)?;
    if let Some(download) = &progress {
        download.advance(written);
    }
    Ok(verified)
}

/// Writes `source` into `file` while checking it against `expected`, telling `progress` (a
/// download's readers) how many bytes are on disk as they land.
///
/// The two halves run on two blocking threads fed the same pieces: one writes and hashes the
/// file, the other decompresses and hashes the NAR (an uncompressed file has the first only). Each is about as much work as the other
/// (a SHA-256 pass over a gigabyte is half a second here, and was 56% of a cold download's
/// CPU with both passes and the decompression on one thread), so a cold NAR arrives at the
/// speed of the slower half instead of the sum of both, and readers follow the writer, never
/// the decompression.
pub(crate) async fn write_verified(
    file: std::fs::File,
    expected: Expected,
    mut source: BoxStream<'static, io::Result<Bytes>>,
    progress: Option<Arc<Download>>,
) -> Result<Verified, CacheError> {
    if expected
        .file_size
        .is_some_and(|size| size <= INLINE_INGEST_LIMIT)
    {
        return write_verified_inline(file, expected, source, progress).await;
    }
    let nar_side = NarSide::new(&expected).map_err(CacheError::from_read)?;
    let mut file_side = FileSide::new(file, &expected);
    let (file_tx, mut file_rx) = tokio::sync::mpsc::channel::<Bytes>(INGEST_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(Sha256Hash, u64)> {
        let mut written = 0u64;
        while let Some(chunk) = file_rx.blocking_recv() {
            file_side.write(&chunk)?;
            written += chunk.len() as u64;
            if let Some(download) = &progress {
                download.advance(written);
            }
            file_side.hash(&chunk);
        }
        Ok(file_side.finish())
    });
    // The NAR half's queue and thread (a compressed file only).
    let nar_half = nar_side.map(|mut nar_side| {
        let (nar_tx, mut nar_rx) = tokio::sync::mpsc::channel::<Bytes>(INGEST_QUEUE);
        let checker = tokio::task::spawn_blocking(move || -> io::Result<(Sha256Hash, u64)> {
            while let Some(chunk) = nar_rx.blocking_recv() {
                nar_side.check(&chunk)?;
            }
            nar_side.finish()
        });
        (nar_tx, checker)
    });
    let mut source_error = None;
    while let Some(chunk) = source.next().await {
        match chunk {
            Ok(chunk) => {
                let sent = match &nar_half {
                    Some((nar_tx, _)) => {
                        let sent = tokio::join!(file_tx.send(chunk.clone()), nar_tx.send(chunk));
                        sent.0.is_ok() && sent.1.is_ok()
                    }
                    None => file_tx.send(chunk).await.is_ok(),
                };
                if !sent {
                    break; // a half stopped; its error says why
                }
            }
            Err(e) => {
                source_error = Some(e);
                break;
            }
        }
    }
    drop(file_tx);
    let file = writer
        .await
        .map_err(io::Error::other)
        .map_err(CacheError::from_read)?;
    let nar = match nar_half {
        Some((nar_tx, checker)) => {
            drop(nar_tx);
            Some(
                checker
                    .await
                    .map_err(io::Error::other)
                    .map_err(CacheError::from_read)?,
            )
        }
        None => None,
    };
    if let Some(e) = source_error {
        return Err(CacheError::from_read(e));
    }
    // A half that failed stopped the other early: its error, not the other's short count.
    let (file, nar) = match (file, nar) {
        (Err(e), _) | (_, Some(Err(e))) => return Err(CacheError::from_read(e)),
        (Ok(file), Some(Ok(nar))) => (file, nar),
        // Uncompressed: the file is the NAR.
        (Ok(file), None) => (file, file),
    };
    judge(&expected, file, nar).map_err(CacheError::from_read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(compression: Compression, file: &[u8], nar: &[u8]) -> Expected {
        Expected::exactly(
            compression,
            Some(Sha256Hash::digest(file)),
            Some(file.len() as u64),
            Sha256Hash::digest(nar),
            nar.len() as u64,
        )
    }

    fn ingest(exp: Expected, file: &[u8]) -> io::Result<Verified> {
        let tmp = tempfile::tempfile()?;
        let mut ing = NarIngest::new(tmp, exp)?;
        for piece in file.chunks(1000) {
            ing.write_file(piece)?;
            ing.check(piece)?;
        }
        ing.finish()
    }

    fn nar() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect()
    }

    #[test]
    fn accepts_matching_files_in_each_compression() {
        let nar = nar();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        };
        let br = {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            e.write_all(&nar).unwrap();
            drop(e);
            out
        };
        for (c, file) in [
            (Compression::None, nar.clone()),
            (Compression::Xz, xz),
            (Compression::Zstd, zst),
            (Compression::Bzip2, bz),
            (Compression::Brotli, br),
        ] {
            let v = ingest(expected(c, &file, &nar), &file).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(v.file_size, file.len() as u64);
        }
    }

    #[test]
    fn refuses_truncated_corrupt_and_oversized_files() {
        let nar = nar();
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        let exp = expected(Compression::Zstd, &zst, &nar);
        assert!(ingest(exp.clone(), &zst[..zst.len() - 10]).is_err());
        let mut corrupt = zst.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(ingest(exp.clone(), &corrupt).is_err());
        let mut longer = zst.clone();
        longer.push(0);
        assert!(ingest(exp.clone(), &longer).is_err());
        // Without FileHash/FileSize the NAR hash still catches a wrong body.
        let loose = Expected {
            file_hash: None,
            file_size: None,
            ..exp
        };
        assert!(ingest(loose.clone(), &zst).is_ok());
        let other = zstd::encode_all(&b"other"[..], 3).unwrap();
        assert!(ingest(loose, &other).is_err());
    }

    /// Runs the two-thread check ([`write_verified`]) over `file` in 8 KiB pieces.
    fn ingest_in_parallel(exp: Expected, file: &[u8]) -> Result<Verified, CacheError> {
        let pieces: Vec<io::Result<Bytes>> = file
            .chunks(8192)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(write_verified(
            tempfile::tempfile().unwrap(),
            exp,
            futures::stream::iter(pieces).boxed(),
            None,
        ))
    }

    #[test]
    fn the_two_halves_on_their_threads_refuse_what_one_thread_refuses() {
        // Incompressible, so the file is far above the size checked on the calling task.
        let nar = crate::test_support::noise(2, 400_000);
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        assert!(zst.len() as u64 > INLINE_INGEST_LIMIT);
        let exp = expected(Compression::Zstd, &zst, &nar);
        let v = ingest_in_parallel(exp.clone(), &zst).expect("a matching file passes");
        assert_eq!(
            (v.file_size, v.nar_size, v.nar_hash),
            (zst.len() as u64, nar.len() as u64, Sha256Hash::digest(&nar))
        );

        let mut corrupt = zst.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        let mut longer = zst.clone();
        longer.push(0);
        let other = zstd::encode_all(&nar[1..], 3).unwrap();
        let loose = Expected {
            file_hash: None,
            file_size: None,
            ..exp.clone()
        };
        let bomb = Expected {
            nar_size: Some(1000),
            ..loose.clone()
        };
        for (name, exp, file) in [
            ("truncated", exp.clone(), &zst[..zst.len() - 10]),
            ("corrupt", exp.clone(), &corrupt[..]),
            ("longer", exp.clone(), &longer[..]),
            ("another NAR, no FileHash", loose, &other[..]),
            ("larger than NarSize", bomb, &zst[..]),
        ] {
            let one_thread = ingest(exp.clone(), file);
            let two_threads = ingest_in_parallel(exp, file);
            assert!(one_thread.is_err(), "{name}: one thread accepted it");
            assert!(two_threads.is_err(), "{name}: two threads accepted it");
        }
    }

    /// An uncompressed file is the NAR: one hash stands for both, and without a FileSize the
    /// NarSize still stops an endless body at its first extra byte, whether the file is checked
    /// on the calling task or on a blocking thread.
    #[test]
    fn an_uncompressed_file_is_checked_as_the_nar() {
        for len in [1_000, 400_000] {
            let nar = crate::test_support::noise(3, len);
            let loose = Expected::exactly(
                Compression::None,
                None,
                None,
                Sha256Hash::digest(&nar),
                nar.len() as u64,
            );
            for v in [
                ingest(loose.clone(), &nar).unwrap(),
                ingest_in_parallel(loose.clone(), &nar).unwrap(),
            ] {
                assert_eq!(v.file_hash, Sha256Hash::digest(&nar));
                assert_eq!(v.nar_hash, v.file_hash);
                assert_eq!((v.file_size, v.nar_size), (len as u64, len as u64));
            }
            let mut longer = nar.clone();
            longer.push(0);
            let one = ingest(loose.clone(), &longer).unwrap_err().to_string();
            let two = ingest_in_parallel(loose.clone(), &longer)
                .unwrap_err()
                .to_string();
            for err in [one, two] {
                assert!(err.contains("larger than"), "{len}: {err}");
            }
            let mut flipped = nar.clone();
            flipped[len / 2] ^= 1;
            assert!(ingest(loose.clone(), &flipped).is_err());
            assert!(ingest_in_parallel(loose, &flipped).is_err());
        }
    }

    #[test]
    fn stops_a_decompression_bomb_at_nar_size() {
        let big = vec![0u8; 50_000_000];
        let zst = zstd::encode_all(&big[..], 3).unwrap();
        let exp = Expected::exactly(
            Compression::Zstd,
            None,
            None,
            Sha256Hash::digest(b"x"),
            1000,
        );
        let err = ingest(exp, &zst).unwrap_err();
        assert!(err.to_string().contains("larger than its NarSize"), "{err}");
    }
}
