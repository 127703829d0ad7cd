//! How a [`Model`] takes its weights: base tensors held as a [`HoldSpec`] says (shared between
//! models over one base), checked against the config's shapes, trainable ones made variables;
//! and merged weights converted to the output dtype one at a time.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};

use super::Weight;
use crate::config::ModelConfig;
use crate::family::Family;
use crate::held::{HeldMatrix, HoldSpec};

/// Merged weights, each converted to the output dtype as it arrives.
pub(super) struct MergedOut {
    pub map: HashMap<String, Tensor>,
    pub dtype: DType,
}

impl MergedOut {
    pub fn insert(&mut self, name: String, t: Tensor) -> anyhow::Result<()> {
        self.map.insert(name, t.to_dtype(self.dtype)?);
        Ok(())
    }
}

/// One weight of a base as [`Model::from_base`] takes it.
#[derive(Clone)]
pub enum BaseTensor {
    /// Any dtype, any device: converted (and held) as the model is built.
    Tensor(Tensor),
    /// A frozen linear weight already held, shared by every model built from it.
    Held(Arc<HeldMatrix>),
}

/// One weight of a base held for frozen or LoRA models ([`Model::from_base`] shares it between
/// them): a linear layer as `spec` says, the embedding and an untied head as a tensor in its
/// dense dtype, norms and biases in f32, all on `device`.
pub fn hold_one(
    cfg: &ModelConfig,
    name: &str,
    t: Tensor,
    spec: HoldSpec,
    device: &Device,
) -> anyhow::Result<BaseTensor> {
    Ok(if is_dense(Family::of(cfg), name) {
        BaseTensor::Tensor(t.to_device(device)?.to_dtype(spec.dtype)?)
    } else if t.rank() == 2 && !spec.is_f32() {
        BaseTensor::Held(Arc::new(HeldMatrix::hold(name, &t, spec, device)?))
    } else {
        BaseTensor::Tensor(t.to_device(device)?.to_dtype(DType::F32)?)
    })
}

/// The embedding and an untied output head: held in the spec's dense dtype, never quantized,
/// as bitsandbytes' QLoRA keeps them (on a 7B they are still 2.2 GB of bf16: quantizing them
/// is the next saving).
fn is_dense(family: Family, name: &str) -> bool {
    name == family.embed() || name.strip_suffix(".weight") == Some(family.lm_head())
}

pub(super) struct Loader<'a> {
    pub weights: &'a mut HashMap<String, BaseTensor>,
    pub full: bool,
    pub device: &'a Device,
    pub hold: HoldSpec,
}

impl Loader<'_> {
    /// Remove a weight and check its shape.
    fn remove(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<BaseTensor> {
        let t = self.weights.remove(name).with_context(|| format!("weight `{name}` is missing"))?;
        let dims = match &t {
            BaseTensor::Tensor(t) => t.dims().to_vec(),
            BaseTensor::Held(h) => vec![h.dims().0, h.dims().1],
        };
        if dims != shape {
            bail!("weight `{name}` has shape {dims:?}, the config implies {shape:?}");
        }
        Ok(t)
    }

    /// The embedding or the untied head: in the hold dtype, a Var in full mode.
    pub fn take_dense(
        &mut self,
        name: &str,
        shape: &[usize],
        trainable: &mut Vec<(String, Var)>,
    ) -> anyhow::Result<Tensor> {
        let dtype = if self.full { DType::F32 } else { self.hold.dtype };
        self.take_as(name, shape, trainable, dtype)
    }

    /// A linear layer's weight: held as the spec says when frozen, a Var in full mode.
    pub fn take_linear(
        &mut self,
        name: &str,
        shape: &[usize],
        trainable: &mut Vec<(String, Var)>,
    ) -> anyhow::Result<Weight> {
        if self.full || self.hold.is_f32() {
            return Ok(Weight::Plain(self.take(name, shape, trainable)?));
        }
        Ok(match self.remove(name, shape)? {
            BaseTensor::Held(h) => Weight::Held(h),
            BaseTensor::Tensor(t) => Weight::Held(Arc::new(HeldMatrix::hold(name, &t, self.hold, self.device)?)),
        })
    }

    /// Remove a weight, check its shape, move it to the device as f32; a Var in full mode.
    pub fn take(&mut self, name: &str, shape: &[usize], trainable: &mut Vec<(String, Var)>) -> anyhow::Result<Tensor> {
        self.take_as(name, shape, trainable, DType::F32)
    }

    fn take_as(
        &mut self,
        name: &str,
        shape: &[usize],
        trainable: &mut Vec<(String, Var)>,
        dtype: DType,
    ) -> anyhow::Result<Tensor> {
        let t = match self.remove(name, shape)? {
            BaseTensor::Tensor(t) => t,
            BaseTensor::Held(_) if self.full => {
                bail!("weight `{name}` is held compactly, but full training needs every weight in f32")
            }
            BaseTensor::Held(h) => h.to_f32()?,
        };
        let t = t.to_device(self.device)?.to_dtype(dtype)?;
        if self.full {
            let var = Var::from_tensor(&t)?;
            let out = var.as_tensor().clone();
            trainable.push((name.to_string(), var));
            Ok(out)
        } else {
            Ok(t)
        }
    }
}
