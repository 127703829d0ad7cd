//! A scalar head `v = h · w + b` on a decoder's final hidden states: the reward model's score
//! and the PPO critic's value. Saved as `score.weight` `[1, hidden]` and `score.bias` `[1]`, the
//! names of HF's `AutoModelForSequenceClassification` with one label.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const WEIGHT: &str = "score.weight";
pub const BIAS: &str = "score.bias";

pub struct ScalarHead {
    w: Var,
    b: Var,
}

impl ScalarHead {
    /// Seeded uniform(±1/sqrt(hidden)) weights (PyTorch's `Linear` default), zero bias.
    pub fn new(hidden: usize, seed: u64, device: &Device) -> anyhow::Result<ScalarHead> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5CA1_AB1E);
        let bound = 1.0 / (hidden as f32).sqrt();
        let w: Vec<f32> = (0..hidden).map(|_| rng.random_range(-bound..bound)).collect();
        Ok(ScalarHead {
            w: Var::from_tensor(&Tensor::from_vec(w, (hidden, 1), device)?)?,
            b: Var::from_tensor(&Tensor::zeros(1, DType::F32, device)?)?,
        })
    }

    /// Zero weights: a critic starts out predicting 0 everywhere.
    pub fn zeros(hidden: usize, device: &Device) -> anyhow::Result<ScalarHead> {
        Ok(ScalarHead {
            w: Var::from_tensor(&Tensor::zeros((hidden, 1), DType::F32, device)?)?,
            b: Var::from_tensor(&Tensor::zeros(1, DType::F32, device)?)?,
        })
    }

    /// `[n, hidden]` → `[n]`.
    pub fn forward(&self, h: &Tensor) -> anyhow::Result<Tensor> {
        Ok(h.matmul(self.w.as_tensor())?.squeeze(1)?.broadcast_add(self.b.as_tensor())?)
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        vec![(WEIGHT.to_string(), self.w.clone()), (BIAS.to_string(), self.b.clone())]
    }

    /// Tensors under HF's names, on the CPU.
    pub fn tensors(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(HashMap::from([
            (WEIGHT.to_string(), self.w.as_tensor().t()?.contiguous()?.to_device(&Device::Cpu)?),
            (BIAS.to_string(), self.b.as_tensor().to_device(&Device::Cpu)?),
        ]))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        candle_core::safetensors::save(&self.tensors()?, path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path, hidden: usize, device: &Device) -> anyhow::Result<ScalarHead> {
        let t = candle_core::safetensors::load(path, device).with_context(|| format!("reading {}", path.display()))?;
        let get = |k: &str| t.get(k).with_context(|| format!("{}: tensor `{k}` is missing", path.display()));
        let (w, b) = (get(WEIGHT)?, get(BIAS)?);
        if w.dims() != [1, hidden] || b.dims() != [1] {
            bail!(
                "{}: score head has shapes {:?}/{:?}, the model needs [1, {hidden}]/[1]",
                path.display(),
                w.dims(),
                b.dims()
            );
        }
        Ok(ScalarHead {
            w: Var::from_tensor(&w.to_dtype(DType::F32)?.t()?.contiguous()?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
        })
    }
}
