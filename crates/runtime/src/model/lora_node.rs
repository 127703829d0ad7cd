//! A frozen linear layer with its LoRA adapter as one node of candle's graph.
//!
//! Built from candle's ops, `x W^T + b + s (drop(x) A^T) B^T` is about a dozen nodes, and
//! candle's backward visits each with a fresh `zeros_like` plus an `add` into the gradient
//! store, and computes gradients nobody asked for (of the dropout mask, of the frozen bias, of
//! the product the bias is added to), while the graph keeps the frozen product, the adapter's
//! delta and their sum alive until then. Here the forward runs outside the graph with exactly
//! the ops it always used (so its values are the same), and the one node's backward computes
//! the products candle's matmul backward would, in the same layouts: the input's gradient, and
//! `A`'s and `B`'s. Only the order in which a shared input's gradients are summed changes (the
//! last bits of a step). Measured on Qwen2.5-0.5B's shape, LoRA r8, 1×128
//! (`cargo bench --bench qlora`): peak 3553 → 3070 MiB with an f32 base, 2273 → 1642 MiB with
//! Q4_0; the step's time moved less than this shared machine's noise.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::{Lora, Weight, dropout_mask, matmul_t};
use crate::held::held_linear;

struct LoraLinear {
    frozen: Weight,
    /// The layer's output, computed outside the graph; the node's forward takes it.
    out: Mutex<Option<Tensor>>,
    /// The adapter's input `[rows, in]` (after dropout) and its rank-r activations, already
    /// scaled `[rows, r]`: what the backward of `A` and `B` needs.
    xin: Tensor,
    low: Tensor,
    /// The dropout mask `drop(x) = x · mask`, if any.
    mask: Option<Tensor>,
    scale: f64,
}

impl LoraLinear {
    fn take_out(&self) -> candle_core::Result<Tensor> {
        let taken = self.out.lock().map(|mut o| o.take());
        taken.ok().flatten().ok_or_else(|| candle_core::Error::Msg("lora linear: forward ran twice".into()))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.take_out()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("lora linear: the product is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = self.take_out()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("lora linear: the product is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = grad.dims();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let g = grad.reshape((rows, dims[dims.len() - 1]))?;
        let frozen = match &self.frozen {
            Weight::Plain(w) => g.matmul(w)?,
            Weight::Held(w) => w.input_grad(&g)?,
        };
        // candle's matmul backward for `low @ B^T` and `xin @ A^T`, then the scale's.
        let grad_b = self.low.t()?.matmul(&g)?.t()?;
        let grad_low = (g.matmul(b)? * self.scale)?;
        let grad_a = self.xin.t()?.matmul(&grad_low)?.t()?;
        let mut grad_xin = grad_low.matmul(a)?;
        if let Some(mask) = &self.mask {
            grad_xin = grad_xin.mul(mask)?;
        }
        let grad_x = (frozen + grad_xin)?.reshape(x.shape())?;
        Ok((Some(grad_x), Some(grad_a), Some(grad_b)))
    }
}

/// `x W^T + b + s · drop(x) A^T B^T` for a frozen `W` (and bias) as one graph node; gradients
/// flow to `x`, `A` and `B`. The values are those of the same expression in candle's ops.
pub(super) fn lora_linear(
    x: &Tensor,
    frozen: &Weight,
    bias: Option<&Tensor>,
    lora: &Lora,
    rng: Option<&mut rand_chacha::ChaCha8Rng>,
) -> anyhow::Result<Tensor> {
    let x = x.contiguous()?;
    let xd = x.detach();
    let mut y = match frozen {
        Weight::Plain(w) => matmul_t(&xd, w)?,
        Weight::Held(w) => held_linear(&xd, w, false)?,
    };
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let (xin, mask) = match rng {
        Some(rng) if lora.dropout > 0.0 => {
            let mask = dropout_mask(&xd, lora.dropout, rng)?;
            ((&xd * &mask)?, Some(mask))
        }
        _ => (xd, None),
    };
    let (a, b) = (lora.a.as_tensor().detach(), lora.b.as_tensor().detach());
    let low = (matmul_t(&xin, &a)? * lora.scale)?;
    let y = (y + matmul_t(&low, &b)?)?.contiguous()?;
    let in_dim = xin.dim(candle_core::D::Minus1)?;
    let flat = |t: &Tensor, cols: usize| t.reshape((t.elem_count() / cols, cols));
    let node = LoraLinear {
        frozen: frozen.clone(),
        out: Mutex::new(Some(y)),
        xin: flat(&xin, in_dim)?,
        low: flat(&low, low.dim(candle_core::D::Minus1)?)?,
        mask: mask.map(|m| flat(&m, in_dim)).transpose()?,
        scale: lora.scale,
    };
    Ok(x.apply_op3(lora.a.as_tensor(), lora.b.as_tensor(), node)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::held::{BaseQuant, HeldMatrix, HoldSpec};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The same layer in candle's own ops, as `Linear::forward` builds it without the node.
    fn composed(x: &Tensor, w: &Tensor, bias: &Tensor, lora: &Lora, rng: &mut ChaCha8Rng) -> Tensor {
        let y = matmul_t(x, w).unwrap().broadcast_add(bias).unwrap();
        let xin = (x * dropout_mask(x, lora.dropout, rng).unwrap()).unwrap();
        let low = (matmul_t(&xin, lora.a.as_tensor()).unwrap() * lora.scale).unwrap();
        (y + matmul_t(&low, lora.b.as_tensor()).unwrap()).unwrap()
    }

    #[test]
    fn one_node_gives_the_values_and_gradients_of_candles_ops() {
        let dev = Device::Cpu;
        let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let w = randn(&[6, 64]);
        let bias = randn(&[6]);
        let held =
            HeldMatrix::hold("w", &w, HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q8_0) }, &dev).unwrap();
        let held_f32 = held.to_f32().unwrap();
        // (frozen weight, the f32 weight it computes with, tolerance): plain f32 is the same
        // arithmetic; the held Q8_0 product is widened tile by tile, so it differs by rounding.
        let cases = [(Weight::Plain(w.clone()), w.clone(), 1e-6), (Weight::Held(Arc::new(held)), held_f32, 1e-3)];
        for (frozen, w_f32, tol) in cases {
            let x = Var::from_tensor(&randn(&[2, 3, 64])).unwrap();
            let lora = Lora {
                a: Var::from_tensor(&randn(&[2, 64])).unwrap(),
                b: Var::from_tensor(&randn(&[6, 2])).unwrap(),
                scale: 2.0,
                dropout: 0.3,
            };
            let upstream = randn(&[2, 3, 6]);
            let node = lora_linear(x.as_tensor(), &frozen, Some(&bias), &lora, Some(&mut ChaCha8Rng::seed_from_u64(7)))
                .unwrap();
            let reference = composed(x.as_tensor(), &w_f32, &bias, &lora, &mut ChaCha8Rng::seed_from_u64(7));
            assert!(max_diff(&node, &reference) <= tol, "forward differs by {}", max_diff(&node, &reference));
            let g_node = (&node * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, t) in [("x", x.as_tensor()), ("A", lora.a.as_tensor()), ("B", lora.b.as_tensor())] {
                let (got, want) = (g_node.get(t).expect(what), g_ref.get(t).expect(what));
                let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(
                    max_diff(got, want) <= tol * scale.max(1.0),
                    "gradient of {what} differs by {}",
                    max_diff(got, want)
                );
            }
            assert!(g_node.get(&w).is_none() && g_node.get(&bias).is_none(), "frozen tensors got a gradient");
        }
    }

    #[test]
    fn without_dropout_the_adapter_sees_the_input_itself() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let lora = Lora {
            a: Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 8), &dev).unwrap()).unwrap(),
            b: Var::zeros((3, 1), DType::F32, &dev).unwrap(),
            scale: 1.0,
            dropout: 0.3,
        };
        // No generator: dropout is off, and with B = 0 the layer is the base layer.
        let y = lora_linear(x.as_tensor(), &Weight::Plain(w.clone()), None, &lora, None).unwrap();
        assert!(max_diff(&y, &matmul_t(x.as_tensor(), &w).unwrap()) == 0.0);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gb = grads.get(lora.b.as_tensor()).expect("B gets a gradient while it is zero");
        let expected = x
            .as_tensor()
            .matmul(&lora.a.as_tensor().t().unwrap())
            .unwrap()
            .sum_keepdim(0)
            .unwrap()
            .broadcast_as((3, 1))
            .unwrap();
        assert!(max_diff(gb, &expected) < 1e-5);
    }
}
