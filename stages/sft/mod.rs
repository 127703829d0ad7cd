//! `sft`: supervised fine-tuning of a Qwen2/Llama-family base on (context, reply) samples, with
//! LoRA on a frozen base or full fine-tuning. The loss covers only the person's reply tokens.
//!
//! Outputs: `adapter` (PEFT: adapter_config.json + adapter_model.safetensors), `model` (merged
//! HF folder the quantize and serve stages load), `curves` (loss.json + loss.svg). Metrics:
//! final val loss and perplexity, tokens/s, steps, wall time.
//!
//! Params: see [`params::SftParams`].

pub mod checkpoint;
pub mod data;
pub mod general;
pub mod params;
pub mod train;

use std::time::Instant;

use anyhow::Context;

use crate::common::plot::line_chart;
use crate::common::training::TrainingSetup;
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::hf::{load_hf_dir_held, save_hf_dir_with_template, save_model_adapter};
use avatar_runtime::model::TrainMode;

pub use params::{Mode, SftOptions, SftParams};

pub struct SftStage;

/// The `curves` output: loss.json and loss.svg.
pub fn write_curves(dir: &std::path::Path, curves: &checkpoint::Curves) -> anyhow::Result<()> {
    avatar_engine::fsutil::create_private_dir(dir)?;
    let rows = |v: &[(u64, f64)], key: &str| -> Vec<serde_json::Value> {
        v.iter().map(|(s, x)| serde_json::json!({"step": s, key: x})).collect()
    };
    let json = serde_json::json!({
        "train": rows(&curves.train_loss, "loss"),
        "val": rows(&curves.val_loss, "loss"),
        "learning_rate": rows(&curves.learning_rate, "lr"),
    });
    avatar_engine::fsutil::write_private(dir.join("loss.json"), serde_json::to_string_pretty(&json)?)?;
    let pts = |v: &[(u64, f64)]| v.iter().map(|(s, x)| (*s as f64, *x)).collect::<Vec<_>>();
    line_chart(
        &dir.join("loss.svg"),
        "SFT loss (reply tokens)",
        "optimiser step",
        "cross-entropy",
        &[("train", pts(&curves.train_loss)), ("val", pts(&curves.val_loss))],
    )
}

impl TypedStage for SftStage {
    type Params = SftParams;
    const INFO: StageInfo = StageInfo {
        kind: "sft",
        // 3: the merged model carries chat_template.jinja (the template it was trained with).
        version: 3,
        summary: "base model + train/val samples → LoRA adapter (PEFT), merged HF model, loss curves",
        inputs: &[
            InputSpec {
                name: "base",
                required: true,
                help: "HF model folder (scratch-base's model, or a local Qwen2.5/Llama folder)",
            },
            InputSpec { name: "train", required: true, help: "training samples JSONL (split.train)" },
            InputSpec { name: "val", required: true, help: "validation samples JSONL (split.val)" },
            InputSpec {
                name: "general",
                required: false,
                help: "general instruction pairs JSONL (ShareGPT or Alpaca), mixed in against forgetting",
            },
        ],
        outputs: &[
            OutputSpec { name: "adapter", path: "adapter", help: "PEFT LoRA adapter (empty note in full mode)" },
            OutputSpec { name: "model", path: "model", help: "merged model, HF folder" },
            OutputSpec { name: "curves", path: "curves", help: "loss.json and loss.svg" },
            OutputSpec {
                name: "general_test",
                path: "general-test.jsonl",
                help: "held-out general rows as samples, for eval (empty without a `general` input)",
            },
        ],
    };

    fn run(&self, ctx: &StageContext, p: &SftParams) -> anyhow::Result<Metrics> {
        let wall = Instant::now();
        let setup = TrainingSetup::from_ctx(ctx, p)?;
        let base = ctx.input("base")?;
        let mode = match p.own.mode {
            Mode::Lora => TrainMode::Lora(p.training.lora.clone()),
            Mode::Full => TrainMode::Full,
        };
        let lora = matches!(p.own.mode, Mode::Lora).then_some(&p.training.lora);
        let shape = (p.training.batch_size, p.training.max_seq_len);
        crate::common::memory::check_fits(ctx, base, &setup, lora, shape, 1)?;
        let TrainingSetup { seed, device, hold, checkpoint } = setup;
        let mut loaded = load_hf_dir_held(base, &device, &mode, seed, hold)?;
        loaded.model.set_grad_checkpointing(checkpoint);
        crate::common::template::apply(ctx, base, &loaded.tokenizer, &mut loaded.template)?;
        let (model, tokenizer, template) = (&loaded.model, &loaded.tokenizer, &loaded.template);
        let max_len = p.training.max_len(model.cfg.max_position_embeddings);

        let train_path = ctx.input("train")?;
        let val_path = ctx.input("val")?;
        let mut train = data::encode_file(train_path, tokenizer, template, max_len, None)?;
        data::require_samples(&train, train_path)?;
        let person_samples = train.samples.len();
        let general = general::prepare(
            ctx.optional_input("general"),
            &ctx.output("general_test", &Self::INFO)?,
            &p.own,
            seed,
            (tokenizer, template, max_len),
            person_samples,
        )?;
        if let Some(g) = &general {
            // Mixed before the plan's seeded shuffle: the batches interleave both kinds.
            train.samples.extend(g.samples.iter().cloned());
        }
        let val = data::encode_file(val_path, tokenizer, template, max_len, Some(p.own.eval_samples.max(1)))?;
        data::require_samples(&val, val_path)?;
        ctx.progress.note(&format!(
            "{} train / {} val samples ({} skipped), {} trainable parameters on {}, frozen base {} ({:.1} MiB)",
            train.samples.len(),
            val.samples.len(),
            train.skipped + val.skipped,
            model.trainable_parameter_count(),
            avatar_runtime::device::device_class(&device),
            hold.label(),
            model.frozen_bytes() as f64 / (1 << 20) as f64,
        ));

        avatar_engine::fsutil::create_private_dir(ctx.work_dir)
            .with_context(|| format!("creating {}", ctx.work_dir.display()))?;
        let fp = crate::common::checkpoint::fingerprint(ctx, &Self::INFO, p, seed)?;
        let mut params = p.clone();
        params.training.max_seq_len = max_len;
        let outcome = train::run(train::Job {
            model,
            train: &train.samples,
            val: &val.samples,
            params: &params,
            seed,
            pad_id: data::pad_id(tokenizer),
            work_dir: ctx.work_dir,
            fingerprint: &fp,
            progress: ctx.progress,
            stop_after: None,
        })?;

        let adapter_dir = ctx.output("adapter", &Self::INFO)?;
        match p.own.mode {
            Mode::Lora => save_model_adapter(&adapter_dir, model, base)?,
            Mode::Full => {
                avatar_engine::fsutil::create_private_dir(&adapter_dir)?;
                avatar_engine::fsutil::write_private(
                    adapter_dir.join("README.txt"),
                    "mode = \"full\": every weight was trained, so there is no adapter; use the `model` output.\n",
                )?;
            }
        }
        save_hf_dir_with_template(&ctx.output("model", &Self::INFO)?, model, &loaded.raw_config, base, Some(template))?;
        write_curves(&ctx.output("curves", &Self::INFO)?, &outcome.curves)?;
        checkpoint::clear(ctx.work_dir);

        let mut m = Metrics::new();
        m.insert("final_val_loss".into(), outcome.final_val_loss.into());
        m.insert("val_perplexity".into(), outcome.final_val_loss.exp().into());
        if let Some((_, l)) = outcome.curves.train_loss.last() {
            m.insert("final_train_loss".into(), (*l).into());
        }
        m.insert("steps".into(), outcome.steps.into());
        m.insert(
            "tokens_per_second".into(),
            (outcome.tokens_this_run as f64 / outcome.seconds_this_run.max(1e-9)).round().into(),
        );
        m.insert("train_seconds".into(), outcome.seconds_this_run.into());
        m.insert("wall_seconds".into(), wall.elapsed().as_secs_f64().into());
        m.insert("train_samples".into(), train.samples.len().into());
        if let Some(g) = &general {
            m.insert("general_rows".into(), g.rows.into());
            m.insert("general_held_out".into(), g.held_out.into());
            m.insert("general_mixed".into(), g.samples.len().into());
            m.insert("general_skipped".into(), g.skipped.into());
            m.insert("general_share".into(), (g.samples.len() as f64 / train.samples.len() as f64).into());
        }
        m.insert("skipped_samples".into(), (train.skipped + val.skipped).into());
        m.insert("trainable_parameters".into(), model.trainable_parameter_count().into());
        crate::common::compute::record(&mut m, &device, false);
        if let Some(step) = outcome.resumed_from {
            m.insert("resumed_from_step".into(), step.into());
        }
        Ok(m)
    }
}
