//! Content-defined chunking.
//!
//! File contents are cut into chunks where the content says so (FastCDC, the v2020 variant of
//! the `fastcdc` crate with its default normalisation level 1), not at fixed offsets, so data
//! that moved by a few bytes inside a file still produces the same chunks and deduplicates.
//!
//! The cut points are part of the on-disk format in effect: a chunker that cuts differently
//! for the same bytes and parameters produces different chunk ids, and new writes stop
//! deduplicating against stored data. Therefore:
//! - `fastcdc` is pinned exactly (`=5.0.0`) in Cargo.toml; boundaries changed between releases;
//! - the parameters are fixed per volume at creation and stored in its config;
//! - golden tests pin the boundaries of a fixed buffer for the default and the earlier default.

use fastcdc::v2020::{
    FastCDC, AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
};

use crate::error::{Error, Result};

/// Chunk size bounds in bytes. Fixed for a volume when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB, for new volumes; chosen by the chunk-size study of
    /// docs/BENCHMARKS.md. On a backup chain (full, incrementals, synthetic full) it stores and
    /// sends 6-9% less than 1 MiB and ingested as fast or faster. Per TiB of unique data it
    /// costs ~2 M index records (~0.5 GiB of sled). 256 KiB would save another 7% for twice
    /// that index.
    /// Volumes made before keep their 256 KiB / 1 MiB / 4 MiB (see [`ChunkerParams::V1`]).
    fn default() -> Self {
        ChunkerParams {
            min_size: 128 * 1024,
            avg_size: 512 * 1024,
            max_size: 2 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// The default of volumes created before 2026-12-03 (the brief's starting point).
    pub const V1: ChunkerParams = ChunkerParams {
        min_size: 256 * 1024,
        avg_size: 1024 * 1024,
        max_size: 4 * 1024 * 1024,
    };
}

impl ChunkerParams {
    /// Checks the limits of fastcdc v2020 (min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB,
    /// all even) and `min < avg < max`.
    pub fn validate(&self) -> Result<()> {
        let in_range = |name: &str, v: u32, lo: usize, hi: usize| -> Result<()> {
            if (v as usize) < lo || (v as usize) > hi {
                return Err(Error::Invalid(format!(
                    "chunker {name} {v} outside {lo}..={hi} bytes"
                )));
            }
            if !v.is_multiple_of(2) {
                return Err(Error::Invalid(format!("chunker {name} {v} must be even")));
            }
            Ok(())
        };
        in_range("min_size", self.min_size, MINIMUM_MIN, MINIMUM_MAX)?;
        in_range("avg_size", self.avg_size, AVERAGE_MIN, AVERAGE_MAX)?;
        in_range("max_size", self.max_size, MAXIMUM_MIN, MAXIMUM_MAX)?;
        if !(self.min_size < self.avg_size && self.avg_size < self.max_size) {
            return Err(Error::Invalid(format!(
                "chunker sizes must satisfy min < avg < max, got {} / {} / {}",
                self.min_size, self.avg_size, self.max_size
            )));
        }
        Ok(())
    }
}

/// Splits `data` into content-defined chunks and returns the end offset (exclusive) of each
/// chunk; the last one is `data.len()`. Empty data gives an empty vector. Every chunk but the
/// last is within `[min_size, max_size]`; the last may be shorter than `min_size`.
///
/// `params` must have passed [`ChunkerParams::validate`] (checked in debug builds only).
pub fn cut_points(params: &ChunkerParams, data: &[u8]) -> Vec<usize> {
    debug_assert!(params.validate().is_ok(), "invalid {params:?}");
    let chunker = FastCDC::new(
        data,
        params.min_size as usize,
        params.avg_size as usize,
        params.max_size as usize,
    );
    let mut cuts = Vec::with_capacity(data.len() / params.avg_size as usize + 1);
    cuts.extend(chunker.map(|c| c.offset + c.length));
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64), stable across versions of any crate.
    fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
        small().validate().unwrap();
    }

    #[test]
    fn validate_rejects_bad_params() {
        let d = ChunkerParams::V1;
        for bad in [
            ChunkerParams { min_size: 32, ..d },
            ChunkerParams {
                min_size: 2 * 1024 * 1024,
                ..d
            },
            ChunkerParams {
                max_size: 32 * 1024 * 1024,
                ..d
            },
            ChunkerParams {
                avg_size: 1024 * 1024 + 1,
                ..d
            },
            ChunkerParams {
                min_size: 1024 * 1024,
                ..d
            },
            ChunkerParams {
                max_size: 1024 * 1024,
                ..d
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let p = ChunkerParams::default();
        assert!(cut_points(&p, &[]).is_empty());
        assert_eq!(cut_points(&p, &[7]), vec![1]);
        assert_eq!(cut_points(&p, &[0; 1000]), vec![1000]);
    }

    #[test]
    fn deterministic_and_within_bounds() {
        let p = small();
        let data = xorshift_bytes(42, 8 << 20);
        let cuts = cut_points(&p, &data);
        assert_eq!(cuts, cut_points(&p, &data));
        assert_eq!(*cuts.last().unwrap(), data.len());
        let mut prev = 0;
        for (i, &c) in cuts.iter().enumerate() {
            let len = c - prev;
            assert!(len <= p.max_size as usize, "chunk {i} is {len} bytes");
            if i + 1 < cuts.len() {
                assert!(len >= p.min_size as usize, "chunk {i} is {len} bytes");
            }
            prev = c;
        }
        // Roughly the configured average (normalised chunking keeps it close).
        let avg = data.len() / cuts.len();
        assert!(avg > 32 * 1024 && avg < 128 * 1024, "average {avg}");
    }

    #[test]
    fn zeros_cut_at_max_size() {
        let p = small();
        let data = vec![0u8; 1 << 20];
        let cuts = cut_points(&p, &data);
        assert!(cuts.windows(2).all(|w| w[1] - w[0] == p.max_size as usize));
    }

    #[test]
    fn insertion_near_start_keeps_most_cut_points() {
        let p = small();
        let data = xorshift_bytes(7, 8 << 20);
        let before = cut_points(&p, &data);
        const INSERTED: usize = 100;
        let mut edited = data[..1000].to_vec();
        edited.extend_from_slice(&[0xAB; INSERTED]);
        edited.extend_from_slice(&data[1000..]);
        let after: std::collections::HashSet<usize> = cut_points(&p, &edited).into_iter().collect();
        let kept = before
            .iter()
            .filter(|&&c| after.contains(&(c + INSERTED)))
            .count();
        // Only the chunk containing the insertion (and perhaps its neighbour) may change.
        assert!(
            kept + 2 >= before.len(),
            "{kept} of {} cut points survived",
            before.len()
        );
    }

    // ---------------------------------------------------------------------------------------
    // Golden vector. Do not change: these are the chunk boundaries of stored volumes. If this
    // test fails, the chunker (or fastcdc) changed behaviour and dedup against old data breaks.
    // ---------------------------------------------------------------------------------------
    const GOLDEN_SEED: u64 = 0x7469_6572_6761_7465; // "tiergate"
    const GOLDEN_CUTS: &[usize] = &[
        2_504_572, 3_620_947, 5_504_456, 5_973_736, 6_440_548, 7_040_085, 8_388_608,
    ];

    const GOLDEN_CUTS_DEFAULT: &[usize] = &[
        821_831, 1_721_627, 2_504_572, 3_065_176, 3_620_947, 3_960_732, 4_220_894, 5_504_456,
        5_973_736, 6_440_548, 7_040_085, 8_025_458, 8_388_608,
    ];

    #[test]
    fn golden_cut_points_v1_params() {
        let data = xorshift_bytes(GOLDEN_SEED, 8 << 20);
        let cuts = cut_points(&ChunkerParams::V1, &data);
        assert_eq!(cuts, GOLDEN_CUTS, "chunk boundaries changed: {cuts:?}");
    }

    #[test]
    fn golden_cut_points_default_params() {
        let data = xorshift_bytes(GOLDEN_SEED, 8 << 20);
        let cuts = cut_points(&ChunkerParams::default(), &data);
        assert_eq!(
            cuts, GOLDEN_CUTS_DEFAULT,
            "chunk boundaries changed: {cuts:?}"
        );
    }
}
