use std::io::Read;

use bytes::Bytes;
use fastcdc::v2020::StreamCDC;
use ncps_nix::Sha256Hash;
use sha2::{Digest, Sha256};

use crate::chunk::frame::ChunkEncoder;
use crate::chunk::pool::EncoderPool;
use crate::chunk::{ChunkError, ChunkHash, ChunkParams};

/// zstd level used when none is configured: see the chunk_ingest benchmark for the trade-off.
///
/// Measured on a 256 MiB NAR of shared libraries (one core): level 1 ingests at ~315 MB/s with
/// frames at 42.2% of the plain size, level 3 at ~250 MB/s and 40.1%. Level 1 is the one that
/// keeps ingest above 300 MB/s per core.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// One chunk of a NAR, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// BLAKE3 of the plain bytes: the chunk's address.
    pub hash: ChunkHash,
    /// Where the chunk starts in the plain NAR, for range requests.
    pub offset: u64,
    /// Length of the plain bytes.
    pub plain_len: u32,
    /// The plain bytes compressed as one standalone zstd frame.
    pub frame: Bytes,
}

/// What the caller needs once the whole NAR went through: the plain NAR's hash and size (to
/// check against the narinfo's NarHash/NarSize) and those of the concatenation of all frames in
/// order (the `Compression: zstd` file we can serve, for FileHash/FileSize).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkingSummary {
    /// SHA-256 of the plain NAR.
    pub nar_hash: Sha256Hash,
    /// Length of the plain NAR.
    pub nar_size: u64,
    /// SHA-256 of all frames concatenated in order.
    pub file_hash: Sha256Hash,
    /// Length of all frames concatenated in order.
    pub file_size: u64,
    /// Number of chunks produced.
    pub chunk_count: u64,
}

/// Cuts a plain NAR into content-defined chunks and compresses each, in one streaming pass.
///
/// Sync code meant for a blocking thread. Memory is bounded by a few times `params.max`
/// whatever the NAR size: FastCDC keeps one `max`-sized window and only a handful of chunks are
/// in flight at a time. Take chunks with [`next_chunk`](Self::next_chunk) (or iterate) until
/// `None`, then call [`finish`](Self::finish) for the totals.
pub struct Chunker<R: Read> {
    source: Source<R>,
    encode: Encode,
    emitted_len: u64,
    file_sha: Sha256,
    file_len: u64,
    chunk_count: u64,
    done: bool,
}

/// The reading side: cuts chunks and keeps the plain NAR's totals.
struct Source<R: Read> {
    cdc: StreamCDC<R>,
    done: bool,
    chunks: u64,
    sha: Sha256,
    len: u64,
}

impl<R: Read> Source<R> {
    /// The plain bytes of the next chunk, hashed into the NAR totals; `None` at the end.
    fn next(&mut self) -> Result<Option<Vec<u8>>, ChunkError> {
        if self.done {
            return Ok(None);
        }
        let plain = match self.cdc.next() {
            Some(Ok(data)) => data.data,
            Some(Err(e)) => return Err(ChunkError::Read(e.into())),
            // An empty input still yields one (empty) chunk: zero frames would be a zero-byte
            // file, which is not a valid zstd stream to serve.
            None if self.chunks == 0 => {
                self.done = true;
                Vec::new()
            }
            None => {
                self.done = true;
                return Ok(None);
            }
        };
        self.sha.update(&plain);
        self.len += plain.len() as u64;
        self.chunks += 1;
        Ok(Some(plain))
    }
}

/// Where chunks are compressed: on the caller's thread, or on worker threads.
enum Encode {
    Inline(ChunkEncoder),
    Pool(EncoderPool),
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("plain_len", &self.source.len)
            .field("chunk_count", &self.chunk_count)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Chunker<R> {
    /// Starts chunking `reader` (a plain, uncompressed NAR) with the given sizes and zstd level,
    /// compressing on the calling thread.
    pub fn new(reader: R, params: ChunkParams, zstd_level: i32) -> Result<Self, ChunkError> {
        Self::with_threads(reader, params, zstd_level, 1)
    }

    /// Like [`new`](Self::new), but with `threads > 1` the chunks are compressed on that many
    /// worker threads (output order is kept) while the calling thread reads, cuts and hashes.
    /// Shortens the ingest of one large NAR on an idle machine; it does not make the work
    /// cheaper, so keep 1 where many NARs are ingested at once.
    pub fn with_threads(
        reader: R,
        params: ChunkParams,
        zstd_level: i32,
        threads: usize,
    ) -> Result<Self, ChunkError> {
        params.validate()?;
        let max = params.max as usize;
        let encode = if threads > 1 {
            Encode::Pool(EncoderPool::new(threads, zstd_level, max)?)
        } else {
            Encode::Inline(ChunkEncoder::new(zstd_level, max)?)
        };
        let cdc = StreamCDC::new(reader, params.min as usize, params.avg as usize, max);
        Ok(Self {
            source: Source {
                cdc,
                done: false,
                chunks: 0,
                sha: Sha256::new(),
                len: 0,
            },
            encode,
            emitted_len: 0,
            file_sha: Sha256::new(),
            file_len: 0,
            chunk_count: 0,
            done: false,
        })
    }

    /// The next chunk in NAR order, or `None` once the input is exhausted. There is always at
    /// least one chunk, so the concatenated frames always form a valid zstd stream.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
        if self.done {
            return Ok(None);
        }
        let encoded = match &mut self.encode {
            Encode::Inline(encoder) => self.source.next()?.map(|plain| {
                let len = plain.len() as u32;
                encoder
                    .encode(&plain)
                    .map(|(hash, frame)| (hash, len, frame))
            }),
            Encode::Pool(pool) => {
                // Keep the workers fed, then wait for the oldest chunk.
                while pool.has_room() {
                    match self.source.next()? {
                        Some(plain) => pool.submit(plain)?,
                        None => break,
                    }
                }
                (pool.in_flight() > 0).then(|| pool.receive())
            }
        };
        let Some(encoded) = encoded else {
            self.done = true;
            return Ok(None);
        };
        let (hash, plain_len, frame) = encoded?;
        self.file_sha.update(&frame);
        self.file_len += frame.len() as u64;
        let chunk = Chunk {
            hash,
            offset: self.emitted_len,
            plain_len,
            frame,
        };
        self.emitted_len += u64::from(plain_len);
        self.chunk_count += 1;
        Ok(Some(chunk))
    }

    /// The totals, once [`next_chunk`](Self::next_chunk) has returned `None`.
    pub fn finish(self) -> Result<ChunkingSummary, ChunkError> {
        if !self.done {
            return Err(ChunkError::NotExhausted);
        }
        Ok(ChunkingSummary {
            nar_hash: Sha256Hash::from_bytes(self.source.sha.finalize().into()),
            nar_size: self.source.len,
            file_hash: Sha256Hash::from_bytes(self.file_sha.finalize().into()),
            file_size: self.file_len,
            chunk_count: self.chunk_count,
        })
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Chunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::decompress_chunk;
    use std::collections::HashSet;

    /// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Compressible data with repeats, closer to real files than pure noise.
    fn text_like(len: usize) -> Vec<u8> {
        let words = [
            "nix",
            "store",
            "/lib/",
            "libc.so.6",
            "\0\0\0\0",
            "ELF",
            "derivation ",
        ];
        let noise = random_bytes(len, 7);
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(words[noise[i] as usize % words.len()].as_bytes());
            out.push(noise[i + 1]);
            i += 2;
        }
        out.truncate(len);
        out
    }

    fn chunk_with(
        input: &[u8],
        params: ChunkParams,
        threads: usize,
    ) -> (Vec<Chunk>, ChunkingSummary) {
        let mut chunker =
            Chunker::with_threads(input, params, DEFAULT_ZSTD_LEVEL, threads).unwrap();
        let chunks: Vec<Chunk> = chunker.by_ref().collect::<Result<_, _>>().unwrap();
        assert!(chunker.next_chunk().unwrap().is_none(), "stays exhausted");
        (chunks, chunker.finish().unwrap())
    }

    fn chunk_all(input: &[u8], params: ChunkParams) -> (Vec<Chunk>, ChunkingSummary) {
        chunk_with(input, params, 1)
    }

    /// Everything the chunker promises, checked against `input`, inline and with workers
    /// (which must give exactly the same chunks).
    fn check_round_trip(input: &[u8], params: ChunkParams) -> Vec<Chunk> {
        let (chunks, summary) = chunk_all(input, params);
        for threads in [2, 3] {
            assert!(chunk_with(input, params, threads) == (chunks.clone(), summary.clone()));
        }
        let mut plain = Vec::with_capacity(input.len());
        let mut spliced = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, plain.len() as u64);
            assert!(c.plain_len <= params.max);
            if i + 1 < chunks.len() {
                assert!(c.plain_len >= params.min);
            }
            let bytes = decompress_chunk(&c.hash, &c.frame).unwrap();
            assert_eq!(bytes.len(), c.plain_len as usize);
            plain.extend_from_slice(&bytes);
            spliced.extend_from_slice(&c.frame);
        }
        assert!(plain == input, "chunks do not reassemble the input");
        // The concatenated frames are one valid zstd stream of the whole NAR.
        assert!(zstd::decode_all(&spliced[..]).unwrap() == input);
        assert_eq!(summary.nar_hash, Sha256Hash::digest(input));
        assert_eq!(summary.nar_size, input.len() as u64);
        assert_eq!(summary.file_hash, Sha256Hash::digest(&spliced));
        assert_eq!(summary.file_size, spliced.len() as u64);
        assert_eq!(summary.chunk_count, chunks.len() as u64);
        chunks
    }

    #[test]
    fn round_trip_random_text_empty_and_tiny() {
        let params = ChunkParams::default();
        let random = check_round_trip(&random_bytes(3_000_000, 1), params);
        assert!(random.len() > 10);
        let text = check_round_trip(&text_like(2_000_000), params);
        let frames: usize = text.iter().map(|c| c.frame.len()).sum();
        assert!(frames < 2_000_000 / 2, "text-like data should compress");
        let empty = check_round_trip(b"", params);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].plain_len, 0);
        assert_eq!(check_round_trip(b"tiny nar", params).len(), 1);
        assert_eq!(check_round_trip(&random_bytes(1000, 2), params).len(), 1);
        // Small parameters exercise many boundaries.
        let small = ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
        };
        check_round_trip(&random_bytes(200_000, 3), small);
    }

    #[test]
    fn round_trip_real_nars() {
        let vectors =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ncps-nix/tests/vectors");
        let mut tested = 0;
        for name in ["a.nar", "b.nar"] {
            let nar = std::fs::read(vectors.join(name)).unwrap();
            check_round_trip(&nar, ChunkParams::default());
            tested += 1;
        }
        // A larger real NAR when the nix tools are installed (they are on the dev machine and
        // in CI); nothing large is committed to the repository.
        let dump = std::process::Command::new("nix-store")
            .args(["--dump", "/usr/share/zoneinfo"])
            .output();
        if let Ok(out) = dump
            && out.status.success()
            && !out.stdout.is_empty()
        {
            let chunks = check_round_trip(&out.stdout, ChunkParams::default());
            assert!(chunks.len() > 1);
            tested += 1;
        }
        assert!(tested >= 2);
    }

    #[test]
    fn boundaries_survive_an_insertion() {
        let params = ChunkParams::default();
        let original = random_bytes(4 * 1024 * 1024, 42);
        let mid = original.len() / 2;
        let mut edited = original[..mid].to_vec();
        edited.extend_from_slice(&random_bytes(100, 99));
        edited.extend_from_slice(&original[mid..]);

        let (before, _) = chunk_all(&original, params);
        let (after, _) = chunk_all(&edited, params);
        let old: HashSet<ChunkHash> = before.iter().map(|c| c.hash).collect();
        let changed = after.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", after.len());
        // Every chunk that ends before the edit is untouched, in the same place.
        let prefix = before
            .iter()
            .take_while(|c| c.offset + u64::from(c.plain_len) <= mid as u64);
        for (b, a) in prefix.zip(&after) {
            assert_eq!(b.hash, a.hash);
        }
        assert!(before.len() > 30, "too few chunks to be meaningful");
    }

    #[test]
    fn chunker_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Chunker<std::fs::File>>();
        assert_send::<Chunk>();
    }

    #[test]
    fn finish_before_the_end_is_an_error() {
        let data = random_bytes(1_000_000, 5);
        for threads in [1, 2] {
            let mut chunker =
                Chunker::with_threads(&data[..], ChunkParams::default(), 1, threads).unwrap();
            chunker.next_chunk().unwrap().unwrap();
            // Dropping a chunker with work in flight must not hang.
            assert!(matches!(chunker.finish(), Err(ChunkError::NotExhausted)));
        }
    }

    #[test]
    fn bad_params_and_read_errors_are_reported() {
        let bad = ChunkParams {
            min: 1,
            avg: 2,
            max: 3,
        };
        assert!(matches!(
            Chunker::new(&b""[..], bad, 1),
            Err(ChunkError::InvalidParams(_))
        ));

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        for threads in [1, 2] {
            let mut chunker =
                Chunker::with_threads(Failing, ChunkParams::default(), 1, threads).unwrap();
            assert!(matches!(chunker.next_chunk(), Err(ChunkError::Read(_))));
        }
    }
}
