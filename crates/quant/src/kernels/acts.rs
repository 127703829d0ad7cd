//! The activation side of a quantized matmul: quantized to Q8_0 once per matmul, then read
//! for every weight row.

use super::QK;

/// `t` vectors of length `k`, each in Q8_0 blocks.
pub struct QuantizedActs {
    pub k: usize,
    pub t: usize,
    pub qs: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// Sum of the quants of each block, scaled by its `d` (for Q4_0's offset of 8).
    pub dsum: Vec<f32>,
}

impl QuantizedActs {
    /// Quantize `t` rows of `k` floats (row-major); `k` must be a multiple of 32.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        assert!(k % QK == 0 && x.len() % k == 0, "activation length {} not a multiple of block row {k}", x.len());
        let t = x.len() / k;
        let nb = x.len() / QK;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; nb];
        let mut dsum = vec![0f32; nb];
        for b in 0..nb {
            let (scale, sum) = quantize_block(&x[b * QK..(b + 1) * QK], &mut qs[b * QK..(b + 1) * QK]);
            // The stored scale is f16 in llama.cpp's Q8_0; keep f32 here (more precise, no cost).
            d[b] = scale;
            dsum[b] = scale * sum as f32;
        }
        Self { k, t, qs, d, dsum }
    }

    pub(super) fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.k / QK;
        ActRow {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            d: &self.d[i * nb..(i + 1) * nb],
            dsum: &self.dsum[i * nb..(i + 1) * nb],
        }
    }
}

/// Quantize 32 floats to signed bytes with scale `max|x| / 127`, rounding half away from zero;
/// returns the scale and the sum of the quants. On the serial path of every matmul, so SIMD
/// where the machine has it (the same results: exact rounding, same float operations).
fn quantize_block(src: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: features checked at run time; both slices hold 32 values.
        return unsafe { super::avx2::quantize_block(src, q) };
    }
    quantize_block_portable(src, q)
}

pub(super) fn quantize_block_portable(src: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(src) {
        let r = (v * inv).round() as i32;
        *q = r as i8;
        sum += r;
    }
    (scale, sum)
}

/// One activation row of a [`QuantizedActs`], as the kernels read it.
#[derive(Clone, Copy)]
pub(super) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub dsum: &'a [f32],
}
