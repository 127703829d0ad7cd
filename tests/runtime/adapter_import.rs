//! adapter-import: avatar's own sft adapter brought back through the import path merges to the
//! same bytes as sft's merged model; writers' naming variants merge the same; a base that does
//! not fit is an error naming the tensor.

use std::collections::HashMap;
use std::path::Path;

use avatar::runtime::lora::LoraConfig;
use avatar::runtime::peft_import::{normalise_key, read_peft_config};
use avatar::stages::adapter_import::AdapterImportStage;
use candle_core::{Device, Tensor};

use super::common::run_stage;
use super::fixture::Fixture;
use super::stages::{LORA, file_hash};

fn import(f: &Fixture, adapter: &Path, base: &Path, out: &str) -> anyhow::Result<()> {
    run_stage(
        &AdapterImportStage,
        "",
        &[("adapter", adapter), ("base", base)],
        &f.path(out),
        &f.path(&format!("w-{out}")),
    )
    .map(|_| ())
}

/// Rewrite an adapter folder with other tensor names and another config spelling.
fn rewrite(from: &Path, to: &Path, rename: impl Fn(&str) -> String, config: impl Fn(&mut serde_json::Value)) {
    std::fs::create_dir_all(to).unwrap();
    let tensors = candle_core::safetensors::load(from.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    candle_core::safetensors::save(&renamed, to.join("adapter_model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("adapter_config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(to.join("adapter_config.json"), cfg.to_string()).unwrap();
}

#[test]
fn sft_adapter_round_trips_to_byte_identical_merged_weights() {
    let f = Fixture::new();
    f.sft(LORA, "sft").unwrap();
    let base = f.path("base/model");
    import(&f, &f.path("sft/adapter"), &base, "imp").unwrap();
    for file in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            file_hash(&f.path(&format!("sft/model/{file}"))),
            file_hash(&f.path(&format!("imp/model/{file}"))),
            "{file}"
        );
    }
    assert_eq!(
        file_hash(&f.path("sft/adapter/adapter_model.safetensors")),
        file_hash(&f.path("imp/adapter/adapter_model.safetensors"))
    );

    // As a raw PEFT state_dict (`.default`), with an integer alpha and target_modules in
    // another order, as LLaMA-Factory/Unsloth may write it: the same merge.
    rewrite(
        &f.path("sft/adapter"),
        &f.path("variant"),
        |k| k.replace(".weight", ".default.weight"),
        |c| {
            c["lora_alpha"] = 8.into();
            let mut t: Vec<String> = serde_json::from_value(c["target_modules"].clone()).unwrap();
            t.reverse();
            c["target_modules"] = serde_json::json!(t);
        },
    );
    import(&f, &f.path("variant"), &base, "imp2").unwrap();
    assert_eq!(file_hash(&f.path("sft/model/model.safetensors")), file_hash(&f.path("imp2/model/model.safetensors")));
}

#[test]
fn adapter_that_does_not_fit_the_base_names_the_tensor() {
    let f = Fixture::new();
    f.sft(LORA, "sft").unwrap();
    let base = f.path("base/model");

    // A tensor for a layer the base does not have.
    rewrite(&f.path("sft/adapter"), &f.path("extra"), |k| k.replace("layers.1.", "layers.7."), |_| {});
    let e = format!("{:#}", import(&f, &f.path("extra"), &base, "x").unwrap_err());
    assert!(e.contains("does not match the base") && e.contains("layers.7."), "{e}");

    // A base with a wider MLP: the adapter's up_proj B has too few rows.
    let wide = f.path("wide");
    f.scratch_base("vocab_size = 400\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 96\nmax_position_embeddings = 128", &wide);
    let e = format!("{:#}", import(&f, &f.path("sft/adapter"), &wide.join("model"), "y").unwrap_err());
    assert!(e.contains("shape") && e.contains("mlp.") && e.contains("lora_"), "{e}");

    // Missing files and refused features are named.
    std::fs::create_dir_all(f.path("empty")).unwrap();
    let e = format!("{:#}", import(&f, &f.path("empty"), &base, "z").unwrap_err());
    assert!(e.contains("adapter_config.json"), "{e}");
    rewrite(&f.path("sft/adapter"), &f.path("dora"), |k| k.to_string(), |c| c["use_dora"] = true.into());
    let e = format!("{:#}", import(&f, &f.path("dora"), &base, "z").unwrap_err());
    assert!(e.contains("DoRA"), "{e}");
}

#[test]
fn key_variants_normalise_to_one_name() {
    let want = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
    for k in [
        want,
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
        "model.layers.3.self_attn.q_proj.lora_A.weight",
        "base_model.model.layers.3.self_attn.q_proj.lora_A.weight",
    ] {
        assert_eq!(normalise_key(k).as_deref(), Some(want), "{k}");
    }
    assert_eq!(normalise_key("base_model.model.model.embed_tokens.lora_embedding_A"), None);
    assert_eq!(normalise_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"), None);
}

fn config(dir: &Path, json: serde_json::Value) -> anyhow::Result<LoraConfig> {
    std::fs::write(dir.join("adapter_config.json"), json.to_string()).unwrap();
    read_peft_config(dir)
}

#[test]
fn config_variants_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        serde_json::json!({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"]});
    let c = config(dir.path(), base.clone()).unwrap();
    assert_eq!((c.r, c.alpha, c.scale()), (16, 32.0, 2.0));
    assert!(c.targets("q_proj") && !c.targets("o_proj"));
    let mut v = base.clone();
    v["target_modules"] = "all-linear".into();
    v["use_rslora"] = true.into();
    let c = config(dir.path(), v).unwrap();
    assert!(c.targets("down_proj") && c.scale() == 8.0);
    for (k, val, says) in [
        ("use_dora", serde_json::json!(true), "DoRA"),
        ("modules_to_save", serde_json::json!(["lm_head"]), "modules_to_save"),
        ("bias", serde_json::json!("lora_only"), "bias"),
        ("target_modules", serde_json::json!(".*proj"), "pattern"),
        ("target_modules", serde_json::json!(["embed_tokens"]), "embed_tokens"),
    ] {
        let mut v = base.clone();
        v[k] = val;
        let e = format!("{:#}", config(dir.path(), v).unwrap_err());
        assert!(e.contains(says), "{k}: {e}");
    }
}
