//! The loop of the interleaved-group kernels (layout in `layout`), shared by the AVX2 and the
//! AVX-512 VNNI families, which differ only in how a block's integer dot products are formed.
//! Output lanes are the group's 8 rows, so a block ends in one scale multiply per act and no
//! horizontal sums. These are `inline(always)`: each family's `target_feature` wrapper compiles
//! them with its own instructions.

use std::arch::x86_64::*;

use super::QK;
use super::acts::ActRow;
use super::avx2::Prefetch;
use super::layout::GROUP;

/// 4 activation bytes at `p`, in every i32 lane.
///
/// # Safety
/// The CPU supports AVX; `p` is valid for reading 4 bytes (any alignment).
#[inline(always)]
pub(super) unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// Q4_0 group x N acts. Each 32-byte step is 8 rows x 4 elements of low nibbles and, shifted,
/// 8 rows x 4 of high nibbles; `block_sum(lo, hi, a)` dots them with the block's 32 activation
/// bytes at `a` (low nibbles with `a[4s..]`, high with `a[16 + 4s..]`) into one i32 per row.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (the caller's `target_feature`); `group` holds
/// `nb * 18 * GROUP` bytes; the first `N` rows of `acts` hold `nb` blocks each (`qs` at least
/// `nb * QK` bytes, `d` and `dsum` at least `nb` values); `block_sum` reads only the 32 bytes at
/// its `a`. `acts` and `o` having fewer than `N` rows panics.
#[inline(always)]
pub(super) unsafe fn q4<const N: usize>(
    group: &[u8],
    acts: &[ActRow],
    nb: usize,
    o: &mut [[f32; GROUP]],
    prefetch: bool,
    block_sum: impl Fn(&[__m256i; 4], &[__m256i; 4], *const i8) -> __m256i,
) {
    // SAFETY: the caller upholds the contract in `# Safety` above; every offset below stays
    // inside the `nb` blocks it promises.
    unsafe {
        let q = group.as_ptr();
        let scales = q.add(nb * 16 * GROUP);
        let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let ds: [*const f32; N] = std::array::from_fn(|j| acts[j].dsum.as_ptr());
        let pf = Prefetch::new(q, GROUP * nb * 18, nb, prefetch);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            pf.block(b);
            let wb = q.add(b * 16 * GROUP);
            let raw: [__m256i; 4] = std::array::from_fn(|s| _mm256_loadu_si256(wb.add(32 * s) as *const __m256i));
            let lo: [__m256i; 4] = std::array::from_fn(|s| _mm256_and_si256(raw[s], mask));
            let hi: [__m256i; 4] = std::array::from_fn(|s| _mm256_and_si256(_mm256_srli_epi16(raw[s], 4), mask));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * 2 * GROUP) as *const __m128i));
            for j in 0..N {
                let isum = _mm256_cvtepi32_ps(block_sum(&lo, &hi, aq[j].add(b * QK)));
                // Nibbles are stored with an offset of 8: sum((q-8)*a) = d*sum(q*a) - 8*dsum.
                let t = _mm256_fmadd_ps(isum, _mm256_set1_ps(*ad[j].add(b)), _mm256_set1_ps(-8.0 * *ds[j].add(b)));
                acc[j] = _mm256_fmadd_ps(dw, t, acc[j]);
            }
        }
        for j in 0..N {
            _mm256_storeu_ps(o[j].as_mut_ptr(), acc[j]);
        }
    }
}

/// Q8_0 group x N acts. Each 32-byte step is 8 rows x 4 signed weights; signed x signed is
/// done as |w| (unsigned) x (the activations with w's sign), and `dot4(acc, |w|, a)` adds each
/// lane's 4 products to `acc`. Steps alternate between two chains.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (the caller's `target_feature`); `group` holds
/// `nb * 34 * GROUP` bytes; the first `N` rows of `acts` hold `nb` blocks each (`qs` at least
/// `nb * QK` bytes, `d` at least `nb` values). `acts` and `o` having fewer than `N` rows panics.
#[inline(always)]
pub(super) unsafe fn q8<const N: usize>(
    group: &[u8],
    acts: &[ActRow],
    nb: usize,
    o: &mut [[f32; GROUP]],
    prefetch: bool,
    dot4: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) {
    // SAFETY: the caller upholds the contract in `# Safety` above; every offset below stays
    // inside the `nb` blocks it promises.
    unsafe {
        let q = group.as_ptr();
        let scales = q.add(nb * 32 * GROUP);
        let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let pf = Prefetch::new(q, GROUP * nb * 34, nb, prefetch);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            pf.block(b);
            let wb = q.add(b * 32 * GROUP);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * 2 * GROUP) as *const __m128i));
            let mut isum = [[_mm256_setzero_si256(); 2]; N];
            for s in 0..8 {
                let w = _mm256_loadu_si256(wb.add(32 * s) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for j in 0..N {
                    let a = _mm256_sign_epi8(bcast4(aq[j].add(b * QK + 4 * s)), w);
                    isum[j][s % 2] = dot4(isum[j][s % 2], aw, a);
                }
            }
            for j in 0..N {
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*ad[j].add(b)));
                acc[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_add_epi32(isum[j][0], isum[j][1])), acc[j]);
            }
        }
        for j in 0..N {
            _mm256_storeu_ps(o[j].as_mut_ptr(), acc[j]);
        }
    }
}
