//! A training run's expected peak memory, from the config and the run's settings before
//! anything is loaded, and a refusal that names what to change when the device cannot hold it.
//!
//! The activation term counts the tensors the differentiable decoder keeps for its backward
//! per token and layer (norms, projections and their LoRA paths, rotary, attention scores,
//! MLP); its constants and the fixed overhead were fitted to `cargo bench --bench qlora`'s
//! measured peaks, which print next to these estimates; `tests/memory_plan_accuracy.rs` checks
//! it within 15 % on two more shapes. The overhead is mostly what the allocator keeps after the
//! first steps: a single step's peak is 200–300 MiB lower than a run's.

use anyhow::bail;
use candle_core::Device;

use super::config::ModelConfig;
use super::family::Family;
use super::held::{BaseQuant, HoldSpec};
use super::lora::LoraConfig;

/// What a training stage is about to do.
pub struct TrainPlan<'a> {
    pub cfg: &'a ModelConfig,
    pub hold: HoldSpec,
    /// `None`: full training (every weight an f32 variable).
    pub lora: Option<&'a LoraConfig>,
    /// Rows of one forward and their length in tokens.
    pub rows: usize,
    pub seq_len: usize,
    pub checkpoint: bool,
    /// Models over the one base that each carry adapters and optimiser state (ppo: 2).
    pub adapted_models: usize,
}

/// Expected peak bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub weights: u64,
    /// Trainable weights, their gradients (per step and accumulated) and AdamW's two moments.
    pub training_state: u64,
    pub activations: u64,
    /// The logits at the target positions and their softmax gradient.
    pub logits: u64,
    /// Runtime, tokenizer, allocator slack.
    pub overhead: u64,
}

const MIB: u64 = 1 << 20;

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights + self.training_state + self.activations + self.logits + self.overhead
    }

    /// "3.9 GiB (weights 1.8, training state 0.1, activations 1.4, logits 0.2)".
    pub fn describe(&self) -> String {
        let g = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            "{:.1} GiB (weights {:.1}, adapters + optimiser {:.1}, activations {:.1}, logits {:.1})",
            g(self.total()),
            g(self.weights),
            g(self.training_state),
            g(self.activations),
            g(self.logits)
        )
    }
}

/// Bytes a frozen linear weight takes per element as `hold` keeps it.
fn linear_bytes_per_weight(hold: HoldSpec) -> f64 {
    match hold.quant {
        Some(BaseQuant::Q8_0) => 34.0 / 32.0,
        Some(BaseQuant::Q4_0) => 18.0 / 32.0,
        None => hold.dtype.size_in_bytes() as f64,
    }
}

pub fn estimate(p: &TrainPlan) -> Estimate {
    let c = p.cfg;
    let (h, i, l) = (c.hidden_size as u64, c.intermediate_size as u64, c.num_hidden_layers as u64);
    let q = (c.num_attention_heads * c.head_dim()) as u64;
    let kv = (c.num_key_value_heads() * c.head_dim()) as u64;
    let nh = c.num_attention_heads as u64;
    let vocab = c.vocab_size as u64;
    let family = Family::of(c);
    let linears = family.layer_linears(c);
    let linear_per_layer: u64 = linears.iter().map(|s| (s.out * s.inp) as u64).sum();
    let embed = vocab * h * if c.tie_word_embeddings { 1 } else { 2 };
    let small = l * (2 * h + q + 2 * kv + h) + h;
    let (weights, trainable) = match p.lora {
        None => (0, c.parameter_count() as u64),
        Some(lora) => {
            let per_layer: u64 =
                linears.iter().filter(|s| lora.targets(s.name())).map(|s| lora.r as u64 * (s.inp + s.out) as u64).sum();
            let bytes = (l * linear_per_layer) as f64 * linear_bytes_per_weight(p.hold)
                + (embed * p.hold.dtype.size_in_bytes() as u64) as f64
                + (small * 4) as f64;
            (bytes as u64, l * per_layer * p.adapted_models as u64)
        }
    };
    let tokens = (p.rows * p.seq_len) as u64;
    // f32 values each token keeps per layer for the backward.
    // Refitted for the fused RMSNorm, SwiGLU and softmax (runtime/fused.rs), and again for the
    // adapted linear as one graph node (model/lora_node.rs), which keeps its output once where
    // candle's ops kept the frozen product, the adapter's delta and their sum.
    let mut per_layer = 16 * h + 11 * (q + 2 * kv) + 6 * i + 2 * nh * p.seq_len as u64;
    if !p.hold.is_f32() {
        // A held matmul without an adapter keeps its product twice (operand and output).
        let adapted = |name: &str| p.lora.is_some_and(|lora| lora.targets(name));
        per_layer += linears.iter().filter(|s| !adapted(s.name())).map(|s| s.out as u64).sum::<u64>();
    }
    let activations = match p.checkpoint {
        // Every layer's input, and one layer's activations while it is recomputed.
        true => tokens * 4 * (l * h + per_layer),
        false => tokens * 4 * l * per_layer,
    };
    Estimate {
        weights,
        training_state: trainable * 4 * 5,
        activations,
        // The logits and their gradient, computed in one pass (fused::cross_entropy_with_grad).
        logits: tokens * vocab * 4 * 2,
        overhead: 250 * MIB,
    }
}

/// Bytes the device can still give this process: `AVATAR_MEMORY_LIMIT_MB` when set (a cap of
/// the user's, and how tests ask for a small device); else on CUDA the free device memory, on
/// the CPU the smaller of MemAvailable and the cgroup's remaining limit. `None`: unknown.
pub fn available(device: &Device) -> Option<u64> {
    if let Some(mb) = std::env::var("AVATAR_MEMORY_LIMIT_MB").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(mb * MIB);
    }
    if device.is_cuda() {
        return cuda_free(device);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => match (max.trim().parse::<u64>(), cur.trim().parse::<u64>()) {
            (Ok(max), Ok(cur)) => Some(max.saturating_sub(cur)),
            _ => None, // "max": no limit
        },
        _ => None,
    };
    Some(cgroup.map_or(avail, |c| c.min(avail)))
}

#[cfg(feature = "cuda")]
fn cuda_free(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok().map(|(free, _)| free as u64),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_free(_: &Device) -> Option<u64> {
    None
}

/// Refuse a run whose estimate exceeds what the device has, naming the params that shrink it
/// (those not already set).
pub fn check(plan: &TrainPlan, est: &Estimate, available: Option<u64>, device: &str) -> anyhow::Result<()> {
    let Some(avail) = available else { return Ok(()) };
    if est.total() <= avail {
        return Ok(());
    }
    let mut fixes = Vec::new();
    if plan.lora.is_some() && plan.hold.quant != Some(BaseQuant::Q4_0) {
        fixes.push("base_quant = \"q4_0\" (a 4-bit frozen base)".to_string());
    }
    if plan.hold.is_f32() && plan.lora.is_some() {
        fixes.push("dtype = \"bf16\"".to_string());
    }
    if !plan.checkpoint {
        fixes.push("grad_checkpoint = true (activations of one layer, not all)".to_string());
    }
    fixes.push(format!("a smaller batch_size or max_seq_len (now {} rows of {} tokens)", plan.rows, plan.seq_len));
    if plan.lora.is_none() {
        fixes.push("mode = \"lora\"".to_string());
    }
    bail!(
        "this run needs about {}, more than the {:.1} GiB the {device} has free; change {}",
        est.describe(),
        avail as f64 / (1u64 << 30) as f64,
        fixes.join(", or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn cfg() -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "max_position_embeddings": 4096, "tie_word_embeddings": false
        }))
        .unwrap()
    }

    #[test]
    fn compact_holds_and_checkpointing_shrink_the_estimate() {
        let (c, lora) = (cfg(), LoraConfig { r: 16, ..Default::default() });
        let plan = |hold, checkpoint| TrainPlan {
            cfg: &c,
            hold,
            lora: Some(&lora),
            rows: 1,
            seq_len: 256,
            checkpoint,
            adapted_models: 1,
        };
        let f32 = estimate(&plan(HoldSpec::F32, false));
        let bf16 = estimate(&plan(HoldSpec { dtype: DType::BF16, quant: None }, false));
        let q4 = estimate(&plan(HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q4_0) }, true));
        assert!(f32.weights > 28 << 30 && bf16.weights < 16 << 30 && q4.weights < 6 << 30, "{f32:?} {bf16:?} {q4:?}");
        assert!(q4.activations * 10 < bf16.activations, "checkpointing keeps one layer's activations");
        let err = check(&plan(HoldSpec::F32, false), &f32, Some(11 << 30), "cuda").unwrap_err().to_string();
        for fix in ["base_quant", "dtype = \"bf16\"", "grad_checkpoint", "batch_size"] {
            assert!(err.contains(fix), "{err}");
        }
        assert!(err.contains("11.0 GiB the cuda has free"), "{err}");
        assert!(check(&plan(HoldSpec::F32, false), &f32, None, "cpu").is_ok(), "unknown capacity: no refusal");
    }

    /// pipelines/glm4-9b.toml's claim: GLM-4-9B-0414 in QLoRA-4, 1×256, checkpointing, fits the
    /// seeds' 11 GB card by the planner (whose 7B estimates were within 8 % of measured peaks).
    #[test]
    fn glm4_9b_qlora4_is_planned_under_11_gb() {
        let c: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": "glm4", "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
            "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
            "partial_rotary_factor": 0.5, "attention_bias": true, "tie_word_embeddings": false
        }))
        .unwrap();
        let lora = LoraConfig { r: 16, ..Default::default() };
        let est = estimate(&TrainPlan {
            cfg: &c,
            hold: HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q4_0) },
            lora: Some(&lora),
            rows: 1,
            seq_len: 256,
            checkpoint: true,
            adapted_models: 1,
        });
        eprintln!("glm4-9b QLoRA-4: {}", est.describe());
        assert!(est.total() < 10 << 30, "{}", est.describe());
    }
}
