//! AVX2 paths of [`super::vector`] (the caller checks AVX2 and FMA at run time).

use std::arch::x86_64::*;

use super::avx2::{hsum, hsum4};

/// `a · b` over the shorter length.
///
/// # Safety
/// The CPU supports AVX2 and FMA (the loads stay within both slices).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the caller guarantees the features; `i + 16 <= n` bounds every load.
    unsafe {
        let n = a.len().min(b.len());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
            acc1 =
                _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), acc1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

/// `e^x` for 8 lanes: Cephes' single-precision method (`x = n ln2 + r`, a degree-5 polynomial in
/// `r`, `2^n` built in the exponent bits), relative error about 1e-7. Inputs are clamped to
/// `[-87.3, 88.3]`, so very negative ones give ~1e-38 rather than 0.
///
/// # Safety
/// The CPU supports AVX2 and FMA (its callers' `target_feature`).
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the caller guarantees the features; no memory is touched.
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
        let pow2n =
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
        _mm256_mul_ps(y, pow2n)
    }
}

/// See [`super::vector::attention_scores`]; `hd % 8 == 0`. Four heads share each key load and
/// one horizontal reduction.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `hd % 8 == 0`; `k.len() >= (n - 1) * stride + hd` (when
/// `n > 0`) and `scores.len() >= heads * n`, with `heads = q.len() / hd`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attention_scores(
    q: &[f32],
    hd: usize,
    k: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    scores: &mut [f32],
) {
    // SAFETY: the caller upholds the contract in `# Safety` above, which bounds every key
    // load (`p < n`, `i < hd`), query load (`h < heads`) and score store.
    unsafe {
        let heads = q.len() / hd;
        let (qp, kp0, sp) = (q.as_ptr(), k.as_ptr(), scores.as_mut_ptr());
        let scale4 = _mm_set1_ps(scale);
        for p in 0..n {
            let kp = kp0.add(p * stride);
            let mut h = 0;
            while h + 4 <= heads {
                let mut acc = [_mm256_setzero_ps(); 4];
                for i in (0..hd).step_by(8) {
                    let kv = _mm256_loadu_ps(kp.add(i));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add((h + j) * hd + i)), kv, *a);
                    }
                }
                let mut s = [0f32; 4];
                _mm_storeu_ps(s.as_mut_ptr(), _mm_mul_ps(scale4, hsum4(acc[0], acc[1], acc[2], acc[3])));
                for (j, v) in s.iter().enumerate() {
                    *sp.add((h + j) * n + p) = *v;
                }
                h += 4;
            }
            while h < heads {
                let mut acc = _mm256_setzero_ps();
                for i in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * hd + i)), _mm256_loadu_ps(kp.add(i)), acc);
                }
                *sp.add(h * n + p) = scale * hsum(acc);
                h += 1;
            }
        }
    }
}

/// See [`super::vector::attention_values`]; `hd % 8 == 0`. Each head's output is summed 64
/// dimensions at a time in eight registers, over all positions, then added to `out` once.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `hd % 8 == 0`; `w.len() >= heads * n` and
/// `v.len() >= (n - 1) * stride + hd` (when `n > 0`), with `heads = out.len() / hd`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attention_values(w: &[f32], n: usize, v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    // SAFETY: the caller upholds the contract in `# Safety` above, which bounds every weight
    // and value load; stores stay within `out` (`h < heads`, `d < hd`).
    unsafe {
        let heads = out.len() / hd;
        let (wp, vp, op) = (w.as_ptr(), v.as_ptr(), out.as_mut_ptr());
        for h in 0..heads {
            let mut d = 0;
            while d < hd {
                let lanes = ((hd - d) / 8).min(8);
                let mut acc = [_mm256_setzero_ps(); 8];
                for p in 0..n {
                    let wv = _mm256_set1_ps(*wp.add(h * n + p));
                    let row = vp.add(p * stride + d);
                    if lanes == 8 {
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * c)), *a);
                        }
                    } else {
                        for (c, a) in acc.iter_mut().enumerate().take(lanes) {
                            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * c)), *a);
                        }
                    }
                }
                for (c, a) in acc.iter().enumerate().take(lanes) {
                    let o = op.add(h * hd + d + 8 * c);
                    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *a));
                }
                d += 8 * lanes;
            }
        }
    }
}

/// `x = e^(x - max) / Σ`, in place.
///
/// # Safety
/// The CPU supports AVX2 and FMA (the loads and stores stay within `x`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(x: &mut [f32], max: f32) {
    // SAFETY: the caller guarantees the features; `i + 8 <= n` and `j < n` bound every access.
    unsafe {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        for j in i..n {
            let e = (*p.add(j) - max).exp();
            *p.add(j) = e;
            sum += e;
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
            i += 8;
        }
        for j in i..n {
            *p.add(j) *= 1.0 / sum;
        }
    }
}

/// `gate = gate / (1 + e^-gate) * up`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `up.len() >= gate.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    // SAFETY: the caller upholds the contract in `# Safety` above; indices stay below
    // `gate.len()`.
    unsafe {
        let (n, g, u) = (gate.len(), gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(g.add(i));
            let e = exp8(_mm256_xor_ps(x, sign));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(g.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
            i += 8;
        }
        for j in i..n {
            let x = *g.add(j);
            *g.add(j) = x / (1.0 + (-x).exp()) * *u.add(j);
        }
    }
}
