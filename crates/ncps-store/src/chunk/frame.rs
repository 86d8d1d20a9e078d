use bytes::Bytes;
use zstd::zstd_safe;

use crate::chunk::{ChunkError, ChunkHash};

/// Largest plain chunk any [`ChunkParams`](crate::chunk::ChunkParams) can produce (FastCDC's own
/// ceiling). A stored frame claiming more is rejected before anything is allocated.
pub const MAX_CHUNK_LEN: usize = fastcdc::v2020::MAXIMUM_MAX;

/// Compresses one plain chunk as one standalone zstd frame (content size in the header, no
/// checksum: the BLAKE3 address already guards the content).
pub fn compress_chunk(plain: &[u8], level: i32) -> Result<Bytes, ChunkError> {
    zstd::bulk::compress(plain, level)
        .map(Bytes::from)
        .map_err(ChunkError::Compress)
}

/// Hashes and compresses chunks, reusing one zstd context and one output buffer, for the
/// chunker and its worker threads.
pub(crate) struct ChunkEncoder {
    ctx: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl ChunkEncoder {
    /// An encoder at zstd `level` for chunks of at most `max_len` bytes (larger ones still work,
    /// at the cost of a reallocation).
    pub(crate) fn new(level: i32, max_len: usize) -> Result<Self, ChunkError> {
        let ctx = zstd::bulk::Compressor::new(level).map_err(ChunkError::Compress)?;
        let scratch = Vec::with_capacity(zstd_safe::compress_bound(max_len));
        Ok(Self { ctx, scratch })
    }

    /// The chunk's address and its frame. The frame is copied out of the scratch buffer so it
    /// holds no slack capacity while it waits to be uploaded.
    pub(crate) fn encode(&mut self, plain: &[u8]) -> Result<(ChunkHash, Bytes), ChunkError> {
        let hash = ChunkHash::digest(plain);
        let bound = zstd_safe::compress_bound(plain.len());
        if self.scratch.capacity() < bound {
            self.scratch.reserve(bound);
        }
        self.ctx
            .compress_to_buffer(plain, &mut self.scratch)
            .map_err(ChunkError::Compress)?;
        Ok((hash, Bytes::copy_from_slice(&self.scratch)))
    }
}

/// Decompresses a stored frame and checks its BLAKE3 against `hash`. One-off convenience for
/// [`ChunkDecoder::decode`]; use a decoder when reading many chunks.
pub fn decompress_chunk(hash: &ChunkHash, frame: &[u8]) -> Result<Bytes, ChunkError> {
    ChunkDecoder::new()?.decode(hash, frame)
}

/// Turns stored frames back into verified plain bytes, reusing one zstd context across chunks
/// (creating one per chunk would cost an allocation of a few hundred KiB each time).
pub struct ChunkDecoder {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkDecoder")
    }
}

impl ChunkDecoder {
    /// A decoder with a fresh zstd context.
    pub fn new() -> Result<Self, ChunkError> {
        let ctx = zstd::bulk::Decompressor::new().map_err(ChunkError::Compress)?;
        Ok(Self { ctx })
    }

    /// Decompresses `frame`, which must be exactly one zstd frame of at most [`MAX_CHUNK_LEN`]
    /// plain bytes, and returns them only if their BLAKE3 is `hash`.
    pub fn decode(&mut self, hash: &ChunkHash, frame: &[u8]) -> Result<Bytes, ChunkError> {
        let bad = |reason: String| ChunkError::BadFrame {
            hash: *hash,
            reason,
        };
        match zstd_safe::find_frame_compressed_size(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => return Err(bad(format!("{} trailing bytes", frame.len() - n))),
            Err(code) => return Err(bad(zstd_safe::get_error_name(code).to_string())),
        }
        let capacity = match zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) if n <= MAX_CHUNK_LEN as u64 => n as usize,
            Ok(Some(n)) => return Err(bad(format!("claims {n} plain bytes"))),
            Ok(None) => MAX_CHUNK_LEN,
            Err(_) => return Err(bad("unreadable frame header".to_string())),
        };
        let mut plain = Vec::with_capacity(capacity);
        self.ctx
            .decompress_to_buffer(frame, &mut plain)
            .map_err(|e| bad(e.to_string()))?;
        let actual = ChunkHash::digest(&plain);
        if actual != *hash {
            return Err(ChunkError::Corrupt {
                expected: *hash,
                actual,
            });
        }
        Ok(Bytes::from(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn round_trip() {
        let plain = sample();
        let hash = ChunkHash::digest(&plain);
        let frame = compress_chunk(&plain, 3).unwrap();
        assert!(frame.len() < plain.len());
        assert_eq!(decompress_chunk(&hash, &frame).unwrap(), plain);
        let empty = compress_chunk(b"", 3).unwrap();
        assert!(
            decompress_chunk(&ChunkHash::digest(b""), &empty)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let plain = sample();
        let hash = ChunkHash::digest(&plain);
        let frame = compress_chunk(&plain, 3).unwrap().to_vec();
        let mut dec = ChunkDecoder::new().unwrap();

        // Right frame, wrong address: the content check catches it.
        let other = ChunkHash::digest(b"other");
        assert!(matches!(
            dec.decode(&other, &frame),
            Err(ChunkError::Corrupt { expected, actual }) if expected == other && actual == hash
        ));
        // Flipped bytes anywhere, truncation, trailing garbage, not zstd at all.
        for i in [0, 5, frame.len() / 2, frame.len() - 1] {
            let mut broken = frame.clone();
            broken[i] ^= 0x40;
            assert!(dec.decode(&hash, &broken).is_err(), "flip at {i}");
        }
        assert!(dec.decode(&hash, &frame[..frame.len() - 1]).is_err());
        let mut trailing = frame.clone();
        trailing.extend_from_slice(&frame);
        assert!(matches!(
            dec.decode(&hash, &trailing),
            Err(ChunkError::BadFrame { .. })
        ));
        assert!(dec.decode(&hash, b"not zstd").is_err());
        assert!(dec.decode(&hash, b"").is_err());
        // The decoder is still usable after errors.
        assert_eq!(dec.decode(&hash, &frame).unwrap(), plain);
    }
}
