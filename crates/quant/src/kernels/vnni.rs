//! Interleaved-group kernels with AVX-512 VNNI on 256-bit vectors: `vpdpbusd` sums four
//! u8 x i8 products into each i32 lane in one instruction, where AVX2 needs `maddubs`, `madd`
//! and an add. Decoding one token is bound by memory and gains little; prefill and batched
//! decoding are bound by arithmetic, and there it halves the instructions per block. The
//! caller checks AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL at run time.

use std::arch::x86_64::*;

use super::BlockKind;
use super::acts::ActRow;
use super::group::{self, bcast4};
use super::layout::GROUP;

/// `o[j][r] = dot(row r of the group, acts[j])` for 1 to 4 activation rows.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL; `group` and the rows of `acts`
/// hold `nb` blocks of `kind` as [`super::avx2::group_dots`] requires.
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

/// Q4_0 group: nibbles are unsigned, so they feed `vpdpbusd` as they are; low and high
/// nibbles sum in two chains.
///
/// # Safety
/// As [`group_dots`], for a Q4_0 group.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe {
        group::q4::<N>(group, acts, nb, o, prefetch, |lo, hi, a| {
            let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for s in 0..4 {
                s0 = _mm256_dpbusd_epi32(s0, lo[s], bcast4(a.add(4 * s)));
                s1 = _mm256_dpbusd_epi32(s1, hi[s], bcast4(a.add(16 + 4 * s)));
            }
            _mm256_add_epi32(s0, s1)
        });
    }
}

/// Q8_0 group: `vpdpbusd` adds the 4 products of |w| and the sign-moved activations.
///
/// # Safety
/// As [`group_dots`], for a Q8_0 group.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8x8<const N: usize>(group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]], prefetch: bool) {
    // SAFETY: the caller upholds the contract in `# Safety` above.
    unsafe { group::q8::<N>(group, acts, nb, o, prefetch, |acc, aw, a| _mm256_dpbusd_epi32(acc, aw, a)) }
}
