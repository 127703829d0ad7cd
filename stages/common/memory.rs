//! The memory check every training stage runs before it loads its base: the expected peak,
//! printed, and a clear refusal (naming the params that shrink it) when the device cannot hold
//! it, instead of an out-of-memory kill halfway through loading.

use std::path::Path;

use anyhow::Context;

use super::training::TrainingSetup;
use avatar_engine::StageContext;
use avatar_runtime::config::ModelConfig;
use avatar_runtime::device::device_class;
use avatar_runtime::lora::LoraConfig;
use avatar_runtime::memory_plan::{TrainPlan, available, check, estimate};

/// `rows` of `seq_len` tokens per forward; `adapted_models` models over the base that train.
pub fn check_fits(
    ctx: &StageContext,
    base_dir: &Path,
    setup: &TrainingSetup,
    lora: Option<&LoraConfig>,
    (rows, seq_len): (usize, usize),
    adapted_models: usize,
) -> anyhow::Result<()> {
    let (cfg, _) = ModelConfig::from_file(&base_dir.join("config.json"))?;
    let plan = TrainPlan {
        cfg: &cfg,
        hold: setup.hold,
        lora,
        rows,
        seq_len: seq_len.min(cfg.max_position_embeddings),
        checkpoint: setup.checkpoint,
        adapted_models,
    };
    let est = estimate(&plan);
    let avail = available(&setup.device);
    let free = avail.map(|a| format!(", {:.1} GiB free", a as f64 / (1u64 << 30) as f64)).unwrap_or_default();
    ctx.progress.note(&format!("memory plan: {}{free}", est.describe()));
    check(&plan, &est, avail, device_class(&setup.device)).with_context(|| format!("stage `{}`", ctx.stage_name))
}
