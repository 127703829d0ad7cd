//! `serve`: validates a model for serving (loads it, generates a few tokens through the chat
//! template) and writes serve.json, which `avatar serve <pipeline.toml>` then serves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use serde::{Deserialize, Serialize};

use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_quant::SeqStep;
use avatar_runtime::{ChatMessage, Sampler, SamplingParams};
use avatar_serve::config::{Defaults, Limits, ServeConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeParams {
    /// Model id reported by `/v1/models`; empty: the pipeline's name.
    pub name: String,
    /// GGUF types to pick from a quantize output, in order of preference.
    pub prefer: Vec<String>,
    /// Tokens generated to validate the model.
    pub validate_tokens: usize,
    /// The user message of the validation chat.
    pub validate_prompt: String,
    pub defaults: Defaults,
    pub limits: Limits,
}

impl Default for ServeParams {
    fn default() -> Self {
        Self {
            name: String::new(),
            prefer: vec!["q4_0".into(), "q8_0".into(), "f16".into()],
            validate_tokens: 8,
            validate_prompt: "你好".into(),
            defaults: Defaults::default(),
            limits: Limits::default(),
        }
    }
}

pub struct ServeStage;

impl TypedStage for ServeStage {
    type Params = ServeParams;
    const INFO: StageInfo = StageInfo {
        kind: "serve",
        // 2: serve.json refers to the model relative to itself, never by an absolute path.
        // 3: SentencePiece tokenizers and chat_template.jinja travel with the model; the
        // pipeline's chat_template is written into serve.json.
        version: 3,
        summary: "validate a model for serving and write serve.json for `avatar serve`",
        inputs: &[
            InputSpec {
                name: "model",
                required: true,
                help: "quantize output directory, a .gguf file, or an HF folder (converted to q8_0)",
            },
            InputSpec {
                name: "blocked_words",
                required: false,
                help: "blocked words, one per line: the server never completes one in a reply",
            },
        ],
        outputs: &[OutputSpec {
            name: "config",
            path: "serve.json",
            help: "server config: model path, chat template, defaults, limits",
        }],
    };

    fn run(&self, ctx: &StageContext, params: &ServeParams) -> anyhow::Result<Metrics> {
        let input = ctx.input("model")?;
        let prefer: Vec<&str> = params.prefer.iter().map(String::as_str).collect();
        let mut cfg = if input.is_dir() && !has_gguf(input) && input.join("config.json").is_file() {
            // An HF folder: quantize into the artifact so serve.json points at a stored file.
            let model = ctx.out_dir.join("model-q8_0.gguf");
            avatar_quant::convert(input, avatar_quant::parse_type("q8_0")?, &model)?;
            avatar_runtime::model_dir::copy_tokenizer_files(input, ctx.out_dir)?;
            std::fs::copy(input.join("config.json"), ctx.out_dir.join("config.json"))?;
            ServeConfig { model: "model-q8_0.gguf".into(), ..ServeConfig::default() }
        } else {
            let mut c = ServeConfig::resolve(input, &prefer)?;
            c.model = portable_model_path(ctx.out_dir, &c)?;
            c.tokenizer_dir = None;
            c
        };
        if let Some(choice) = crate::common::template::choice(ctx)? {
            // The pipeline's format, written out so `avatar serve` renders what training saw.
            let dir = if input.is_dir() { input } else { input.parent().unwrap_or(input) };
            let tk = avatar_runtime::model_dir::load_tokenizer(dir)?;
            let t = avatar_runtime::model_dir::load_template(dir, &tk, Some(&choice))?;
            cfg.chat_template = t.source().to_string();
        }
        cfg.name = params.name.trim().to_string();
        cfg.defaults = params.defaults.clone();
        cfg.limits = params.limits.clone();
        if let Some(path) = ctx.optional_input("blocked_words") {
            cfg.blocked_words = crate::eval::read_word_list(path)?;
        }

        // Validate: load and generate a few tokens greedily, the model found as serve.json's
        // reader will find it once the store has committed the artifact.
        let abs = ServeConfig { model: model_for_validation(ctx.out_dir, &cfg.model), ..cfg.clone() };
        let t0 = Instant::now();
        let loaded = abs.load()?;
        let load_s = t0.elapsed().as_secs_f64();
        let prompt = loaded.template.render(&[ChatMessage::new("user", params.validate_prompt.clone())], true)?;
        let ids = loaded.tokenizer.encode(&prompt)?;
        let mut cache = loaded.model.new_cache();
        let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, ..SamplingParams::default() });
        let t1 = Instant::now();
        let mut logits = loaded.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &ids }])?;
        let mut generated = Vec::new();
        for _ in 0..params.validate_tokens {
            let tok = sampler.sample(&logits[0], &generated);
            if loaded.stop_ids.contains(&tok) {
                break;
            }
            generated.push(tok);
            logits = loaded.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &[tok] }])?;
        }
        let gen_s = t1.elapsed().as_secs_f64();
        loaded.tokenizer.decode(&generated, false)?;

        let out = ctx.output("config", &Self::INFO)?;
        avatar_engine::fsutil::write_private(&out, serde_json::to_string_pretty(&cfg)? + "\n")?;
        ctx.progress.note(&format!("model ok: {} tokens generated in {:.2}s", generated.len(), gen_s));
        let mut m = Metrics::new();
        m.insert("load_s".into(), load_s.into());
        m.insert("validate_prompt_tokens".into(), ids.len().into());
        m.insert("validate_generated_tokens".into(), generated.len().into());
        m.insert("validate_tok_per_s".into(), ((ids.len() + generated.len()) as f64 / gen_s.max(1e-9)).into());
        m.insert("weight_bytes".into(), loaded.model.weight_bytes().into());
        Ok(m)
    }
}

fn has_gguf(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "gguf")))
        .unwrap_or(false)
}

/// The model's path as serve.json records it: relative to serve.json, so the artifact's bytes
/// (and hash) do not depend on where the project lives. A model in the store becomes
/// `../<artifact>/<path>` (artifacts are siblings in `objects/`, and `out_dir` is `tmp/<id>`
/// beside it); any other model is copied into this artifact with its tokenizer files.
fn portable_model_path(out_dir: &Path, cfg: &ServeConfig) -> anyhow::Result<PathBuf> {
    let model = cfg.model.canonicalize().with_context(|| format!("cannot open {}", cfg.model.display()))?;
    let objects = out_dir.parent().and_then(Path::parent).map(|root| root.join("objects"));
    if let Some(rest) =
        objects.and_then(|o| o.canonicalize().ok()).and_then(|o| model.strip_prefix(o).ok().map(PathBuf::from))
    {
        if cfg.tokenizer_dir.as_ref().is_none_or(|t| t.canonicalize().ok().as_deref() == model.parent()) {
            return Ok(Path::new("..").join(rest));
        }
    }
    let file = model.file_name().ok_or_else(|| anyhow::anyhow!("{}: not a file", model.display()))?;
    std::fs::copy(&model, out_dir.join(file)).with_context(|| format!("cannot copy {}", model.display()))?;
    let tokenizer_dir =
        cfg.tokenizer_dir.clone().unwrap_or_else(|| model.parent().unwrap_or(Path::new(".")).to_path_buf());
    for f in avatar_runtime::model_dir::TOKENIZER_FILES.iter().chain(&["config.json"]) {
        let src = tokenizer_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out_dir.join(f)).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(PathBuf::from(file))
}

/// Where serve.json's reader will find `model` (relative to serve.json) while the artifact
/// is still being written in `out_dir`.
fn model_for_validation(out_dir: &Path, model: &Path) -> PathBuf {
    match model.strip_prefix("..") {
        // A sibling artifact: `objects/<x>/...` seen from `tmp/<id>/` is also `../../objects/<x>`.
        Ok(rest) => out_dir.join("..").join("..").join("objects").join(rest),
        Err(_) => out_dir.join(model),
    }
}
