//! AVX2 kernels (x86-64 with AVX2, FMA and F16C, checked at run time by the caller).

use std::arch::x86_64::*;

use super::acts::ActRow;
use super::group::{self, bcast4};
use super::layout::GROUP;
use super::{BlockKind, QK};

/// The horizontal sum of `v`'s 8 lanes.
///
/// # Safety
/// The CPU supports AVX (every caller here is an AVX2 kernel it inlines into).
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// The four horizontal sums of `a`, `b`, `c`, `d`, in that order.
///
/// # Safety
/// The CPU supports AVX (every caller here is an AVX2 kernel it inlines into).
#[inline(always)]
pub(super) unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe {
        let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }
}

/// The hardware prefetcher does not keep up with these kernels' weight streams: DRAM latency
/// then dominates decoding (measured on one core, Q4_0 groups: 8.2 GB/s without this, 38.4
/// with it). So each call prefetches the group two calls ahead, spread evenly over its blocks. Prefetching past the end of the matrix is harmless (a
/// prefetch never faults), hence `wrapping_add`.
#[derive(Clone, Copy)]
pub(super) struct Prefetch {
    ahead: *const u8,
    step: usize,
}

impl Prefetch {
    /// For groups of `group_bytes` over `nb` blocks, from the group at `first`. Off (`enabled`
    /// false) for the later passes of a group over more activation rows: it is in cache by then.
    pub(super) fn new(first: *const u8, group_bytes: usize, nb: usize, enabled: bool) -> Self {
        let step = if enabled { group_bytes.div_ceil(nb) } else { 0 };
        Self { ahead: first.wrapping_add(2 * group_bytes), step }
    }

    /// Prefetch the share of block `b`.
    ///
    /// # Safety
    /// The CPU supports SSE (every x86-64 does). The addresses need not be valid memory: a
    /// prefetch is a hint and never faults.
    #[inline(always)]
    pub(super) unsafe fn block(self, b: usize) {
        let mut o = b * self.step;
        let end = o + self.step;
        while o < end {
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ahead.wrapping_add(o) as *const i8) };
            o += 64;
        }
    }
}

/// Dot products of the 8 rows of one interleaved group (see `layout`) with 1 or 2
/// activation rows: `o[j][r]` for row `r`, act `j`.
///
/// # Safety
/// the CPU supports AVX2, FMA and F16C; `group` holds one whole interleaved group of `nb` blocks of `kind`
/// (`nb * 18 * GROUP` bytes for Q4_0, `nb * 34 * GROUP` for Q8_0); every row of `acts` holds
/// `nb` blocks (`qs` at least `nb * QK` bytes, `d` and `dsum` at least `nb` values). Act and
/// output counts are checked by indexing (a wrong count panics).
pub unsafe fn group_dots(
    kind: BlockKind,
    group: &[u8],
    acts: &[ActRow],
    nb: usize,
    o: &mut [[f32; GROUP]],
    prefetch: bool,
) {
    // SAFETY: the caller upholds the contract in `# Safety` above, which is the callees'.
    unsafe {
        match (kind, acts.len()) {
            (BlockKind::Q4_0, 1) => q4x8::<1>(group, acts, nb, o, prefetch),
            (BlockKind::Q4_0, _) => q4x8::<2>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, 1) => q8x8::<1>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, _) => q8x8::<2>(group, acts, nb, o, prefetch),
        }
    }
}

/// Q8_0 group with `maddubs`: a pair of products can reach 2 x 127 x 128, so each step widens
/// to i32 at once.
///
/// # Safety
/// As [`group_dots`], for a Q8_0 group.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        group::q8::<N>(group, acts, nb, o, prefetch, |acc, aw, a| {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, a), ones))
        });
    }
}

/// Q4_0 group with `maddubs`: the 8 steps of a block add up in i16 without overflow
/// (8 x 2 x 15 x 127 < 32767), so one `madd` per block widens them.
///
/// # Safety
/// As [`group_dots`], for a Q4_0 group.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        group::q4::<N>(group, acts, nb, o, prefetch, |lo, hi, a| {
            // Two chains of four, so the adds do not wait on each other.
            let mut s0 = _mm256_maddubs_epi16(lo[0], bcast4(a));
            let mut s1 = _mm256_maddubs_epi16(hi[0], bcast4(a.add(16)));
            for s in 1..4 {
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo[s], bcast4(a.add(4 * s))));
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi[s], bcast4(a.add(16 + 4 * s))));
            }
            _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones)
        });
    }
}

/// [`super::acts`]'s block quantization: the same scale, the same products `x * (1/scale)`,
/// and rounding half away from zero done exactly (truncate, then step away from zero when the
/// dropped fraction is at least one half), so the bytes equal the portable path's.
///
/// # Safety
/// The CPU supports AVX2 and FMA. (The lengths are asserted: at least 32 values each.)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block(src: &[f32], q: &mut [i8]) -> (f32, i32) {
    // SAFETY: the caller guarantees the features; the assert below bounds every load and store.
    unsafe {
        assert!(src.len() >= QK && q.len() >= QK);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.as_ptr().add(8 * i)));
        let sign = _mm256_set1_ps(-0.0);
        let abs = |x: __m256| _mm256_andnot_ps(sign, x);
        let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let r: [__m256i; 4] = std::array::from_fn(|i| {
            let x = _mm256_mul_ps(v[i], inv);
            let t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let up = _mm256_cmp_ps(abs(_mm256_sub_ps(x, t)), half, _CMP_GE_OQ);
            let away = _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(x, sign), one));
            _mm256_cvttps_epi32(_mm256_add_ps(t, away))
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)));
        // Packing works per 128-bit lane; the permute puts the 8 groups of 4 back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
        (scale, sum)
    }
}
