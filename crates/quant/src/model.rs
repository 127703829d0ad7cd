//! A quantized Qwen2/Qwen3/Llama decoder for inference from a GGUF file, with a KV cache per
//! sequence and a batched forward: one call advances any number of sequences by any number of
//! tokens each (prefill chunks and decode steps mixed), so the server can batch continuously and
//! every weight row is read once per step for all of them.

use std::path::Path;

use anyhow::{Result, bail};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::gguf::GgufFile;
use super::kernels::{self, BlockKind, QK, QuantizedActs};

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct QConfig {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub context: usize,
    pub eps: f32,
    pub rope_base: f32,
    /// Qwen2/Qwen3 GGUFs use NEOX (rotate-half) RoPE; llama GGUFs have Q/K permuted for
    /// interleaved RoPE; ChatGLM's are interleaved as trained.
    pub rope_neox: bool,
    /// The leading dimensions of each head that rotate (`rope.dimension_count`; ChatGLM: half).
    pub rope_dims: usize,
}

impl QConfig {
    /// Width of all query heads together (differs from `hidden` with an explicit head_dim).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// A weight matrix `rows x cols` applied as `y = W x`.
pub enum Weight {
    Blocks { kind: BlockKind, bytes: super::hugebuf::HugeBuf, rows: usize, cols: usize },
    F32 { data: Vec<f32>, rows: usize, cols: usize },
}

impl Weight {
    fn load(f: &mut GgufFile, name: &str) -> Result<Self> {
        let (dtype, dims) = f.tensor_meta(name)?;
        if dims.len() != 2 {
            bail!("{}: tensor `{name}` should be a matrix, has shape {dims:?}", f.path.display());
        }
        let (rows, cols) = (dims[0], dims[1]);
        Ok(match Self::block_kind(dtype, cols) {
            Some(kind) => Weight::Blocks {
                kind,
                bytes: {
                    let mut b = f.tensor_bytes(name)?;
                    kernels::repack(kind, &mut b, rows, cols);
                    b
                },
                rows,
                cols,
            },
            // Other types (F16, K-quants, ...) run through the f32 path: correct, not the fast one.
            None => Weight::F32 { data: f.tensor_f32(name)?, rows, cols },
        })
    }

    fn block_kind(dtype: GgmlDType, cols: usize) -> Option<BlockKind> {
        match dtype {
            GgmlDType::Q8_0 if cols % QK == 0 => Some(BlockKind::Q8_0),
            GgmlDType::Q4_0 if cols % QK == 0 => Some(BlockKind::Q4_0),
            _ => None,
        }
    }

    /// A fused matrix (ChatGLM's attn_qkv, ffn_up holding gate and up) as consecutive row
    /// blocks of the given heights: each block is a weight of its own, so the forward pass is
    /// the same as for separate tensors. Quantized rows are independent, so nothing is requantized.
    fn load_split(f: &mut GgufFile, name: &str, heights: &[usize]) -> Result<Vec<Self>> {
        let (dtype, dims) = f.tensor_meta(name)?;
        if dims.len() != 2 || dims[0] != heights.iter().sum::<usize>() {
            bail!(
                "{}: tensor `{name}` has shape {dims:?}, the decoder needs {} rows",
                f.path.display(),
                heights.iter().sum::<usize>()
            );
        }
        let cols = dims[1];
        let mut start = 0;
        let mut out = Vec::with_capacity(heights.len());
        match Self::block_kind(dtype, cols) {
            Some(kind) => {
                let all = f.tensor_bytes(name)?;
                let row_bytes = all.len() / dims[0];
                for &rows in heights {
                    let mut bytes = super::hugebuf::HugeBuf::zeroed(rows * row_bytes);
                    bytes.copy_from_slice(&all[start * row_bytes..(start + rows) * row_bytes]);
                    kernels::repack(kind, &mut bytes, rows, cols);
                    out.push(Weight::Blocks { kind, bytes, rows, cols });
                    start += rows;
                }
            }
            None => {
                let all = f.tensor_f32(name)?;
                for &rows in heights {
                    out.push(Weight::F32 { data: all[start * cols..(start + rows) * cols].to_vec(), rows, cols });
                    start += rows;
                }
            }
        }
        Ok(out)
    }

    pub fn rows(&self) -> usize {
        match self {
            Weight::Blocks { rows, .. } | Weight::F32 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::Blocks { cols, .. } | Weight::F32 { cols, .. } => *cols,
        }
    }

    /// Bytes this weight occupies in memory (for reporting).
    pub fn size_bytes(&self) -> usize {
        match self {
            Weight::Blocks { bytes, .. } => bytes.len(),
            Weight::F32 { data, .. } => data.len() * 4,
        }
    }

    /// `out[t] = W x[t]` for `x` holding `t` rows of `cols`.
    fn apply(&self, x: &Input, out: &mut [f32]) {
        match self {
            Weight::Blocks { kind, bytes, rows, .. } => kernels::matmul_q(*kind, bytes, *rows, x.acts(), out),
            Weight::F32 { data, rows, cols } => kernels::matmul_f32(data, *rows, x.x, *cols, out),
        }
    }

    /// Apply several weights to the same input in one parallel region when they are all
    /// block-quantized (fewer thread wake-ups per token).
    fn apply_group(group: &mut [(&Weight, &mut [f32])], x: &Input) {
        if group.iter().all(|(w, _)| matches!(w, Weight::Blocks { .. })) {
            let mut jobs: Vec<kernels::MatJob> = group
                .iter_mut()
                .map(|(w, out)| match w {
                    Weight::Blocks { kind, bytes, rows, .. } => {
                        kernels::MatJob { kind: *kind, w: bytes, rows: *rows, out: &mut **out }
                    }
                    Weight::F32 { .. } => unreachable!("checked above"),
                })
                .collect();
            kernels::matmul_q_group(&mut jobs, x.acts());
        } else {
            for (w, out) in group.iter_mut() {
                w.apply(x, out);
            }
        }
    }

    /// Row `r` as floats (embedding lookup).
    fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::F32 { data, cols, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Weight::Blocks { kind, bytes, rows, cols } => kernels::dequantize_row(*kind, bytes, *rows, *cols, r, out),
        }
    }
}

struct Input<'a> {
    x: &'a [f32],
    k: usize,
    acts: std::cell::OnceCell<QuantizedActs>,
}

impl<'a> Input<'a> {
    fn new(x: &'a [f32], k: usize) -> Self {
        Self { x, k, acts: std::cell::OnceCell::new() }
    }
    fn acts(&self) -> &QuantizedActs {
        self.acts.get_or_init(|| QuantizedActs::quantize(self.x, self.k))
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// Qwen3's per-head RMSNorm weights `[head_dim]` for queries and keys, before RoPE.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Weight,
    bo: Option<Vec<f32>>,
    /// GLM-4's RMSNorms of the attention and FFN outputs before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    attn_post_norm: Option<Vec<f32>>,
    ffn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

pub struct QModel {
    pub cfg: QConfig,
    embed: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `None` when embeddings are tied.
    output: Option<Weight>,
    /// RoPE angle per position of each rotary pair: `base^(-2i/head_dim)`, divided by the
    /// GGUF's `rope_freqs.weight` factors and linear scaling factor when it has them.
    inv_freq: Vec<f32>,
}

/// Keys and values of every past position of one sequence, per layer, `[pos][kv_heads*head_dim]`.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's slice of a batched forward call.
pub struct SeqStep<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

/// Every tensor has the shape the forward pass indexes it with (`[rows, cols]` as `y = W x`).
fn check_shapes(
    path: &Path,
    c: &QConfig,
    embed: &Weight,
    layers: &[Layer],
    out_norm: &[f32],
    output: Option<&Weight>,
    head_size_from: &str,
) -> Result<()> {
    let (h, q, kv) = (c.hidden, c.q_dim(), c.kv_heads * c.head_dim);
    let matrix = |name: &str, w: &Weight, rows: usize, cols: usize| {
        if (w.rows(), w.cols()) != (rows, cols) {
            bail!(
                "{}: tensor `{name}` is {}x{}, the decoder needs {rows}x{cols} (from the GGUF's head counts and \
                 sizes: {} heads, {} kv heads of {} from {head_size_from})",
                path.display(),
                w.rows(),
                w.cols(),
                c.heads,
                c.kv_heads,
                c.head_dim
            );
        }
        Ok(())
    };
    let vector = |name: &str, v: &[f32], len: usize| {
        if v.len() != len {
            bail!("{}: tensor `{name}` has {} values, the decoder needs {len}", path.display(), v.len());
        }
        Ok(())
    };
    matrix("token_embd.weight", embed, c.vocab, h)?;
    for (i, l) in layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{i}.{s}");
        vector(&n("attn_norm.weight"), &l.attn_norm, h)?;
        vector(&n("ffn_norm.weight"), &l.ffn_norm, h)?;
        matrix(&n("attn_q.weight"), &l.wq, q, h)?;
        matrix(&n("attn_k.weight"), &l.wk, kv, h)?;
        matrix(&n("attn_v.weight"), &l.wv, kv, h)?;
        matrix(&n("attn_output.weight"), &l.wo, h, q)?;
        matrix(&n("ffn_gate.weight"), &l.gate, c.intermediate, h)?;
        matrix(&n("ffn_up.weight"), &l.up, c.intermediate, h)?;
        matrix(&n("ffn_down.weight"), &l.down, h, c.intermediate)?;
        for (name, b, len) in [
            ("attn_q.bias", &l.bq, q),
            ("attn_k.bias", &l.bk, kv),
            ("attn_v.bias", &l.bv, kv),
            ("attn_output.bias", &l.bo, h),
            ("attn_q_norm.weight", &l.q_norm, c.head_dim),
            ("attn_k_norm.weight", &l.k_norm, c.head_dim),
            ("post_attention_norm.weight", &l.attn_post_norm, h),
            ("post_ffw_norm.weight", &l.ffn_post_norm, h),
        ] {
            if let Some(b) = b {
                vector(&n(name), b, len)?;
            }
        }
    }
    vector("output_norm.weight", out_norm, h)?;
    if let Some(o) = output {
        matrix("output.weight", o, c.vocab, h)?;
    }
    Ok(())
}

impl QModel {
    pub fn load(path: &Path) -> Result<Self> {
        let mut f = GgufFile::open(path)?;
        let arch = f
            .meta_str("general.architecture")
            .ok_or_else(|| anyhow::anyhow!("{}: missing general.architecture", path.display()))?
            .to_string();
        let rope_neox = match arch.as_str() {
            "qwen2" | "qwen3" => true,
            "llama" | "chatglm" | "glm4" => false,
            other => {
                bail!(
                    "{}: architecture `{other}` is not supported (qwen2, qwen3, llama, chatglm, glm4)",
                    path.display()
                )
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = f.meta_u32(&key("embedding_length"))? as usize;
        let heads = f.meta_u32(&key("attention.head_count"))? as usize;
        let (_, embd_dims) = f.tensor_meta("token_embd.weight")?;
        if heads == 0 {
            bail!("{}: `{}` is 0", path.display(), key("attention.head_count"));
        }
        // An explicit head size (Qwen3: 128 with hidden 1024 and 16 heads) is the key length;
        // without one it is hidden / heads, as in llama.cpp.
        let (head_dim, head_size_from) = match f.meta_u32(&key("attention.key_length")) {
            Ok(v) => (v as usize, format!("`{}`", key("attention.key_length"))),
            Err(_) => (hidden / heads, "embedding_length / head_count".to_string()),
        };
        if let Ok(v) = f.meta_u32(&key("attention.value_length"))
            && v as usize != head_dim
        {
            bail!(
                "{}: value length {v} differs from key length {head_dim}; this decoder needs them equal",
                path.display()
            );
        }
        let rope_dims = f.meta_u32(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
        if rope_dims > head_dim || rope_dims % 2 != 0 || rope_dims == 0 {
            bail!("{}: RoPE on {rope_dims} of {head_dim} head dimensions is not possible", path.display());
        }
        let cfg = QConfig {
            hidden,
            layers: f.meta_u32(&key("block_count"))? as usize,
            heads,
            kv_heads: f.meta_u32(&key("attention.head_count_kv"))? as usize,
            head_dim,
            intermediate: f.meta_u32(&key("feed_forward_length"))? as usize,
            vocab: embd_dims[0],
            context: f.meta_u32(&key("context_length"))? as usize,
            eps: f.meta_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: f.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_neox,
            rope_dims,
            arch,
        };
        if cfg.kv_heads == 0 || heads % cfg.kv_heads != 0 || head_dim == 0 || head_dim % 2 != 0 {
            bail!(
                "{}: inconsistent attention shape ({heads} heads, {} kv heads, head size {head_dim})",
                path.display(),
                cfg.kv_heads
            );
        }
        let inv_freq = rope_inv_freq(&mut f, &cfg)?;
        let embed = Weight::load(&mut f, "token_embd.weight")?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |f: &mut GgufFile, s: &str| -> Result<Option<Vec<f32>>> {
                let name = n(s);
                if f.has_tensor(&name) { Ok(Some(f.tensor_f32(&name)?)) } else { Ok(None) }
            };
            let (qd, kvd) = (cfg.q_dim(), cfg.kv_heads * cfg.head_dim);
            // ChatGLM: one fused q|k|v matrix (and bias) and one fused gate|up matrix.
            let [wq, wk, wv] = if f.has_tensor(&n("attn_qkv.weight")) {
                let [a, b, c]: [Weight; 3] = Weight::load_split(&mut f, &n("attn_qkv.weight"), &[qd, kvd, kvd])?
                    .try_into()
                    .ok()
                    .expect("3 parts");
                [a, b, c]
            } else {
                [
                    Weight::load(&mut f, &n("attn_q.weight"))?,
                    Weight::load(&mut f, &n("attn_k.weight"))?,
                    Weight::load(&mut f, &n("attn_v.weight"))?,
                ]
            };
            let [bq, bk, bv] = match bias(&mut f, "attn_qkv.bias")? {
                Some(b) if b.len() == qd + 2 * kvd => {
                    [Some(b[..qd].to_vec()), Some(b[qd..qd + kvd].to_vec()), Some(b[qd + kvd..].to_vec())]
                }
                Some(b) => bail!(
                    "{}: `{}` has {} values, the decoder needs {}",
                    path.display(),
                    n("attn_qkv.bias"),
                    b.len(),
                    qd + 2 * kvd
                ),
                None => [bias(&mut f, "attn_q.bias")?, bias(&mut f, "attn_k.bias")?, bias(&mut f, "attn_v.bias")?],
            };
            let ff = cfg.intermediate;
            let [gate, up] = if f.has_tensor(&n("ffn_gate.weight")) {
                [Weight::load(&mut f, &n("ffn_gate.weight"))?, Weight::load(&mut f, &n("ffn_up.weight"))?]
            } else {
                let [g, u]: [Weight; 2] =
                    Weight::load_split(&mut f, &n("ffn_up.weight"), &[ff, ff])?.try_into().ok().expect("2 parts");
                [g, u]
            };
            layers.push(Layer {
                attn_norm: f.tensor_f32(&n("attn_norm.weight"))?,
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
                q_norm: bias(&mut f, "attn_q_norm.weight")?,
                k_norm: bias(&mut f, "attn_k_norm.weight")?,
                wo: Weight::load(&mut f, &n("attn_output.weight"))?,
                bo: bias(&mut f, "attn_output.bias")?,
                attn_post_norm: bias(&mut f, "post_attention_norm.weight")?,
                ffn_post_norm: bias(&mut f, "post_ffw_norm.weight")?,
                ffn_norm: f.tensor_f32(&n("ffn_norm.weight"))?,
                gate,
                up,
                down: Weight::load(&mut f, &n("ffn_down.weight"))?,
            });
        }
        let out_norm = f.tensor_f32("output_norm.weight")?;
        let output = if f.has_tensor("output.weight") { Some(Weight::load(&mut f, "output.weight")?) } else { None };
        check_shapes(path, &cfg, &embed, &layers, &out_norm, output.as_ref(), &head_size_from)?;
        Ok(Self { cfg, embed, layers, out_norm, output, inv_freq })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { k: vec![Vec::new(); self.cfg.layers], v: vec![Vec::new(); self.cfg.layers], len: 0 }
    }

    /// Total bytes of weights held (for reporting).
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.embed.size_bytes() + self.output.as_ref().map_or(0, |w| w.size_bytes());
        for l in &self.layers {
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|w| w.size_bytes()).sum::<usize>();
        }
        n
    }

    /// Advance every sequence by its tokens; returns the logits after the last token of each.
    pub fn forward(&self, steps: &mut [SeqStep]) -> Result<Vec<Vec<f32>>> {
        // A decode step has ~100 parallel matmuls. Called from outside the thread pool, each one
        // would put this thread to sleep and wake it again; on a worker, this thread computes its
        // share of each and the other workers steal the rest.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_on_worker(steps));
        }
        self.forward_on_worker(steps)
    }

    fn forward_on_worker(&self, steps: &mut [SeqStep]) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (h, hd, qd) = (c.hidden, c.head_dim, c.q_dim());
        let kvd = c.kv_heads * hd;
        for s in steps.iter() {
            if s.tokens.is_empty() {
                bail!("forward called with an empty token list");
            }
            if s.cache.len + s.tokens.len() > c.context {
                bail!("sequence of {} tokens exceeds the model context of {}", s.cache.len + s.tokens.len(), c.context);
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                bail!("token id {t} is outside the vocabulary of {}", c.vocab);
            }
        }
        // Flatten all sequences' tokens into one activation matrix.
        let mut pos = Vec::new();
        let mut owner = Vec::new();
        for (si, s) in steps.iter().enumerate() {
            for i in 0..s.tokens.len() {
                pos.push(s.cache.len + i);
                owner.push(si);
            }
        }
        let t = pos.len();
        // One sin/cos per (token, frequency), shared by every head of every layer.
        let rope_sin_cos: Vec<(f32, f32)> =
            pos.iter().flat_map(|&p| self.inv_freq.iter().map(move |f| (p as f32 * f).sin_cos())).collect();
        let mut x = vec![0f32; t * h];
        let mut row = 0;
        for s in steps.iter() {
            for &tok in s.tokens {
                self.embed.row(tok as usize, &mut x[row * h..(row + 1) * h]);
                row += 1;
            }
        }
        let mut normed = vec![0f32; t * h];
        let mut q = vec![0f32; t * qd];
        let mut k = vec![0f32; t * kvd];
        let mut v = vec![0f32; t * kvd];
        let mut attn = vec![0f32; t * qd];
        let mut proj = vec![0f32; t * h];
        let mut gate = vec![0f32; t * c.intermediate];
        let mut up = vec![0f32; t * c.intermediate];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, &mut normed);
            {
                let inp = Input::new(&normed, h);
                Weight::apply_group(&mut [(&layer.wq, &mut q), (&layer.wk, &mut k), (&layer.wv, &mut v)], &inp);
            }
            add_bias(&mut q, layer.bq.as_deref());
            add_bias(&mut k, layer.bk.as_deref());
            add_bias(&mut v, layer.bv.as_deref());
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                // Each head is one row of `head_dim` for the norm.
                rms_norm_in_place(&mut q, qn, c.eps);
                rms_norm_in_place(&mut k, kn, c.eps);
            }
            for (i, sc) in rope_sin_cos.chunks_exact(c.rope_dims / 2).enumerate() {
                self.rope(&mut q[i * qd..(i + 1) * qd], sc);
                self.rope(&mut k[i * kvd..(i + 1) * kvd], sc);
            }
            // Append this step's keys/values to each sequence's cache.
            let mut row = 0;
            for s in steps.iter_mut() {
                let n = s.tokens.len();
                s.cache.k[li].extend_from_slice(&k[row * kvd..(row + n) * kvd]);
                s.cache.v[li].extend_from_slice(&v[row * kvd..(row + n) * kvd]);
                row += n;
            }
            self.attention(steps, li, &q, &pos, &owner, &mut attn);
            layer.wo.apply(&Input::new(&attn, qd), &mut proj);
            add_bias(&mut proj, layer.bo.as_deref());
            if let Some(w) = &layer.attn_post_norm {
                rms_norm_in_place(&mut proj, w, c.eps);
            }
            add_into(&mut x, &proj);

            rms_norm(&x, &layer.ffn_norm, c.eps, &mut normed);
            {
                let inp = Input::new(&normed, h);
                Weight::apply_group(&mut [(&layer.gate, &mut gate), (&layer.up, &mut up)], &inp);
            }
            if t == 1 {
                kernels::silu_mul(&mut gate, &up);
            } else {
                gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| kernels::silu_mul(g, u));
            }
            layer.down.apply(&Input::new(&gate, c.intermediate), &mut proj);
            if let Some(w) = &layer.ffn_post_norm {
                rms_norm_in_place(&mut proj, w, c.eps);
            }
            add_into(&mut x, &proj);
        }
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        // Logits only for the last token of each sequence (prefill needs no others).
        let mut last = Vec::with_capacity(steps.len() * h);
        let mut row = 0;
        for s in steps.iter() {
            row += s.tokens.len();
            last.extend_from_slice(&x[(row - 1) * h..row * h]);
        }
        let mut last_n = vec![0f32; last.len()];
        rms_norm(&last, &self.out_norm, c.eps, &mut last_n);
        let out_w = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; steps.len() * c.vocab];
        out_w.apply(&Input::new(&last_n, h), &mut logits);
        Ok(logits.chunks(c.vocab).map(|l| l.to_vec()).collect())
    }

    /// Rotate the leading `rope_dims` of each head of one token's `v` by that token's
    /// `(sin, cos)` per frequency.
    fn rope(&self, v: &mut [f32], sc: &[(f32, f32)]) {
        let hd = self.cfg.head_dim;
        let half = self.cfg.rope_dims / 2;
        for head in v.chunks_mut(hd) {
            for (i, &(s, c)) in sc.iter().enumerate().take(half) {
                let (a, b) = if self.cfg.rope_neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }

    /// Causal attention of every new token over its own sequence's cache. One job per
    /// (sequence, KV head, run of up to 16 new tokens): the query heads that share a KV head
    /// read its keys and values once together.
    fn attention(&self, steps: &[SeqStep], li: usize, q: &[f32], pos: &[usize], owner: &[usize], out: &mut [f32]) {
        const ROWS_PER_JOB: usize = 16;
        let c = &self.cfg;
        let (h, hd) = (c.q_dim(), c.head_dim);
        let kvd = c.kv_heads * hd;
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Rows of one sequence are consecutive in the flattened batch.
        let mut jobs: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
        let mut r = 0;
        while r < owner.len() {
            let s = owner[r];
            let end = (r..owner.len()).find(|&i| owner[i] != s || i - r == ROWS_PER_JOB).unwrap_or(owner.len());
            jobs.extend((0..c.kv_heads).map(|g| (s, g, r..end)));
            r = end;
        }
        let one = |(s, g, rows): &(usize, usize, std::ops::Range<usize>)| {
            let kc = &steps[*s].cache.k[li][g * hd..];
            let vc = &steps[*s].cache.v[li][g * hd..];
            let mut res = vec![0f32; rows.len() * group * hd];
            let mut scores = Vec::new();
            for (ri, r) in rows.clone().enumerate() {
                let n = pos[r] + 1;
                let qg = &q[r * h + g * group * hd..r * h + (g + 1) * group * hd];
                scores.resize(group * n, 0.0);
                kernels::attention_scores(qg, hd, kc, kvd, n, scale, &mut scores);
                for head_scores in scores.chunks_exact_mut(n) {
                    kernels::softmax(head_scores);
                }
                kernels::attention_values(&scores, n, vc, kvd, hd, &mut res[ri * group * hd..(ri + 1) * group * hd]);
            }
            res
        };
        // Short contexts are cheaper on this thread than handed to another.
        let work: usize = pos.iter().map(|p| p + 1).sum::<usize>() * c.heads * hd;
        let results: Vec<Vec<f32>> =
            if work < (1 << 14) { jobs.iter().map(one).collect() } else { jobs.par_iter().map(one).collect() };
        for ((_, g, rows), res) in jobs.iter().zip(results) {
            for (ri, r) in rows.clone().enumerate() {
                out[r * h + g * group * hd..r * h + (g + 1) * group * hd]
                    .copy_from_slice(&res[ri * group * hd..(ri + 1) * group * hd]);
            }
        }
    }
}

/// RoPE angle per position of each rotary pair, as llama.cpp computes it from the GGUF: plain
/// `base^(-2i/d)` frequencies divided by `rope_freqs.weight` (llama3 scaling) and by the linear
/// `rope.scaling.factor`. Scalings this decoder does not compute are refused.
fn rope_inv_freq(f: &mut GgufFile, c: &QConfig) -> Result<Vec<f32>> {
    let half = c.rope_dims / 2;
    let key = |k: &str| format!("{}.{k}", c.arch);
    let scale = match f.meta_str(&key("rope.scaling.type")) {
        None | Some("none") => 1.0,
        Some("linear") => {
            let factor = f.meta_f32(&key("rope.scaling.factor"))?;
            if factor <= 0.0 {
                bail!("{}: `{}` must be positive", f.path.display(), key("rope.scaling.factor"));
            }
            1.0 / factor
        }
        Some(other) => bail!("{}: RoPE scaling `{other}` is not supported (none, linear)", f.path.display()),
    };
    let factors = if f.has_tensor("rope_freqs.weight") {
        let v = f.tensor_f32("rope_freqs.weight")?;
        if v.len() != half || v.iter().any(|x| *x <= 0.0) {
            bail!("{}: `rope_freqs.weight` must hold {half} positive factors", f.path.display());
        }
        v
    } else {
        vec![1.0; half]
    };
    // In f64 like the training runtime, so long positions round the same way.
    Ok((0..half)
        .map(|i| {
            let plain = (c.rope_base as f64).powf(-2.0 * i as f64 / c.rope_dims as f64);
            (plain * scale as f64 / factors[i] as f64) as f32
        })
        .collect())
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (xr, or) in x.chunks(h).zip(out.chunks_mut(h)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, xi), wi) in or.iter_mut().zip(xr).zip(w) {
            *o = xi * inv * wi;
        }
    }
}

/// `rms_norm` over each `w.len()`-wide row of `x`, in place.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_mut(w.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (o, wi) in row.iter_mut().zip(w) {
            *o *= inv * wi;
        }
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_mut(b.len()) {
            add_into(row, b);
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
