//! Batched KV-cached decoding: several sequences advance together, one forward pass per step
//! instead of one per sequence (the tiny demo models are bound by per-call overhead, not by
//! FLOPs). Prompts of different lengths are left-padded: every row's real tokens end at the
//! same column, pads get position 0 and no real token attends to them, so each row computes
//! what it would alone (up to float summation order).

use candle_core::{IndexOp, Tensor};

use super::{Model, Pass};

/// KV cache of a batch of sequences, `[rows, kv_heads, len, head_dim]` per layer.
pub struct BatchCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Columns already in the cache (pads included).
    pub len: usize,
    /// Left padding of each row.
    pad: Vec<usize>,
}

impl BatchCache {
    pub fn new(model: &Model) -> BatchCache {
        BatchCache { kv: (0..model.layers.len()).map(|_| None).collect(), len: 0, pad: Vec::new() }
    }

    pub fn rows(&self) -> usize {
        self.pad.len()
    }

    /// Keep only these rows (ascending indices), e.g. when the others have finished.
    pub fn retain(&mut self, keep: &[usize]) -> anyhow::Result<()> {
        if keep.len() == self.pad.len() {
            return Ok(());
        }
        let dev = self.kv.iter().flatten().next().map(|(k, _)| k.device().clone());
        if let Some(dev) = dev {
            let idx = Tensor::from_vec(keep.iter().map(|&i| i as u32).collect::<Vec<_>>(), keep.len(), &dev)?;
            for kv in self.kv.iter_mut().flatten() {
                *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
            }
        }
        self.pad = keep.iter().map(|&i| self.pad[i]).collect();
        Ok(())
    }
}

impl Model {
    /// Feed `rows` after what `cache` holds and return the logits after each row's last token,
    /// `[rows, vocab]`. The first call takes the prompts (any lengths); later calls the same
    /// number of tokens for every row (one, when decoding).
    pub fn forward_cached_batch(&self, rows: &[&[u32]], cache: &mut BatchCache) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!rows.is_empty() && rows.iter().all(|r| !r.is_empty()), "every row needs a token");
        let b = rows.len();
        let t = if cache.len == 0 {
            let t = rows.iter().map(|r| r.len()).max().expect("non-empty");
            cache.pad = rows.iter().map(|r| t - r.len()).collect();
            t
        } else {
            anyhow::ensure!(b == cache.rows(), "{b} rows for a cache of {}", cache.rows());
            anyhow::ensure!(
                rows.iter().all(|r| r.len() == rows[0].len()),
                "rows after the first call need equal lengths"
            );
            rows[0].len()
        };
        let (start, total) = (cache.len, cache.len + t);
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        for (r, row) in rows.iter().enumerate() {
            let pad = t - row.len();
            ids.extend(std::iter::repeat_n(row[0], pad));
            ids.extend_from_slice(row);
            positions.extend((start..total).map(|a| a.saturating_sub(cache.pad[r]) as u32));
        }
        let half = self.rotary().dims / 2;
        let (cos, sin) = self.rope_tables(&positions)?;
        let (cos, sin) = (cos.reshape((b, t, half))?, sin.reshape((b, t, half))?);
        // Causal, and pads are never attended to (a pad query sees only itself, so its
        // softmax stays finite; its output is never read).
        let mask = (t > 1 || cache.pad.iter().any(|&p| p > 0)).then(|| {
            let mut m = vec![0f32; b * t * total];
            for r in 0..b {
                let pad = cache.pad[r];
                for i in 0..t {
                    let a = start + i;
                    for j in 0..total {
                        if j > a || (j < pad && j != a) {
                            m[(r * t + i) * total + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            m
        });
        let mask = match mask {
            Some(m) => Some(Tensor::from_vec(m, (b, 1, 1, t, total), &self.device)?),
            None => None,
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads(), self.cfg.head_dim());
        let rep = nh / nkv;
        let mut pass = Pass::inference();
        let mut x = self.embed(&ids, (b, t))?;
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let [q, k, v] = self.heads_fused(layer, &hn, &mut pass, (b, t), &cos, &sin)?;
            let (k, v) = match cache.kv[li].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            cache.kv[li] = Some((k.clone(), v.clone()));
            let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, rep * t, hd))?;
            let mut scores = q.matmul(&k.t()?)?.reshape((b, nkv, rep, t, total))?;
            if let Some(m) = &mask {
                scores = scores.broadcast_add(m)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, nkv, rep * t, total))?;
            let ctx = probs.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            x = (x + layer.block_out(layer.o.forward(&ctx, &mut pass)?, 0, eps, true)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            x = (x + layer.block_out(layer.mlp(&hn, &mut pass)?, 1, eps, true)?)?;
        }
        cache.len = total;
        let last = x.i((.., t - 1))?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        self.lm_head(&last, &mut pass)
    }
}
