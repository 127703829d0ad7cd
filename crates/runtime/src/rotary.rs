//! Applying RoPE to `[b, heads, t, head_dim]` queries and keys, in both layouts the families
//! use (rotate-half and interleaved pairs) and on all or only the leading part of each head.
//!
//! Two versions: differentiable ops for training (candle's fused `rope`/`rope_i` drop
//! gradients), and the fused kernels for generation.

use candle_core::{D, Tensor};

use super::family::Rotary;

/// Cos/sin `[n, dims/2]` per position → the training path's broadcast shape: `[b, 1, t, dims]`
/// for rotate-half (each angle twice), `[b, 1, t, dims/2, 1]` for interleaved pairs.
pub fn train_tables(
    cos: &Tensor,
    sin: &Tensor,
    rot: Rotary,
    (b, t): (usize, usize),
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = rot.dims / 2;
    if rot.interleaved {
        Ok((cos.reshape((b, 1, t, half, 1))?, sin.reshape((b, 1, t, half, 1))?))
    } else {
        let cos = Tensor::cat(&[cos, cos], 1)?.reshape((b, 1, t, rot.dims))?;
        let sin = Tensor::cat(&[sin, sin], 1)?.reshape((b, 1, t, rot.dims))?;
        Ok((cos, sin))
    }
}

/// Differentiable RoPE with tables from [`train_tables`].
pub fn apply_train(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: Rotary) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let part = if rot.dims == hd { x.clone() } else { x.narrow(D::Minus1, 0, rot.dims)? };
    let rotated = if rot.interleaved {
        let (b, h, t, _) = part.dims4()?;
        let pairs = part.reshape((b, h, t, rot.dims / 2, 2))?;
        let (x0, x1) = (pairs.narrow(D::Minus1, 0, 1)?, pairs.narrow(D::Minus1, 1, 1)?);
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x1.broadcast_mul(cos)? + x0.broadcast_mul(sin)?)?;
        Tensor::cat(&[&r0, &r1], D::Minus1)?.reshape((b, h, t, rot.dims))?
    } else {
        let x1 = part.narrow(D::Minus1, 0, rot.dims / 2)?;
        let x2 = part.narrow(D::Minus1, rot.dims / 2, rot.dims / 2)?;
        let turned = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        (part.broadcast_mul(cos)? + turned.broadcast_mul(sin)?)?
    };
    if rot.dims == hd {
        Ok(rotated)
    } else {
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rot.dims, hd - rot.dims)?], D::Minus1)
    }
}

/// RoPE with candle's fused kernels (no gradient); `cos`/`sin` are `[t, dims/2]`.
pub fn apply_fused(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: Rotary) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let part = if rot.dims == hd { x.clone() } else { x.narrow(D::Minus1, 0, rot.dims)?.contiguous()? };
    let rotated = if rot.interleaved {
        candle_nn::rotary_emb::rope_i(&part, cos, sin)?
    } else {
        candle_nn::rotary_emb::rope(&part, cos, sin)?
    };
    if rot.dims == hd {
        Ok(rotated)
    } else {
        // A last-dim cat of a narrowed view comes back strided; the KV cache is concatenated to
        // it and multiplied, and candle's batched matmul refuses such strides.
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rot.dims, hd - rot.dims)?], D::Minus1)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn training_and_fused_paths_agree_and_the_training_one_has_gradients() {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (1, 2, 5, 8);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap()).unwrap();
        for rot in [
            Rotary { dims: 8, interleaved: false },
            Rotary { dims: 4, interleaved: true },
            Rotary { dims: 8, interleaved: true },
        ] {
            let half = rot.dims / 2;
            let angles: Vec<f32> = (0..t * half).map(|i| (i / half) as f32 * 0.3 / (1 + i % half) as f32).collect();
            let a = Tensor::from_vec(angles, (t, half), &dev).unwrap();
            let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
            let (tc, ts) = train_tables(&cos, &sin, rot, (b, t)).unwrap();
            let train = apply_train(x.as_tensor(), &tc, &ts, rot).unwrap();
            let fused = apply_fused(x.as_tensor(), &cos, &sin, rot).unwrap();
            assert!(max_diff(&train, &fused) < 1e-5, "{rot:?}");
            if rot.dims < hd {
                let pass = x.as_tensor().narrow(D::Minus1, rot.dims, hd - rot.dims).unwrap();
                assert_eq!(max_diff(&train.narrow(D::Minus1, rot.dims, hd - rot.dims).unwrap(), &pass), 0.0);
            }
            let g = train.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            assert!(g.get(x.as_tensor()).is_some(), "{rot:?}: no gradient");
        }
    }
}
