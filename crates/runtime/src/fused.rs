//! Fused CPU forms of the training path's element-wise ops (RMSNorm, SwiGLU's `silu(g) * u`,
//! the attention softmax), each with its own backward, and of the loss's cross-entropy and its
//! gradient.
//!
//! Why: candle builds the differentiable versions from single-threaded element-wise ops that
//! each allocate a fresh output, and its autograd adds several more per op in backward (silu's
//! gradient alone is eight tensors the size of the MLP activations). Each op here is one
//! parallel pass forward and one backward. The math is the composite ops' (same formulas; the
//! SwiGLU forward is bit-identical), and the tests hold values and gradients to them.
//!
//! Off the CPU, or for other dtypes, the composite candle ops run: they have CUDA kernels and
//! their autograd is correct there.
//!
//! The backward ops take detached operands, so a gradient carries no graph: gradient
//! checkpointing backpropagates a recomputed layer against the gradient of the layer above,
//! and that gradient must be a constant there (these ops have no second derivative).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Elements one parallel task takes at least: below this a thread wake-up costs more than it
/// saves.
const MIN_TASK: usize = 16 * 1024;

fn on_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: expected f32, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// Rows of `width` per parallel task.
fn rows_per_task(width: usize) -> usize {
    MIN_TASK.div_ceil(width.max(1))
}

/// `x / sqrt(mean(x², last dim) + eps) * w`: `candle_nn::ops::rms_norm_slow`, fused on the CPU.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !on_cpu_f32(&[x, w]) {
        return candle_nn::ops::rms_norm_slow(x, w, eps);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

/// `sqrt(mean(row²) + eps)`.
fn rms(row: &[f32], eps: f32) -> f32 {
    let sq: f32 = row.iter().map(|v| v * v).sum();
    (sq / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let h = w.len();
        if l1.dims().last() != Some(&h) {
            candle_core::bail!("rms norm: weight of {h} for rows of {:?}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        let per = rows_per_task(h) * h;
        y.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                let norm = rms(x, self.eps);
                for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                    *y = x / norm * w;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let op = RmsNormBwd { eps: self.eps, weight_grad: w.is_variable() };
        let both = x.detach().apply_op3(&w.detach(), &grad.detach().contiguous()?, op)?;
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = w.is_variable().then(|| both.narrow(0, n, w.elem_count())).transpose()?;
        Ok((Some(dx), dw))
    }
}

/// The RMSNorm gradients, `[dx ..., dw ...]` in one buffer. With `xh = x * r`, `r` the row's
/// inverse RMS and `gw = g * w`: `dx = r * (gw - xh * mean(gw * xh))`, `dw = Σ_rows g * xh`.
struct RmsNormBwd {
    eps: f32,
    weight_grad: bool,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, g) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let (n, h) = (x.len(), w.len());
        let mut out = vec![0f32; n + h];
        let (dx, dw) = out.split_at_mut(n);
        let per = rows_per_task(h) * h;
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .zip(g.par_chunks(per))
            .map(|((dx, x), g)| {
                let mut dw = if self.weight_grad { vec![0f32; h] } else { Vec::new() };
                for ((dx, x), g) in dx.chunks_exact_mut(h).zip(x.chunks_exact(h)).zip(g.chunks_exact(h)) {
                    let r = 1.0 / rms(x, self.eps);
                    let dot: f32 = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x * r).sum();
                    let c = dot / h as f32;
                    for (((dx, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                        *dx = r * (g * w - x * r * c);
                    }
                    for ((dw, x), g) in dw.iter_mut().zip(x).zip(g) {
                        *dw += g * x * r;
                    }
                }
                dw
            })
            .collect();
        for p in &partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + h)))
    }
}

/// `silu(g) * u`, fused on the CPU (the same value as candle's `silu(g) * u`, bit for bit).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if !on_cpu_f32(&[g, u]) || g.shape() != u.shape() {
        return candle_nn::ops::silu(g)? * u;
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let mut h = vec![0f32; g.len()];
        h.par_chunks_mut(MIN_TASK).zip(g.par_chunks(MIN_TASK)).zip(u.par_chunks(MIN_TASK)).for_each(|((h, g), u)| {
            for ((h, g), u) in h.iter_mut().zip(g).zip(u) {
                // candle's silu, then the product: the same float operations.
                *h = (g / (1.0 + (-g).exp())) * u;
            }
        });
        Ok((CpuStorage::F32(h), l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _h: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = g.elem_count();
        let both = g.detach().apply_op3(&u.detach(), &grad.detach().contiguous()?, SwiGluBwd)?;
        Ok((Some(both.narrow(0, 0, n)?.reshape(g.shape())?), Some(both.narrow(0, n, n)?.reshape(u.shape())?)))
    }
}

/// `[dg ..., du ...]`: with `s = sigmoid(g)`, `du = dh * g * s`, `dg = dh * u * s * (1 + g (1 - s))`.
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "fused-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (g, u, dh) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(MIN_TASK)
            .zip(du.par_chunks_mut(MIN_TASK))
            .zip(g.par_chunks(MIN_TASK).zip(u.par_chunks(MIN_TASK)).zip(dh.par_chunks(MIN_TASK)))
            .for_each(|((dg, du), ((g, u), dh))| {
                for i in 0..g.len() {
                    let s = 1.0 / (1.0 + (-g[i]).exp());
                    du[i] = dh[i] * g[i] * s;
                    dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// Softmax over the last dimension: `candle_nn::ops::softmax(x, D::Minus1)`, fused on the CPU.
/// Rows may hold `-inf` (masked) entries, but not only those.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !on_cpu_f32(&[x]) {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let width = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        if width == 0 {
            return Ok((CpuStorage::F32(y), l.shape().clone()));
        }
        let per = rows_per_task(width) * width;
        y.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (y, x) in y.iter_mut().zip(x) {
                    *y = (x - max).exp();
                    sum += *y;
                }
                for y in y.iter_mut() {
                    *y /= sum;
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.detach().apply_op2(&grad.detach().contiguous()?, SoftmaxBwd)?))
    }
}

/// `dx = y * (g - Σ g y)` per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let width = *l1.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; y.len()];
        if width == 0 {
            return Ok((CpuStorage::F32(dx), l1.shape().clone()));
        }
        let per = rows_per_task(width) * width;
        dx.par_chunks_mut(per).zip(y.par_chunks(per)).zip(g.par_chunks(per)).for_each(|((dx, y), g)| {
            for ((dx, y), g) in dx.chunks_exact_mut(width).zip(y.chunks_exact(width)).zip(g.chunks_exact(width)) {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((dx, y), g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = y * (g - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The mean cross-entropy of `logits: [n, vocab]` against `labels: [n, 1]` (u32), as a scalar,
/// and its gradient with respect to the logits, `(softmax(logits) - onehot(labels)) / n`;
/// outside the autograd graph. On the CPU one parallel pass over the logits, which with a
/// 150k vocabulary are the step's largest tensor (composed, seven passes and allocations).
pub fn cross_entropy_with_grad(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, vocab) = logits.dims2()?;
    if !on_cpu_f32(&[logits]) {
        let max = logits.max_keepdim(D::Minus1)?;
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        let value = (lse - logits.gather(labels, 1)?)?.mean_all()?;
        let minus_one = Tensor::full(-1f32, labels.shape(), logits.device())?;
        let g = candle_nn::ops::softmax_last_dim(logits)?.scatter_add(labels, &minus_one, 1)?;
        return Ok((value, (g / n as f64)?));
    }
    let labels: Vec<u32> = labels.flatten_all()?.to_vec1()?;
    if labels.len() != n {
        candle_core::bail!("cross entropy: {} labels for {n} rows", labels.len());
    }
    if let Some(bad) = labels.iter().find(|&&y| y as usize >= vocab) {
        candle_core::bail!("cross entropy: label {bad} is outside the vocabulary ({vocab})");
    }
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("cross entropy: expected CPU logits") };
    let x = f32s(cpu, layout, "cross entropy")?;
    let mut g = vec![0f32; n * vocab];
    let inv_n = 1.0 / n as f32;
    let losses: Vec<f64> = g
        .par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .zip(&labels)
        .map(|((g, x), &y)| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (g, x) in g.iter_mut().zip(x) {
                *g = (x - max).exp();
                sum += *g;
            }
            let scale = inv_n / sum;
            for g in g.iter_mut() {
                *g *= scale;
            }
            g[y as usize] -= inv_n;
            (sum.ln() + max - x[y as usize]) as f64
        })
        .collect();
    let value = (losses.iter().sum::<f64>() / n as f64) as f32;
    let device = logits.device().clone();
    drop(storage);
    Ok((Tensor::new(value, &device)?, Tensor::from_vec(g, (n, vocab), &device)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic values without candle's unseedable CPU rng.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Gradients of `Σ f(inputs) * probe` for the fused op and its composite twin.
    fn grads_of(f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], probe: &Tensor) -> (Tensor, Vec<Option<Tensor>>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let g = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
        (y, ts.iter().map(|t| g.get(t).cloned()).collect())
    }

    fn assert_twins(
        name: &str,
        fused: impl Fn(&[Tensor]) -> Tensor,
        slow: impl Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
    ) {
        let probe_shape = slow(inputs).dims().to_vec();
        let probe = randn(&probe_shape, 99);
        let (yf, gf) = grads_of(fused, inputs, &probe);
        let (ys, gs) = grads_of(slow, inputs, &probe);
        let d = max_diff(&yf, &ys);
        assert!(d < 1e-5, "{name}: values differ by {d}");
        for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
            let (a, b) = (a.as_ref().expect("fused gradient"), b.as_ref().expect("composite gradient"));
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let d = max_diff(a, b) / scale;
            assert!(d < 1e-5, "{name}: gradient {i} differs by {d} (relative)");
        }
    }

    #[test]
    fn rms_norm_matches_the_composite_op_with_gradients_for_input_and_weight() {
        // 40 rows of 896 span several parallel tasks; the second shape is Qwen3's per-head norm.
        for (shape, h) in [(vec![2, 20, 896], 896), (vec![1, 3, 5, 8], 8)] {
            let inputs = [randn(&shape, 1), (randn(&[h], 2) * 0.25).unwrap()];
            assert_twins(
                "rms_norm",
                |t| rms_norm(&t[0], &t[1], 1e-6).unwrap(),
                |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-6).unwrap(),
                &inputs,
            );
        }
    }

    #[test]
    fn a_frozen_norm_weight_gets_no_gradient() {
        let x = Var::from_tensor(&randn(&[4, 16], 3)).unwrap();
        let w = randn(&[16], 4);
        let g = rms_norm(x.as_tensor(), &w, 1e-6).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some() && g.get(&w).is_none());
    }

    #[test]
    fn swiglu_matches_the_composite_op_bit_for_bit_forward_and_in_gradients() {
        let inputs = [randn(&[3, 7, 4864], 5), randn(&[3, 7, 4864], 6)];
        let fused = swiglu(&inputs[0], &inputs[1]).unwrap();
        let slow = (candle_nn::ops::silu(&inputs[0]).unwrap() * &inputs[1]).unwrap();
        assert_eq!(max_diff(&fused, &slow), 0.0);
        assert_twins(
            "swiglu",
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (candle_nn::ops::silu(&t[0]).unwrap() * &t[1]).unwrap(),
            &inputs,
        );
    }

    #[test]
    fn cross_entropy_and_its_gradient_match_the_composite_ops() {
        let logits = randn(&[9, 4000], 8);
        let labels = Tensor::from_vec((0..9u32).map(|i| i * 443).collect::<Vec<_>>(), (9, 1), &Device::Cpu).unwrap();
        let (value, g) = cross_entropy_with_grad(&logits, &labels).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let expected = logp.gather(&labels, 1).unwrap().mean_all().unwrap().neg().unwrap();
        let d = (value.to_scalar::<f32>().unwrap() - expected.to_scalar::<f32>().unwrap()).abs();
        assert!(d < 1e-5, "loss differs by {d}");
        // The gradient of the composite loss by candle's autograd.
        let v = Var::from_tensor(&logits).unwrap();
        let lp = candle_nn::ops::log_softmax(v.as_tensor(), D::Minus1).unwrap();
        let loss = lp.gather(&labels, 1).unwrap().mean_all().unwrap().neg().unwrap();
        let reference = loss.backward().unwrap().get(v.as_tensor()).unwrap().clone();
        let d = max_diff(&g, &reference);
        assert!(d < 1e-6, "gradient differs by {d}");
        let bad = Tensor::from_vec(vec![4000u32; 9], (9, 1), &Device::Cpu).unwrap();
        assert!(cross_entropy_with_grad(&logits, &bad).unwrap_err().to_string().contains("4000"));
    }

    #[test]
    fn softmax_matches_the_composite_op_with_masked_entries() {
        let (rows, w) = (70, 300);
        let mask: Vec<f32> = (0..rows * w).map(|i| if i % w > (i / w) * 4 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (rows, w), &Device::Cpu).unwrap();
        let inputs = [randn(&[rows, w], 7)];
        assert_twins(
            "softmax",
            |t| softmax_last(&(&t[0] + &mask).unwrap()).unwrap(),
            |t| candle_nn::ops::softmax(&(&t[0] + &mask).unwrap(), D::Minus1).unwrap(),
            &inputs,
        );
    }
}
