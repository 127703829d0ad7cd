//! The differentiable decoder of the Qwen2/Qwen3/Llama, ChatGLM and GLM-4 families (GQA, RoPE
//! with linear/llama3 scaling, RMSNorm, SwiGLU, optional QKV bias, Qwen3's per-head q/k RMSNorm
//! and explicit head_dim, ChatGLM's fused projections and half-head interleaved RoPE, GLM-4's
//! partial RoPE and sandwich norms, tied embeddings) with each family's HF weight names
//! ([`super::family`]).
//!
//! Two paths share the weights:
//! - [`Model::loss`] / [`Model::forward_hidden`]: differentiable ops only ([`fused`]'s RMSNorm,
//!   SwiGLU and softmax, a rotate-half RoPE), frozen weights through [`frozen_linear`], a
//!   frozen linear with its adapter as one node ([`lora_node`]).
//! - [`Model::forward_cached`]: generation with a KV cache and candle's fused kernels, which drop
//!   gradients and so are never used where a gradient is needed.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{D, DType, Device, IndexOp, Tensor, Var};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::family::{Family, Rotary};
use super::frozen::frozen_linear;
use super::fused;
use super::held::{HeldMatrix, HoldSpec, held_linear};
use super::lora::{LoraConfig, peft_key};
use super::rotary;

mod batched;
mod checkpoint;
mod loading;
mod lora_node;
pub use batched::BatchCache;
use checkpoint::Segment;
pub use loading::{BaseTensor, hold_one};
use loading::{Loader, MergedOut};

/// Which weights train.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainMode {
    /// Inference only: nothing trains.
    Frozen,
    /// Adapters on the targeted linear layers; the base stays frozen.
    Lora(LoraConfig),
    /// Every weight trains.
    Full,
}

struct Lora {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f64,
}

/// A linear layer's weight: an f32 tensor (trainable in full mode), or frozen and held
/// compactly ([`HeldMatrix`], shared between the models over one base).
#[derive(Clone)]
enum Weight {
    Plain(Tensor),
    Held(Arc<HeldMatrix>),
}

/// A linear layer `y = x W^T + b` with an optional LoRA adapter.
struct Linear {
    /// HF module path without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
    name: String,
    w: Weight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

/// The output projection `[vocab, hidden]` (the embedding when tied).
enum Head {
    /// Full training: a variable.
    Trainable(Tensor),
    /// Frozen, in row tiles (one tile in f32, so f32 math is one matmul).
    Frozen(Arc<HeldMatrix>),
}

/// Per-call state of a forward pass.
pub struct Pass<'a> {
    /// A gradient will be taken: frozen weights go through the frozen-matmul op.
    pub grad: bool,
    /// Dropout randomness; `None` disables dropout.
    pub rng: Option<&'a mut ChaCha8Rng>,
}

impl Pass<'_> {
    pub fn inference() -> Pass<'static> {
        Pass { grad: false, rng: None }
    }
}

fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, dims[dims.len() - 1]))?.matmul(&w.t()?)?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

impl Linear {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> anyhow::Result<Tensor> {
        if let Some(l) = &self.lora
            && pass.grad
            && self.frozen()
        {
            return lora_node::lora_linear(x, &self.w, self.bias.as_ref(), l, pass.rng.as_deref_mut());
        }
        let mut y = match &self.w {
            Weight::Plain(w) if pass.grad && !w.is_variable() => frozen_linear(x, w)?,
            Weight::Plain(w) => matmul_t(x, w)?,
            Weight::Held(w) => held_linear(x, w, pass.grad)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let xin = match pass.rng.as_deref_mut() {
                Some(rng) if l.dropout > 0.0 => dropout(x, l.dropout, rng)?,
                _ => x.clone(),
            };
            // Scale the rank-r activations, not the output-sized delta: one fewer big tensor.
            let low = (matmul_t(&xin, l.a.as_tensor())? * l.scale)?;
            y = (y + matmul_t(&low, l.b.as_tensor())?)?;
        }
        Ok(y)
    }

    /// Whether neither the weight nor the bias trains.
    fn frozen(&self) -> bool {
        let w = match &self.w {
            Weight::Plain(w) => !w.is_variable(),
            Weight::Held(_) => true,
        };
        w && !self.bias.as_ref().is_some_and(|b| b.is_variable())
    }

    /// The weight with the adapter folded in.
    fn merged(&self) -> anyhow::Result<Tensor> {
        let w = match &self.w {
            Weight::Plain(w) => w.detach(),
            Weight::Held(w) => w.to_f32()?,
        };
        Ok(match &self.lora {
            Some(l) => (w + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?)?,
            None => w,
        })
    }
}

/// Inverted dropout with a seeded mask (candle's CPU rng cannot be seeded).
fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> anyhow::Result<Tensor> {
    Ok((x * dropout_mask(x, p, rng)?)?)
}

/// The mask of [`dropout`]: `0` or `1 / (1 - p)` per element of `x`.
fn dropout_mask(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> anyhow::Result<Tensor> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let n = x.elem_count();
    // Integer threshold: one u32 draw per element.
    let threshold = (keep * u32::MAX as f64) as u32;
    let mask: Vec<f32> = (0..n).map(|_| if rng.random::<u32>() < threshold { scale } else { 0.0 }).collect();
    Ok(Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// Qwen3's RMSNorm weights `[head_dim]` applied to each query and key head before RoPE.
    qk_norm: Option<(Tensor, Tensor)>,
    /// GLM-4's RMSNorms of the attention and the MLP output, before each residual add
    /// (`post_self_attn_layernorm`, `post_mlp_layernorm`).
    out_norms: Option<(Tensor, Tensor)>,
    qkv: Qkv,
    o: Linear,
    gate_up: GateUp,
    down: Linear,
}

/// The attention input projections: separate, or one fused matrix (ChatGLM's query_key_value,
/// rows q then k then v) that LoRA adapts as one module, as PEFT does.
enum Qkv {
    Split { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// The MLP input projections: separate, or one fused matrix (ChatGLM's dense_h_to_4h, rows gate
/// then up).
enum GateUp {
    Split { gate: Linear, up: Linear },
    Fused(Linear),
}

impl Layer {
    fn linears(&self) -> Vec<&Linear> {
        let mut out = match &self.qkv {
            Qkv::Split { q, k, v } => vec![q, k, v],
            Qkv::Fused(l) => vec![l],
        };
        out.push(&self.o);
        match &self.gate_up {
            GateUp::Split { gate, up } => out.extend([gate, up]),
            GateUp::Fused(l) => out.push(l),
        }
        out.push(&self.down);
        out
    }

    /// Queries `[b, t, q_dim]`, keys and values `[b, t, kv_dim]`.
    fn qkv(&self, x: &Tensor, pass: &mut Pass, q_dim: usize, kv_dim: usize) -> anyhow::Result<[Tensor; 3]> {
        Ok(match &self.qkv {
            Qkv::Split { q, k, v } => [q.forward(x, pass)?, k.forward(x, pass)?, v.forward(x, pass)?],
            Qkv::Fused(l) => {
                let y = l.forward(x, pass)?;
                [
                    y.narrow(D::Minus1, 0, q_dim)?,
                    y.narrow(D::Minus1, q_dim, kv_dim)?,
                    y.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                ]
            }
        })
    }

    /// SwiGLU: `down(silu(gate x) * up x)`.
    fn mlp(&self, x: &Tensor, pass: &mut Pass) -> anyhow::Result<Tensor> {
        let (g, u) = match &self.gate_up {
            GateUp::Split { gate, up } => (gate.forward(x, pass)?, up.forward(x, pass)?),
            GateUp::Fused(l) => {
                let y = l.forward(x, pass)?;
                let n = y.dim(D::Minus1)? / 2;
                (y.narrow(D::Minus1, 0, n)?, y.narrow(D::Minus1, n, n)?)
            }
        };
        self.down.forward(&fused::swiglu(&g, &u)?, pass)
    }

    /// The attention (`which = 0`) or MLP (`1`) output as it joins the residual: normed again
    /// where the family has sandwich norms. `fused` picks candle's fused RMSNorm kernel, which
    /// has no gradient (generation only).
    fn block_out(&self, y: Tensor, which: usize, eps: f32, fused: bool) -> candle_core::Result<Tensor> {
        let Some((attn, mlp)) = &self.out_norms else { return Ok(y) };
        let w = if which == 0 { attn } else { mlp };
        if fused { candle_nn::ops::rms_norm(&y, w, eps) } else { fused::rms_norm(&y, w, eps) }
    }
}

/// Per-sequence KV cache for generation (batch 1).
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens already in the cache.
    pub len: usize,
}

impl Cache {
    pub fn new(model: &Model) -> Cache {
        Cache { kv: (0..model.layers.len()).map(|_| None).collect(), len: 0 }
    }
}

pub struct Model {
    pub cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Head,
    device: Device,
    /// How the frozen weights are held; merged outputs are written in its dtype.
    hold: HoldSpec,
    /// Gradient checkpointing: keep each layer's input, recompute the layer in backward.
    checkpoint: bool,
    /// Checkpointed forward passes awaiting [`Model::backward`].
    tape: std::sync::Mutex<Vec<Segment>>,
    /// Trainable tensors by name: HF names in full mode, PEFT names in LoRA mode.
    trainable: Vec<(String, Var)>,
    lora: Option<LoraConfig>,
}

/// What every layer of one training forward shares: RoPE tables, the attention mask, and the
/// batch shape `(b, t)`.
struct Tables {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    shape: (usize, usize),
}

/// A batch for the loss: `b` rows of `t` tokens, row-major.
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub input_ids: Vec<u32>,
    /// RoPE position of every token (restarts per packed segment).
    pub positions: Vec<u32>,
    /// Segment id of every token; attention never crosses segments (packing) and padding gets
    /// its own segment.
    pub segments: Vec<u32>,
    /// (flat index of the predicting token, target id): the next token where the loss counts.
    pub targets: Vec<(u32, u32)>,
}

impl Model {
    /// Build from HF-named tensors, every weight in f32. `seed` initialises LoRA A matrices.
    pub fn from_tensors(
        cfg: ModelConfig,
        weights: HashMap<String, Tensor>,
        mode: &TrainMode,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<Model> {
        let weights = weights.into_iter().map(|(k, v)| (k, BaseTensor::Tensor(v))).collect();
        Model::from_base(cfg, weights, mode, seed, device, HoldSpec::F32)
    }

    /// Build from HF-named weights, the frozen ones held as `hold` says (tensors are held on
    /// the way; [`BaseTensor::Held`] ones, from [`hold_one`], are shared as they are). Full
    /// training keeps every weight an f32 variable and uses `hold` only for the dtype merged
    /// outputs are written in.
    pub fn from_base(
        cfg: ModelConfig,
        mut weights: HashMap<String, BaseTensor>,
        mode: &TrainMode,
        seed: u64,
        device: &Device,
        hold: HoldSpec,
    ) -> anyhow::Result<Model> {
        cfg.validate()?;
        if let (TrainMode::Full, Some(q)) = (mode, hold.quant) {
            bail!(
                "base_quant = \"{}\" holds a frozen base quantized, but full training has no frozen base: \
                 use mode = \"lora\" or drop base_quant",
                q.name()
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut trainable = Vec::new();
        let full = matches!(mode, TrainMode::Full);
        let lora_cfg = match mode {
            TrainMode::Lora(l) => {
                l.validate()?;
                Some(l.clone())
            }
            _ => None,
        };
        let family = Family::of(&cfg);
        let mut loader = Loader { weights: &mut weights, full, device, hold };
        let take = |l: &mut Loader, name: &str, shape: &[usize], t: &mut Vec<(String, Var)>| l.take(name, shape, t);
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let embed = loader.take_dense(family.embed(), &[cfg.vocab_size, h], &mut trainable)?;
        let linear = |loader: &mut Loader,
                      module: String,
                      short: &str,
                      out: usize,
                      inp: usize,
                      bias: bool,
                      trainable: &mut Vec<(String, Var)>,
                      rng: &mut ChaCha8Rng|
         -> anyhow::Result<Linear> {
            let w = loader.take_linear(&format!("{module}.weight"), &[out, inp], trainable)?;
            let bias = if bias { Some(take(loader, &format!("{module}.bias"), &[out], trainable)?) } else { None };
            let lora = match &lora_cfg {
                Some(l) if l.targets(short) => {
                    // PEFT's default init: kaiming-uniform A (bound 1/sqrt(in)), zero B.
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f32> = (0..l.r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (l.r, inp), device)?)?;
                    let b = Var::zeros((out, l.r), DType::F32, device)?;
                    trainable.push((peft_key(&module, 'A'), a.clone()));
                    trainable.push((peft_key(&module, 'B'), b.clone()));
                    Some(Lora { a, b, scale: l.scale(), dropout: l.dropout })
                }
                _ => None,
            };
            Ok(Linear { name: module, w, bias, lora })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = family.layer(i);
            let t = &mut trainable;
            let r = &mut rng;
            let input_norm = take(&mut loader, &format!("{p}.input_layernorm.weight"), &[h], t)?;
            let post_norm = take(&mut loader, &format!("{p}.post_attention_layernorm.weight"), &[h], t)?;
            let qk_norm = if cfg.qk_norm() {
                let qn = take(&mut loader, &format!("{p}.self_attn.q_norm.weight"), &[hd], t)?;
                Some((qn, take(&mut loader, &format!("{p}.self_attn.k_norm.weight"), &[hd], t)?))
            } else {
                None
            };
            let out_norms = if family.sandwich_norms() {
                let a = take(&mut loader, &format!("{p}.post_self_attn_layernorm.weight"), &[h], t)?;
                Some((a, take(&mut loader, &format!("{p}.post_mlp_layernorm.weight"), &[h], t)?))
            } else {
                None
            };
            let l = &mut loader;
            let mut specs = family.layer_linears(&cfg).into_iter();
            let mut next = || -> anyhow::Result<Linear> {
                let s = specs.next().expect("layer_linears lists every module the layer needs");
                linear(l, format!("{p}.{}", s.path), s.name(), s.out, s.inp, s.bias, t, r)
            };
            let qkv = match family.fused_qkv() {
                true => Qkv::Fused(next()?),
                false => Qkv::Split { q: next()?, k: next()?, v: next()? },
            };
            let o = next()?;
            let gate_up = match family.fused_gate_up() {
                true => GateUp::Fused(next()?),
                false => GateUp::Split { gate: next()?, up: next()? },
            };
            let down = next()?;
            let layer = Layer { input_norm, post_norm, qk_norm, out_norms, qkv, o, gate_up, down };
            layers.push(layer);
        }
        if let Some(l) = &lora_cfg
            && trainable.is_empty()
        {
            bail!(
                "lora.target_modules {:?} names no linear module of this {} model (its modules: {:?})",
                l.target_modules,
                cfg.model_type,
                family.linear_names()
            );
        }
        let norm = take(&mut loader, family.final_norm(), &[h], &mut trainable)?;
        let head_name = format!("{}.weight", family.lm_head());
        let head = if cfg.tie_word_embeddings {
            loader.weights.remove(&head_name);
            embed.clone()
        } else {
            loader.take_dense(&head_name, &[cfg.vocab_size, h], &mut trainable)?
        };
        let head = if full { Head::Trainable(head) } else { Head::Frozen(Arc::new(HeldMatrix::views(&head)?)) };
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            head,
            device: device.clone(),
            hold,
            checkpoint: false,
            tape: Default::default(),
            trainable,
            lora: lora_cfg,
        })
    }

    /// Gradient checkpointing on or off: with it, a training forward keeps only each layer's
    /// input and [`Model::backward`] recomputes the layers one at a time, so activation memory
    /// is one layer's instead of every layer's. Gradients must then be taken with
    /// [`Model::backward`], which is also right without it.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.checkpoint = on;
    }

    /// How the frozen weights are held.
    pub fn hold_spec(&self) -> HoldSpec {
        self.hold
    }

    /// Bytes of the frozen weights as held (embedding, head and layers; norms and biases
    /// included, adapters not).
    pub fn frozen_bytes(&self) -> usize {
        let bytes = |t: &Tensor| if t.is_variable() { 0 } else { t.elem_count() * t.dtype().size_in_bytes() };
        let mut total = bytes(&self.embed) + bytes(&self.norm);
        if let (Head::Frozen(m), false) = (&self.head, self.cfg.tie_word_embeddings) {
            total += m.bytes();
        }
        for layer in &self.layers {
            total += bytes(&layer.input_norm) + bytes(&layer.post_norm);
            for (a, b) in layer.qk_norm.iter().chain(&layer.out_norms) {
                total += bytes(a) + bytes(b);
            }
            for l in layer.linears() {
                total += match &l.w {
                    Weight::Plain(w) => bytes(w),
                    Weight::Held(w) => w.bytes(),
                };
                total += l.bias.as_ref().map_or(0, bytes);
            }
        }
        total
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Trainable tensors with their names (PEFT names for LoRA, HF names for full training).
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    pub fn trainable_parameter_count(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Where RoPE rotates in each head.
    fn rotary(&self) -> Rotary {
        Family::of(&self.cfg).rotary(&self.cfg)
    }

    /// Cos and sin tables `[n, rotary dims/2]` for the given positions.
    fn rope_tables(&self, positions: &[u32]) -> anyhow::Result<(Tensor, Tensor)> {
        let dims = self.rotary().dims;
        let half = dims / 2;
        let inv = self.cfg.rope_scaling()?.inv_freqs(dims, self.cfg.rope_theta);
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let n = positions.len();
        Ok((Tensor::from_vec(cos, (n, half), &self.device)?, Tensor::from_vec(sin, (n, half), &self.device)?))
    }

    fn embed(&self, ids: &[u32], shape: (usize, usize)) -> anyhow::Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            bail!("token id {bad} is outside the vocabulary ({} tokens)", self.cfg.vocab_size);
        }
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let rows = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        Ok(rows.reshape((shape.0, shape.1, self.cfg.hidden_size))?)
    }

    /// Differentiable forward to the final norm: hidden states `[b, t, hidden]`.
    pub fn forward_hidden(
        &self,
        input_ids: &[u32],
        positions: &[u32],
        segments: &[u32],
        (b, t): (usize, usize),
        pass: &mut Pass,
    ) -> anyhow::Result<Tensor> {
        if input_ids.len() != b * t || positions.len() != b * t || segments.len() != b * t {
            bail!("batch arrays must each hold {b}×{t} entries");
        }
        let eps = self.cfg.rms_norm_eps as f32;
        let (cos, sin) = self.rope_tables(positions)?;
        let (cos, sin) = rotary::train_tables(&cos, &sin, self.rotary(), (b, t))?;
        let mask = self.block_causal_mask(segments, b, t)?;
        let tables = Tables { cos, sin, mask, shape: (b, t) };
        let mut x = self.embed(input_ids, (b, t))?;
        if pass.grad && self.checkpoint {
            x = self.layers_checkpointed(x, tables, pass)?;
        } else {
            for layer in &self.layers {
                x = self.layer_train(layer, &x, &tables, pass)?;
            }
        }
        Ok(fused::rms_norm(&x, &self.norm, eps)?)
    }

    /// One decoder layer on the differentiable path: attention and MLP, each with its residual.
    fn layer_train(&self, layer: &Layer, x: &Tensor, tables: &Tables, pass: &mut Pass) -> anyhow::Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let hn = fused::rms_norm(x, &layer.input_norm, eps)?;
        let attn = layer.block_out(self.attention_train(layer, &hn, tables, pass)?, 0, eps, false)?;
        let x = (x + attn)?;
        let hn = fused::rms_norm(&x, &layer.post_norm, eps)?;
        let mlp = layer.block_out(layer.mlp(&hn, pass)?, 1, eps, false)?;
        Ok((x + mlp)?)
    }

    /// Additive mask `[b, 1, 1, t, t]`: causal, and no attention across segments.
    fn block_causal_mask(&self, segments: &[u32], b: usize, t: usize) -> anyhow::Result<Tensor> {
        let mut m = vec![0f32; b * t * t];
        for r in 0..b {
            let seg = &segments[r * t..(r + 1) * t];
            for i in 0..t {
                for j in 0..t {
                    if j > i || seg[j] != seg[i] {
                        m[r * t * t + i * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, 1, t, t), &self.device)?)
    }

    fn attention_train(&self, layer: &Layer, x: &Tensor, tables: &Tables, pass: &mut Pass) -> anyhow::Result<Tensor> {
        let Tables { cos, sin, mask, shape: (b, t) } = tables;
        let (b, t) = (*b, *t);
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads(), self.cfg.head_dim());
        let rep = nh / nkv;
        let [q, k, v] = layer.qkv(x, pass, nh * hd, nkv * hd)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => {
                let eps = self.cfg.rms_norm_eps as f32;
                (fused::rms_norm(&q, qn, eps)?, fused::rms_norm(&k, kn, eps)?)
            }
            None => (q, k),
        };
        let q = rotary::apply_train(&q, cos, sin, self.rotary())?;
        let k = rotary::apply_train(&k, cos, sin, self.rotary())?;
        // GQA without copying K/V: the `rep` query heads sharing a KV head become extra rows.
        let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nkv, rep, t, t))?.broadcast_add(mask)?;
        let probs = fused::softmax_last(&scores)?.reshape((b, nkv, rep * t, t))?;
        let ctx = probs.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        layer.o.forward(&ctx, pass)
    }

    /// Logits `[b, t, vocab]` of the differentiable path (tests, small evaluations).
    pub fn forward_logits(&self, input_ids: &[u32], (b, t): (usize, usize)) -> anyhow::Result<Tensor> {
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let segments = vec![0u32; b * t];
        let h = self.forward_hidden(input_ids, &positions, &segments, (b, t), &mut Pass::inference())?;
        self.lm_head(&h, &mut Pass::inference())
    }

    fn lm_head(&self, h: &Tensor, pass: &mut Pass) -> anyhow::Result<Tensor> {
        Ok(match &self.head {
            Head::Trainable(w) => matmul_t(h, w)?,
            Head::Frozen(m) => held_linear(h, m, pass.grad)?,
        })
    }

    /// Mean cross-entropy over the batch's targets (reply tokens only). Logits are computed only
    /// at target positions: with a 150k vocabulary that is most of the saving.
    pub fn loss(&self, batch: &Batch, pass: &mut Pass) -> anyhow::Result<Tensor> {
        if batch.targets.is_empty() {
            bail!("batch has no target tokens");
        }
        let h = self.forward_hidden(&batch.input_ids, &batch.positions, &batch.segments, (batch.b, batch.t), pass)?;
        let h = h.reshape((batch.b * batch.t, self.cfg.hidden_size))?;
        let rows: Vec<u32> = batch.targets.iter().map(|(i, _)| *i).collect();
        let labels: Vec<u32> = batch.targets.iter().map(|(_, y)| *y).collect();
        let rows = Tensor::from_vec(rows, batch.targets.len(), &self.device)?;
        let labels = Tensor::from_vec(labels, (batch.targets.len(), 1), &self.device)?;
        let h = h.index_select(&rows, 0)?;
        if pass.grad {
            return head_loss(self, &h, &labels);
        }
        let logits = self.lm_head(&h, pass)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        Ok(logp.gather(&labels, 1)?.mean_all()?.neg()?)
    }

    /// Hidden states (after the final norm) at the batch's predicting positions, `[n, hidden]`,
    /// in `batch.targets` order: what the policy-gradient, reward and value heads read.
    pub fn target_hidden(&self, batch: &Batch, pass: &mut Pass) -> anyhow::Result<Tensor> {
        if batch.targets.is_empty() {
            bail!("batch has no target positions");
        }
        let h = self.forward_hidden(&batch.input_ids, &batch.positions, &batch.segments, (batch.b, batch.t), pass)?;
        let h = h.reshape((batch.b * batch.t, self.cfg.hidden_size))?;
        let rows: Vec<u32> = batch.targets.iter().map(|(i, _)| *i).collect();
        Ok(h.index_select(&Tensor::from_vec(rows, batch.targets.len(), &self.device)?, 0)?)
    }

    /// Logits `h W^T` of the output projection for `h: [n, hidden]`, outside the autograd graph.
    /// LoRA never targets the head, so it is always a bare matrix (the embedding when tied).
    pub fn head_logits(&self, h: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match &self.head {
            Head::Trainable(w) => h.detach().matmul(&w.detach().t()?)?,
            Head::Frozen(m) => m.forward(&h.detach())?,
        })
    }

    /// `g W` for `g: [n, vocab]`: the gradient of the logits with respect to `h`, given `g`
    /// with respect to the logits; outside the graph.
    pub fn head_input_grad(&self, g: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match &self.head {
            Head::Trainable(w) => g.matmul(&w.detach())?,
            Head::Frozen(m) => m.input_grad(g)?,
        })
    }

    /// The output projection when it trains (full mode).
    pub fn trainable_head(&self) -> Option<&Tensor> {
        match &self.head {
            Head::Trainable(w) => Some(w),
            Head::Frozen(_) => None,
        }
    }

    /// A layer's query, key and value heads `[b, heads, t, head_dim]` for generation (fused
    /// kernels, no gradient): projected, q/k-normed where the family has it, rotated.
    fn heads_fused(
        &self,
        layer: &Layer,
        hn: &Tensor,
        pass: &mut Pass,
        (b, t): (usize, usize),
        cos: &Tensor,
        sin: &Tensor,
    ) -> anyhow::Result<[Tensor; 3]> {
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads(), self.cfg.head_dim());
        let eps = self.cfg.rms_norm_eps as f32;
        let [q, k, v] = layer.qkv(hn, pass, nh * hd, nkv * hd)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => (candle_nn::ops::rms_norm(&q, qn, eps)?, candle_nn::ops::rms_norm(&k, kn, eps)?),
            None => (q, k),
        };
        let q = rotary::apply_fused(&q, cos, sin, self.rotary())?;
        let k = rotary::apply_fused(&k, cos, sin, self.rotary())?;
        Ok([q, k, v])
    }

    /// Generation step(s) with a KV cache and the fused (no-gradient) kernels: feeds `ids` after
    /// what the cache holds and returns the logits of the last one, `[vocab]`.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut Cache) -> anyhow::Result<Tensor> {
        if ids.is_empty() {
            bail!("forward_cached needs at least one token");
        }
        let t = ids.len();
        let start = cache.len;
        let positions: Vec<u32> = (start..start + t).map(|p| p as u32).collect();
        let (cos, sin) = self.rope_tables(&positions)?;
        let eps = self.cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads(), self.cfg.head_dim());
        let rep = nh / nkv;
        let total = start + t;
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (1, 1, 1, t, total), &self.device)?)
        } else {
            None
        };
        let mut pass = Pass::inference();
        let mut x = self.embed(ids, (1, t))?;
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let [q, k, v] = self.heads_fused(layer, &hn, &mut pass, (1, t), &cos, &sin)?;
            let (k, v) = match cache.kv[li].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            cache.kv[li] = Some((k.clone(), v.clone()));
            let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((1, nkv, rep * t, hd))?;
            let mut scores = q.matmul(&k.t()?)?.reshape((1, nkv, rep, t, total))?;
            if let Some(m) = &mask {
                scores = scores.broadcast_add(m)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((1, nkv, rep * t, total))?;
            let ctx = probs.matmul(&v)?.reshape((1, nh, t, hd))?.transpose(1, 2)?.reshape((1, t, nh * hd))?;
            x = (x + layer.block_out(layer.o.forward(&ctx, &mut pass)?, 0, eps, true)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            x = (x + layer.block_out(layer.mlp(&hn, &mut pass)?, 1, eps, true)?)?;
        }
        cache.len = total;
        let last = x.i((0, t - 1))?.unsqueeze(0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        Ok(self.lm_head(&last, &mut pass)?.squeeze(0)?)
    }

    /// All weights in HF names with LoRA folded in, in f32: what a merged model folder holds.
    pub fn merged_weights(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        self.merged_weights_as(DType::F32)
    }

    /// [`Model::merged_weights`] in `dtype`, each weight converted as it is merged, so a held
    /// base is never widened whole.
    pub fn merged_weights_as(&self, dtype: DType) -> anyhow::Result<HashMap<String, Tensor>> {
        let family = Family::of(&self.cfg);
        let mut out = MergedOut { map: HashMap::new(), dtype };
        out.insert(family.embed().to_string(), self.embed.detach())?;
        out.insert(family.final_norm().to_string(), self.norm.detach())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let p = family.layer(i);
            out.insert(format!("{p}.input_layernorm.weight"), layer.input_norm.detach())?;
            out.insert(format!("{p}.post_attention_layernorm.weight"), layer.post_norm.detach())?;
            if let Some((qn, kn)) = &layer.qk_norm {
                out.insert(format!("{p}.self_attn.q_norm.weight"), qn.detach())?;
                out.insert(format!("{p}.self_attn.k_norm.weight"), kn.detach())?;
            }
            if let Some((an, mn)) = &layer.out_norms {
                out.insert(format!("{p}.post_self_attn_layernorm.weight"), an.detach())?;
                out.insert(format!("{p}.post_mlp_layernorm.weight"), mn.detach())?;
            }
            for l in layer.linears() {
                out.insert(format!("{}.weight", l.name), l.merged()?)?;
                if let Some(b) = &l.bias {
                    out.insert(format!("{}.bias", l.name), b.detach())?;
                }
            }
        }
        if !self.cfg.tie_word_embeddings {
            let w = match &self.head {
                Head::Trainable(w) => w.detach(),
                Head::Frozen(m) => m.to_f32()?,
            };
            out.insert(format!("{}.weight", family.lm_head()), w)?;
        }
        Ok(out.map)
    }

    /// The LoRA tensors under PEFT key names.
    pub fn adapter_tensors(&self) -> HashMap<String, Tensor> {
        if self.lora.is_none() {
            return HashMap::new();
        }
        self.trainable.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Overwrite trainable tensors from a name → tensor map (checkpoint resume, adapter load).
    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        // Check everything before changing anything: a bad file leaves the model as it was.
        for (name, var) in &self.trainable {
            let t = tensors.get(name).with_context(|| format!("tensor `{name}` is missing"))?;
            if t.dims() != var.dims() {
                bail!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), var.dims());
            }
        }
        for (name, var) in &self.trainable {
            var.set(&tensors[name].to_device(&self.device)?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// Mean cross-entropy through the output projection `w` without putting the `[n, vocab]` logits
/// into the autograd graph. With `G = (softmax(h W^T) - onehot) / n`, the gradients are
/// `dL/dh = G W` and `dL/dW = G^T h`; both are computed here with the fused kernels and attached
/// through a linear surrogate whose value is cancelled exactly, so the returned tensor's value is
/// the loss and its backward gives the true gradients. Saves several vocabulary-sized tensors and
/// their single-threaded elementwise backward ops per step.
fn head_loss(model: &Model, h: &Tensor, labels: &Tensor) -> anyhow::Result<Tensor> {
    let hd = h.detach();
    let (value, g) = fused::cross_entropy_with_grad(&model.head_logits(&hd)?, labels)?;
    let mut surrogate = (h * model.head_input_grad(&g)?)?.sum_all()?;
    if let Some(w) = model.trainable_head() {
        surrogate = (surrogate + (w * g.t()?.matmul(&hd)?)?.sum_all()?)?;
    }
    Ok(((&surrogate - surrogate.detach())? + value)?)
}
