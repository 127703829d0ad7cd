//! f32 vector work of the decoder outside the matmuls: attention's scores and weighted sums,
//! softmax and SiLU. At decode these run once per token per layer on one core while the other
//! waits, so each has an AVX2 path; the portable loops are the reference.

#[cfg(target_arch = "x86_64")]
use super::avx2_vector as simd;
use super::has_avx2;

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked at run time.
        return unsafe { simd::dot(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `scores[h * n + p] = scale * (q_h · k_p)` for the query heads `q` (`heads x hd`) that share
/// one KV head, whose keys `k_p = k[p * stride..][..hd]`, `p < n`, are read once for all of them.
pub fn attention_scores(q: &[f32], hd: usize, k: &[f32], stride: usize, n: usize, scale: f32, scores: &mut [f32]) {
    let heads = q.len() / hd;
    assert!(scores.len() >= heads * n && (n == 0 || k.len() >= (n - 1) * stride + hd));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && hd % 8 == 0 {
        // SAFETY: features checked at run time; bounds asserted above.
        unsafe { simd::attention_scores(q, hd, k, stride, n, scale, scores) };
        return;
    }
    attention_scores_portable(q, hd, k, stride, n, scale, scores);
}

pub(super) fn attention_scores_portable(
    q: &[f32],
    hd: usize,
    k: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    scores: &mut [f32],
) {
    for p in 0..n {
        let kp = &k[p * stride..p * stride + hd];
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * n + p] = scale * qh.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>();
        }
    }
}

/// `out_h += Σ_p w[h * n + p] * v_p` for each head `h` of `out` (`heads x hd`), values
/// `v_p = v[p * stride..][..hd]`.
pub fn attention_values(w: &[f32], n: usize, v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    let heads = out.len() / hd;
    assert!(w.len() >= heads * n && (n == 0 || v.len() >= (n - 1) * stride + hd));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && hd % 8 == 0 {
        // SAFETY: features checked at run time; bounds asserted above.
        unsafe { simd::attention_values(w, n, v, stride, hd, out) };
        return;
    }
    attention_values_portable(w, n, v, stride, hd, out);
}

pub(super) fn attention_values_portable(w: &[f32], n: usize, v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        for p in 0..n {
            let wp = w[h * n + p];
            for (o, x) in oh.iter_mut().zip(&v[p * stride..p * stride + hd]) {
                *o += wp * x;
            }
        }
    }
}

/// Softmax of `x` in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked at run time.
        unsafe { simd::softmax(x, max) };
        return;
    }
    softmax_portable(x, max);
}

pub(super) fn softmax_portable(x: &mut [f32], max: f32) {
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `gate = silu(gate) * up`, SwiGLU's gating.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked at run time; equal lengths asserted.
        unsafe { simd::silu_mul(gate, up) };
        return;
    }
    silu_mul_portable(gate, up);
}

pub(super) fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
