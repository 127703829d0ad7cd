//! `adapter-import`: a PEFT LoRA adapter trained anywhere (LLaMA-Factory, PEFT, Unsloth, a
//! `command` stage) plus its HF base → the merged HF folder `sft` writes, so eval, quantize,
//! reward-label and serve follow unchanged.
//!
//! ```toml
//! [stages.import]
//! kind = "adapter-import"
//! inputs = { adapter = "train.adapter", base = "./models/Qwen2.5-0.5B-Instruct" }
//! ```
//!
//! Outputs: `model` (merged HF folder: config.json, model.safetensors in f32, tokenizer files
//! from the base) and `adapter` (the adapter's two PEFT files as given, for vLLM's
//! `--lora-modules`). An adapter that does not fit the base is an error naming the tensor.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::device::select_device;
use avatar_runtime::hf::save_hf_dir;
use avatar_runtime::peft_import::load_with_adapter;

/// No settings: the adapter's own adapter_config.json says how to merge it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterImportParams {}

pub struct AdapterImportStage;

/// The PEFT files the `adapter` output keeps.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

impl TypedStage for AdapterImportStage {
    type Params = AdapterImportParams;
    /// The merge runs on the pipeline's device in its dtype, as sft's does; no seed is used.
    const GLOBALS: &'static [&'static str] = &["device", "dtype"];
    const INFO: StageInfo = StageInfo {
        kind: "adapter-import",
        version: 1,
        summary: "PEFT LoRA adapter (trained anywhere) + HF base → merged HF folder, as sft writes",
        inputs: &[
            InputSpec {
                name: "adapter",
                required: true,
                help: "folder with adapter_config.json and adapter_model.safetensors",
            },
            InputSpec { name: "base", required: true, help: "the HF model folder the adapter was trained on" },
        ],
        outputs: &[
            OutputSpec { name: "model", path: "model", help: "merged model, HF folder" },
            OutputSpec { name: "adapter", path: "adapter", help: "the adapter's PEFT files, unchanged" },
        ],
    };

    fn run(&self, ctx: &StageContext, _params: &AdapterImportParams) -> anyhow::Result<Metrics> {
        let device = select_device(&ctx.globals.device)?;
        let adapter = ctx.input("adapter")?;
        let base = ctx.input("base")?;
        let loaded = load_with_adapter(base, adapter, &device)?;
        save_hf_dir(&ctx.output("model", &Self::INFO)?, &loaded.model, &loaded.raw_config, base)?;
        let kept = ctx.output("adapter", &Self::INFO)?;
        std::fs::create_dir_all(&kept).with_context(|| format!("creating {}", kept.display()))?;
        for f in ADAPTER_FILES {
            std::fs::copy(adapter.join(f), kept.join(f))
                .with_context(|| format!("copying {}", adapter.join(f).display()))?;
        }
        let lora = loaded.model.lora_config().context("the merged model lost its LoRA settings")?;
        let mut m = Metrics::new();
        m.insert("lora_r".into(), lora.r.into());
        m.insert("lora_scale".into(), lora.scale().into());
        m.insert("adapter_tensors".into(), loaded.model.trainable().len().into());
        m.insert("adapter_parameters".into(), loaded.model.trainable_parameter_count().into());
        // The merge (B·A) is a matmul: its bytes follow the CPU's multiply-add family.
        crate::common::compute::record(&mut m, &device, false);
        Ok(m)
    }
}
