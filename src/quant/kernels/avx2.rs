//! AVX2 kernels (x86-64 with AVX2, FMA and F16C, checked at run time by the caller).

use std::arch::x86_64::*;

use super::acts::ActRow;
use super::group::{self, bcast4};
use super::layout::GROUP;
use super::{BlockKind, QK};

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

pub unsafe fn block_dots(kind: BlockKind, w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
    unsafe {
        match (kind, w.len(), acts.len()) {
            (BlockKind::Q4_0, 4, 1) => q4::<4, 1>(w, acts, nb, o),
            (BlockKind::Q4_0, 4, _) => q4::<4, 2>(w, acts, nb, o),
            (BlockKind::Q4_0, _, 1) => q4::<1, 1>(w, acts, nb, o),
            (BlockKind::Q4_0, _, _) => q4::<1, 2>(w, acts, nb, o),
            (BlockKind::Q8_0, 4, 1) => q8::<4, 1>(w, acts, nb, o),
            (BlockKind::Q8_0, 4, _) => q8::<4, 2>(w, acts, nb, o),
            (BlockKind::Q8_0, _, 1) => q8::<1, 1>(w, acts, nb, o),
            (BlockKind::Q8_0, _, _) => q8::<1, 2>(w, acts, nb, o),
        }
    }
}

/// The four horizontal sums of `a`, `b`, `c`, `d`, in that order.
#[inline(always)]
pub(super) unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    unsafe {
        let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }
}

/// 8 f32 lanes from `n <= 8` values at `p` (zero-padded).
#[inline(always)]
unsafe fn load8(p: *const f32, n: usize) -> __m256 {
    unsafe {
        if n == 8 {
            _mm256_loadu_ps(p)
        } else {
            // A masked load: no copy (which would be a `memcpy` call in the hot path).
            let lanes = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
            _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes))
        }
    }
}

/// 8 f16 scales at `p` (`n <= 8`, zero-padded) as f32 lanes.
#[inline(always)]
unsafe fn scales8(p: *const u8, n: usize) -> __m256 {
    unsafe {
        if n == 8 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        } else {
            // Converted one by one: a copy loop here would become a `memcpy` call.
            let mut t = [0f32; 8];
            for (i, v) in t.iter_mut().enumerate().take(n) {
                *v = half::f16::from_bits((p.add(2 * i) as *const u16).read_unaligned()).to_f32();
            }
            _mm256_loadu_ps(t.as_ptr())
        }
    }
}

/// The hardware prefetcher does not keep up with these kernels' weight streams: DRAM latency
/// then dominates decoding (measured on one core: Q8_0 rows 6.9 GB/s without this, 22.9 with
/// it; Q4_0 groups 8.2 and 38.4). So each call prefetches the rows (or group) two calls ahead,
/// spread evenly over its blocks. Prefetching past the end of the matrix is harmless (a
/// prefetch never faults), hence `wrapping_add`.
#[derive(Clone, Copy)]
pub(super) struct Prefetch {
    ahead: *const u8,
    step: usize,
}

impl Prefetch {
    /// Off (`enabled` false) for the later passes of a group over more activation rows: the
    /// group is in cache by then.
    pub(super) fn new(first_row: *const u8, rows: usize, row_bytes: usize, nb: usize, enabled: bool) -> Self {
        let step = if enabled { (rows * row_bytes).div_ceil(nb) } else { 0 };
        Self { ahead: first_row.wrapping_add(2 * rows * row_bytes), step }
    }

    /// Prefetch the share of blocks `b..b + n`.
    #[inline(always)]
    pub(super) unsafe fn blocks(self, b: usize, n: usize) {
        let mut o = b * self.step;
        let end = o + n * self.step;
        while o < end {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ahead.wrapping_add(o) as *const i8) };
            o += 64;
        }
    }
}

/// Horizontal sums of `v[r][j]` into `o[r][j]` (four rows at once when R = 4).
#[inline(always)]
unsafe fn reduce<const R: usize, const N: usize>(v: [[__m256; N]; R], o: &mut [[f32; 2]; 4]) {
    unsafe {
        for j in 0..N {
            if R == 4 {
                let mut sums = [0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), hsum4(v[0][j], v[1][j], v[2][j], v[3][j]));
                for r in 0..R {
                    o[r][j] = sums[r];
                }
            } else {
                for r in 0..R {
                    o[r][j] = hsum(v[r][j]);
                }
            }
        }
    }
}

/// Q8_0: R rows x N acts, one block at a time. Scales are computed 8 blocks at a time
/// into `scl` and broadcast per block; the inner loop is pure SIMD.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8<const R: usize, const N: usize>(w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
    unsafe {
        let wq: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
        let wd: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(nb * 32));
        let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let prefetch = Prefetch::new(wq[0], R, nb * 34, nb, true);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        // Scratch for [r][j][8 lanes]; every lane read is written first in its group.
        // Left uninitialised (zeroing would be a memset per call), so only touched by pointer.
        let mut scratch = std::mem::MaybeUninit::<[[[f32; 8]; N]; R]>::uninit();
        let scl = scratch.as_mut_ptr() as *mut f32;
        let at = |r: usize, j: usize| scl.add((r * N + j) * 8);
        let mut g = 0;
        while g < nb {
            let n8 = (nb - g).min(8);
            for r in 0..R {
                let dw = scales8(wd[r].add(2 * g), n8);
                for j in 0..N {
                    _mm256_storeu_ps(at(r, j), _mm256_mul_ps(dw, load8(ad[j].add(g), n8)));
                }
            }
            for bi in 0..n8 {
                let b = g + bi;
                prefetch.blocks(b, 1);
                let av: [__m256i; N] = std::array::from_fn(|j| _mm256_loadu_si256(aq[j].add(b * QK) as *const __m256i));
                for r in 0..R {
                    // Signed x signed via maddubs: |w| as unsigned, the sign moved onto a.
                    let q = _mm256_loadu_si256(wq[r].add(b * 32) as *const __m256i);
                    let ax = _mm256_sign_epi8(q, q);
                    for j in 0..N {
                        let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(av[j], q));
                        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                        acc[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*at(r, j).add(bi)), p, acc[r][j]);
                    }
                }
            }
            g += n8;
        }
        reduce::<R, N>(acc, o);
    }
}

/// Q4_0: R rows x N acts, two blocks at a time. The 32 nibble bytes of blocks b, b+1 give
/// their low nibbles with one AND and their high nibbles with a shift and an AND; the
/// activations were laid out to match (`nibble_order`), so two `maddubs` and one add make
/// both blocks' partial sums, scaled by one vector holding each block's scale in its half.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4<const R: usize, const N: usize>(w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
    unsafe {
        let wq: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
        let wd: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(nb * 16));
        let an: [*const i8; N] = std::array::from_fn(|j| acts[j].nibble_order.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let ds: [*const f32; N] = std::array::from_fn(|j| acts[j].dsum.as_ptr());
        let prefetch = Prefetch::new(wq[0], R, nb * 18, nb, true);
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // Lanes 0..4 take the scale of block 2p, lanes 4..8 that of block 2p + 1.
        let pair_idx: [__m256i; 4] = std::array::from_fn(|p| {
            let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
            _mm256_set_epi32(b, b, b, b, a, a, a, a)
        });
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut off = [[_mm256_setzero_ps(); N]; R];
        // Scratch for [r][j][pair][8 lanes]; every entry read is written first in its group.
        // Left uninitialised (zeroing would be a memset per call), so only touched by pointer.
        let mut scratch = std::mem::MaybeUninit::<[[[[f32; 8]; 4]; N]; R]>::uninit();
        let scl = scratch.as_mut_ptr() as *mut f32;
        let at = |r: usize, j: usize, p: usize| scl.add(((r * N + j) * 4 + p) * 8);
        let mut g = 0;
        while g < nb {
            let n8 = (nb - g).min(8);
            for r in 0..R {
                let dw = scales8(wd[r].add(2 * g), n8);
                for j in 0..N {
                    let v = _mm256_mul_ps(dw, load8(ad[j].add(g), n8));
                    for (p, idx) in pair_idx.iter().enumerate() {
                        _mm256_storeu_ps(at(r, j, p), _mm256_permutevar8x32_ps(v, *idx));
                    }
                    off[r][j] = _mm256_fmadd_ps(dw, load8(ds[j].add(g), n8), off[r][j]);
                }
            }
            // One step: blocks b, b+1 from 32 nibble bytes (`raw`), scales of pair p.
            macro_rules! pair {
                ($b:expr, $p:expr, $load:expr) => {{
                    let (b, p) = ($b, $p);
                    let alo: [__m256i; N] =
                        std::array::from_fn(|j| _mm256_loadu_si256(an[j].add(b * QK) as *const __m256i));
                    let ahi: [__m256i; N] =
                        std::array::from_fn(|j| _mm256_loadu_si256(an[j].add(b * QK + 32) as *const __m256i));
                    for r in 0..R {
                        let raw: __m256i = $load(wq[r].add(b * 16));
                        let lo = _mm256_and_si256(raw, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                        for j in 0..N {
                            let p16 =
                                _mm256_add_epi16(_mm256_maddubs_epi16(lo, alo[j]), _mm256_maddubs_epi16(hi, ahi[j]));
                            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                            acc[r][j] = _mm256_fmadd_ps(_mm256_loadu_ps(at(r, j, p)), s, acc[r][j]);
                        }
                    }
                }};
            }
            for p in 0..n8 / 2 {
                let b = g + 2 * p;
                prefetch.blocks(b, 2);
                pair!(b, p, |w: *const u8| _mm256_loadu_si256(w as *const __m256i));
            }
            if n8 % 2 == 1 {
                // A lone last block: its activations' other half is zero.
                pair!(g + n8 - 1, n8 / 2, |w: *const u8| _mm256_zextsi128_si256(_mm_loadu_si128(w as *const __m128i)));
            }
            g += n8;
        }
        // Nibbles are stored with an offset of 8: sum((q-8)*a) = sum(q*a) - 8*sum(a).
        let eight = _mm256_set1_ps(8.0);
        let v: [[__m256; N]; R] =
            std::array::from_fn(|r| std::array::from_fn(|j| _mm256_fnmadd_ps(eight, off[r][j], acc[r][j])));
        reduce::<R, N>(v, o);
    }
}

/// Dot products of the 8 rows of one interleaved group (see `layout`) with 1 or 2
/// activation rows: `o[j][r]` for row `r`, act `j`.
pub unsafe fn group_dots(
    kind: BlockKind,
    group: &[u8],
    acts: &[ActRow],
    nb: usize,
    o: &mut [[f32; GROUP]],
    prefetch: bool,
) {
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    unsafe {
        let ones = _mm256_set1_epi16(1);
        group::q8::<N>(group, acts, nb, o, prefetch, |acc, aw, a| {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, a), ones))
        });
    }
}

/// Q4_0 group with `maddubs`: the 8 steps of a block add up in i16 without overflow
/// (8 x 2 x 15 x 127 < 32767), so one `madd` per block widens them.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
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
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block(src: &[f32], q: &mut [i8]) -> (f32, i32) {
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
