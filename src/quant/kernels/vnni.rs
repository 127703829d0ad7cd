//! Interleaved-group kernels with AVX-512 VNNI on 256-bit vectors: `vpdpbusd` sums four
//! u8 x i8 products into each i32 lane in one instruction, where AVX2 needs `maddubs`, `madd`
//! and an add. Decoding one token is bound by memory and gains little; prefill and batched
//! decoding are bound by arithmetic, and there it halves the instructions per block. The
//! caller checks AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL at run time.

use std::arch::x86_64::*;

use super::acts::ActRow;
use super::avx2::Prefetch;
use super::layout::GROUP;
use super::{BlockKind, QK};

/// `o[j][r] = dot(row r of the group, acts[j])` for 1 to 4 activation rows.
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
            (BlockKind::Q4_0, 2) => q4x8::<2>(group, acts, nb, o, prefetch),
            (BlockKind::Q4_0, 3) => q4x8::<3>(group, acts, nb, o, prefetch),
            (BlockKind::Q4_0, _) => q4x8::<4>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, 1) => q8x8::<1>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, 2) => q8x8::<2>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, 3) => q8x8::<3>(group, acts, nb, o, prefetch),
            (BlockKind::Q8_0, _) => q8x8::<4>(group, acts, nb, o, prefetch),
        }
    }
}

/// 4 activation bytes at `p`, in every i32 lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// Q4_0: nibbles are unsigned, so they feed `vpdpbusd` as they are (see the AVX2 `q4x8` for
/// the layout); low and high nibbles sum in two chains.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    unsafe {
        let q = group.as_ptr();
        let scales = q.add(nb * 16 * GROUP);
        let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let ds: [*const f32; N] = std::array::from_fn(|j| acts[j].dsum.as_ptr());
        let pf = Prefetch::new(q, GROUP, nb * 18, nb, prefetch);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            pf.blocks(b, 1);
            let wb = q.add(b * 16 * GROUP);
            let raw: [__m256i; 4] = std::array::from_fn(|s| _mm256_loadu_si256(wb.add(32 * s) as *const __m256i));
            let lo: [__m256i; 4] = std::array::from_fn(|s| _mm256_and_si256(raw[s], mask));
            let hi: [__m256i; 4] = std::array::from_fn(|s| _mm256_and_si256(_mm256_srli_epi16(raw[s], 4), mask));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * 2 * GROUP) as *const __m128i));
            for j in 0..N {
                let a = aq[j].add(b * QK);
                let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for s in 0..4 {
                    s0 = _mm256_dpbusd_epi32(s0, lo[s], bcast4(a.add(4 * s)));
                    s1 = _mm256_dpbusd_epi32(s1, hi[s], bcast4(a.add(16 + 4 * s)));
                }
                let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
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

/// Q8_0: signed x signed as |w| (unsigned) x (a with w's sign), in two chains.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    unsafe {
        let q = group.as_ptr();
        let scales = q.add(nb * 32 * GROUP);
        let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
        let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
        let pf = Prefetch::new(q, GROUP, nb * 34, nb, prefetch);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            pf.blocks(b, 1);
            let wb = q.add(b * 32 * GROUP);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * 2 * GROUP) as *const __m128i));
            let mut isum = [[_mm256_setzero_si256(); 2]; N];
            for s in 0..8 {
                let w = _mm256_loadu_si256(wb.add(32 * s) as *const __m256i);
                let aw = _mm256_abs_epi8(w);
                for j in 0..N {
                    let a = _mm256_sign_epi8(bcast4(aq[j].add(b * QK + 4 * s)), w);
                    isum[j][s % 2] = _mm256_dpbusd_epi32(isum[j][s % 2], aw, a);
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
