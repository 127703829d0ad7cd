//! Training arithmetic candle-nn lacks: AdamW whose moments can be checkpointed (candle-nn's keeps
//! them private, so a resumed run could not continue the same trajectory), gradient accumulation,
//! global-norm clipping, and a linear-warmup + cosine learning-rate schedule.

use std::collections::HashMap;

use anyhow::Context;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Decoupled-weight-decay Adam (Loshchilov & Hutter), as PyTorch's `AdamW`. Decay skips 1-D
/// tensors (biases and norm weights), as HF's Trainer does.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimiser steps taken.
    pub steps: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> anyhow::Result<AdamW> {
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW { vars, m, v, steps: 0, cfg })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with `grads[i]` for `vars[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> anyhow::Result<()> {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            // candle detaches the gradients it propagates, but a leaf's stored gradient (e.g.
            // `h^T · dy` for a head weight) still carries the op graph of that step's forward
            // activations. Folded into the moments undetached, every step's moments would keep
            // the previous step's whole graph alive: memory growing without bound.
            let g = &grads[i].detach();
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let mut p = var.as_tensor().detach();
            if c.weight_decay > 0.0 && var.rank() > 1 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            var.set(&(p - (update * lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// One update from a backward pass: each variable's gradient (zeros where none arrived),
    /// clipped to `grad_clip` global norm (0: no clipping). Returns the norm before clipping.
    pub fn step_from(&mut self, grads: &GradStore, grad_clip: f64, lr: f64) -> anyhow::Result<f64> {
        let mut g = self
            .vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned().map_or_else(|| v.zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = clip_grad_norm(&mut g, grad_clip)?;
        self.step(&g, lr)?;
        Ok(norm)
    }

    /// Moments keyed `m.<name>` / `v.<name>`, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> anyhow::Result<()> {
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (name, var) in &self.vars {
            for (key, out) in [(format!("m.{name}"), &mut m), (format!("v.{name}"), &mut v)] {
                let t = state.get(&key).with_context(|| format!("optimiser state `{key}` missing"))?;
                if t.dims() != var.dims() {
                    anyhow::bail!("optimiser state `{key}` has shape {:?}, expected {:?}", t.dims(), var.dims());
                }
                out.push(t.to_device(var.device())?.to_dtype(DType::F32)?);
            }
        }
        self.m = m;
        self.v = v;
        self.steps = steps;
        Ok(())
    }
}

/// Sums gradients of several micro-batches.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n: usize) -> Self {
        GradAccumulator { sums: vec![None; n] }
    }

    pub fn add(&mut self, vars: &[(String, Var)], grads: &GradStore) -> anyhow::Result<()> {
        for (i, (_, var)) in vars.iter().enumerate() {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Detached: a stored gradient can carry its micro-batch's forward graph.
                let g = g.detach();
                self.sums[i] = Some(match self.sums[i].take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros where none arrived), resetting the accumulator.
    pub fn take(&mut self, vars: &[(String, Var)]) -> anyhow::Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(vars.len());
        for (i, (_, var)) in vars.iter().enumerate() {
            out.push(match self.sums[i].take() {
                Some(g) => g,
                None => var.zeros_like()?,
            });
        }
        Ok(out)
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm` (if > 0); returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> anyhow::Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// Learning rate at optimiser step `step` (0-based): linear warmup over `warmup` steps, then
/// cosine decay to `min_ratio · base` at `total`.
pub fn lr_at(step: u64, total: u64, warmup: u64, base: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    base * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_at(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!(lr_at(55, 100, 10, 1.0, 0.0) < 0.51 && lr_at(55, 100, 10, 1.0, 0.0) > 0.49);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let dev = Device::Cpu;
        let mut g = vec![Tensor::new(&[3f32, 0.0], &dev).unwrap(), Tensor::new(&[4f32], &dev).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = clip_grad_norm(&mut g, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-4);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[[1f32, -1.0]], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        opt.step(&[Tensor::new(&[[0.5f32, -2.0]], &dev).unwrap()], 0.1).unwrap();
        let w = var.as_tensor().to_vec2::<f32>().unwrap();
        assert!((w[0][0] - 0.9).abs() < 1e-5 && (w[0][1] + 0.9).abs() < 1e-5, "{w:?}");
        assert_eq!(opt.state().len(), 2);
    }

    #[test]
    fn moments_never_keep_a_gradient_graph_alive() {
        // A variable's gradient keeps the graph of the forward that produced it; the optimiser
        // state must not, or each step's state holds every earlier step's graph (a leak that
        // grew PPO to 10 GB).
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..3 {
            let y = (var.as_tensor() * var.as_tensor()).unwrap().sum_all().unwrap();
            let grads = y.backward().unwrap();
            let mut acc = GradAccumulator::new(1);
            acc.add(opt.vars(), &grads).unwrap();
            let g = acc.take(opt.vars()).unwrap();
            assert!(!g[0].track_op(), "accumulated gradients are detached");
            opt.step(&[grads.get(var.as_tensor()).unwrap().clone()], 0.1).unwrap();
            assert!(opt.state().values().all(|t| !t.track_op()), "moments carry no graph");
        }
    }
}
