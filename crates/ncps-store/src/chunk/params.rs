use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
};

use crate::chunk::ChunkError;

/// FastCDC chunk sizes in bytes. Changing them changes every boundary, so chunks made with other
/// parameters no longer deduplicate against the existing ones: pick once per cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// No chunk is shorter (except the last one of a NAR).
    pub min: u32,
    /// The size FastCDC aims for on average.
    pub avg: u32,
    /// No chunk is longer: bounds the chunker's memory.
    pub max: u32,
}

impl Default for ChunkParams {
    /// 16 KiB / 64 KiB / 256 KiB: large enough that per-chunk overhead (a DB row, an object,
    /// a zstd frame header) stays small, small enough that an edit costs little.
    fn default() -> Self {
        Self {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

impl ChunkParams {
    /// Checks the sizes against what FastCDC v2020 accepts (it panics otherwise), so bad
    /// configuration is reported at startup rather than on the first NAR.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let check = |name: &str, v: u32, lo: usize, hi: usize| {
            let v = v as usize;
            if !(lo..=hi).contains(&v) {
                return Err(ChunkError::InvalidParams(format!(
                    "{name} chunk size {v} is outside {lo}..={hi}"
                )));
            }
            if v % 2 != 0 {
                return Err(ChunkError::InvalidParams(format!(
                    "{name} chunk size {v} must be even"
                )));
            }
            Ok(())
        };
        check("min", self.min, MINIMUM_MIN, MINIMUM_MAX)?;
        check("avg", self.avg, AVERAGE_MIN, AVERAGE_MAX)?;
        check("max", self.max, MAXIMUM_MIN, MAXIMUM_MAX)?;
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(ChunkError::InvalidParams(format!(
                "need min <= avg <= max, got {} / {} / {}",
                self.min, self.avg, self.max
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(min: u32, avg: u32, max: u32) -> ChunkParams {
        ChunkParams { min, avg, max }
    }

    #[test]
    fn defaults_are_valid() {
        ChunkParams::default().validate().unwrap();
        p(64, 256, 1024).validate().unwrap();
        p(4096, 4096, 4096).validate().unwrap();
    }

    #[test]
    fn out_of_range_or_misordered_is_rejected() {
        for bad in [
            p(32, 65536, 262144),
            p(16384, 128, 262144),
            p(16384, 65536, 32 * 1024 * 1024),
            p(65536, 16384, 262144),
            p(16384, 65536, 32768),
            p(16385, 65536, 262144),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(matches!(err, ChunkError::InvalidParams(_)), "{bad:?}");
        }
    }
}
