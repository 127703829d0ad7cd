//! A quantized Qwen2/Llama decoder for inference from a GGUF file, with a KV cache per
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
    /// Qwen2 GGUFs use NEOX (rotate-half) RoPE; llama GGUFs have Q/K permuted for interleaved RoPE.
    pub rope_neox: bool,
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
        let kind = match dtype {
            GgmlDType::Q8_0 if cols % QK == 0 => Some(BlockKind::Q8_0),
            GgmlDType::Q4_0 if cols % QK == 0 => Some(BlockKind::Q4_0),
            _ => None,
        };
        Ok(match kind {
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
    wo: Weight,
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
    /// RoPE inverse frequencies, `base^(-2i/head_dim)`.
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
) -> Result<()> {
    let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let matrix = |name: &str, w: &Weight, rows: usize, cols: usize| {
        if (w.rows(), w.cols()) != (rows, cols) {
            bail!(
                "{}: tensor `{name}` is {}x{}, the decoder needs {rows}x{cols} (from the GGUF's head counts and sizes)",
                path.display(),
                w.rows(),
                w.cols()
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
        for (name, b, len) in [("attn_q.bias", &l.bq, q), ("attn_k.bias", &l.bk, kv), ("attn_v.bias", &l.bv, kv)] {
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
            "qwen2" => true,
            "llama" => false,
            other => bail!("{}: architecture `{other}` is not supported (qwen2, llama)", path.display()),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = f.meta_u32(&key("embedding_length"))? as usize;
        let heads = f.meta_u32(&key("attention.head_count"))? as usize;
        let (_, embd_dims) = f.tensor_meta("token_embd.weight")?;
        let cfg = QConfig {
            hidden,
            layers: f.meta_u32(&key("block_count"))? as usize,
            heads,
            kv_heads: f.meta_u32(&key("attention.head_count_kv"))? as usize,
            head_dim: hidden / heads.max(1),
            intermediate: f.meta_u32(&key("feed_forward_length"))? as usize,
            vocab: embd_dims[0],
            context: f.meta_u32(&key("context_length"))? as usize,
            eps: f.meta_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: f.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_neox,
            arch,
        };
        if heads == 0 || cfg.kv_heads == 0 || hidden % heads != 0 || heads % cfg.kv_heads != 0 {
            bail!(
                "{}: inconsistent head counts ({heads} heads, {} kv heads, hidden {hidden})",
                path.display(),
                cfg.kv_heads
            );
        }
        // This decoder derives the head size as hidden / heads; a GGUF that states another
        // (Qwen3: 128 with hidden 1024 and 16 heads) cannot run here, so refuse it now rather
        // than fail on the first request.
        for field in ["attention.key_length", "attention.value_length"] {
            let field = format!("{}.{field}", cfg.arch);
            if let Ok(v) = f.meta_u32(&field)
                && v as usize != cfg.head_dim
            {
                bail!(
                    "{}: `{field}` = {v}, but this decoder supports only hidden / heads = {} / {heads} = {}",
                    path.display(),
                    hidden,
                    cfg.head_dim
                );
            }
        }
        let embed = Weight::load(&mut f, "token_embd.weight")?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |f: &mut GgufFile, s: &str| -> Result<Option<Vec<f32>>> {
                let name = n(s);
                if f.has_tensor(&name) { Ok(Some(f.tensor_f32(&name)?)) } else { Ok(None) }
            };
            layers.push(Layer {
                attn_norm: f.tensor_f32(&n("attn_norm.weight"))?,
                wq: Weight::load(&mut f, &n("attn_q.weight"))?,
                wk: Weight::load(&mut f, &n("attn_k.weight"))?,
                wv: Weight::load(&mut f, &n("attn_v.weight"))?,
                bq: bias(&mut f, "attn_q.bias")?,
                bk: bias(&mut f, "attn_k.bias")?,
                bv: bias(&mut f, "attn_v.bias")?,
                wo: Weight::load(&mut f, &n("attn_output.weight"))?,
                ffn_norm: f.tensor_f32(&n("ffn_norm.weight"))?,
                gate: Weight::load(&mut f, &n("ffn_gate.weight"))?,
                up: Weight::load(&mut f, &n("ffn_up.weight"))?,
                down: Weight::load(&mut f, &n("ffn_down.weight"))?,
            });
        }
        let out_norm = f.tensor_f32("output_norm.weight")?;
        let output = if f.has_tensor("output.weight") { Some(Weight::load(&mut f, "output.weight")?) } else { None };
        check_shapes(path, &cfg, &embed, &layers, &out_norm, output.as_ref())?;
        let inv_freq =
            (0..cfg.head_dim / 2).map(|i| cfg.rope_base.powf(-2.0 * i as f32 / cfg.head_dim as f32)).collect();
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
        let (h, hd) = (c.hidden, c.head_dim);
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
        let mut q = vec![0f32; t * h];
        let mut k = vec![0f32; t * kvd];
        let mut v = vec![0f32; t * kvd];
        let mut attn = vec![0f32; t * h];
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
            for (i, sc) in rope_sin_cos.chunks_exact(hd / 2).enumerate() {
                self.rope(&mut q[i * h..(i + 1) * h], sc);
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
            layer.wo.apply(&Input::new(&attn, h), &mut proj);
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

    /// Rotate each head of one token's `v` by that token's `(sin, cos)` per frequency.
    fn rope(&self, v: &mut [f32], sc: &[(f32, f32)]) {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
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
        let (h, hd) = (c.hidden, c.head_dim);
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
