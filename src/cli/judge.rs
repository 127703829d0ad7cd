//! `avatar judge`: the blind test. Takes contexts from the test split (the replies no model was
//! trained on), has the clone answer each one, and serves a loopback page that shows the
//! person's real reply and the clone's side by side in random order; the judge picks the one
//! they take for the person's. Choices go to a results file that eval reads (`blind` input)
//! for the fooled rate.
//!
//! The clone, by default, is the model the `serve` stage serves (what people talk to); else the
//! last aligned model (ppo, then dpo), else sft. `--model` names any stage output or folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;

use super::artifact::{Artifact, resolve, stage_output};
use crate::engine::manifest::InputRef;
use crate::engine::{Manifest, Registry};
use crate::stages::common::jsonl::read_jsonl;
use crate::stages::common::loopback::require_loopback;
use crate::stages::common::sample::Sample;
use crate::stages::eval::EvalParams;
use crate::stages::eval::judge_page::{CloneModel, JudgeState, Trial, draw, serve_blocking};
use crate::stages::eval::models::EvalModel;

#[derive(Args)]
pub struct JudgeArgs {
    /// The pipeline manifest (default: ./pipeline.toml, else pipelines/demo.toml).
    pub manifest: Option<PathBuf>,
    /// The clone: a stage output (`sft.model`, `quantize.gguf`), a stage name (its `model`
    /// output), or a model folder / .gguf file. Default: what the `serve` stage serves.
    #[arg(long)]
    pub model: Option<String>,
    /// Samples whose contexts are shown (default: the eval stage's `test` input, else
    /// `split.test`).
    #[arg(long)]
    pub samples: Option<String>,
    /// Results file to append to (default: the eval stage's `blind` input, else blind.jsonl
    /// next to the manifest).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Contexts to judge in this session (ones already judged for this model are skipped).
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Seed for the draw of contexts, sides and reply seeds (default: from the clock, so
    /// sessions differ and the sides cannot be guessed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Loopback address to listen on (the page shows chat text: nothing else is allowed).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8002)]
    pub port: u16,
}

pub fn judge(registry: &Registry, args: &JudgeArgs) -> anyhow::Result<ExitCode> {
    require_loopback(&args.host, "blind-test page")?;
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let model = clone_model(&manifest, registry, args.model.as_deref())?;
    let samples_ref = match &args.samples {
        Some(s) => parse_ref(&manifest, s)?,
        None => eval_input(&manifest, "test")
            .unwrap_or_else(|| InputRef::Stage { stage: "split".into(), output: "test".into() }),
    };
    let samples_art = resolve(&manifest, registry, &samples_ref)?;
    let samples: Vec<Sample> = read_jsonl(&samples_art.path)?;
    if samples.is_empty() {
        bail!("{} has no samples", samples_art.path.display());
    }
    let results = match (&args.results, eval_input(&manifest, "blind")) {
        (Some(p), _) => p.clone(),
        (None, Some(InputRef::Path(p))) => p,
        (None, _) => {
            let p = manifest.dir.join("blind.jsonl");
            eprintln!(
                "note: saving to {}; add `blind = \"./blind.jsonl\"` to the inputs of eval for the fooled rate",
                p.display()
            );
            p
        }
    };
    // Generation as eval does it (its params from the manifest), so the page shows the replies
    // eval measures.
    let eval = eval_params(&manifest)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let clone = CloneModel { name: model.name.clone(), hash: model.hash.clone() };
    let drawn = draw(&samples, &results, &clone, args.trials, seed)?;
    if drawn.is_empty() {
        println!("every sample of {} is already judged for {}", samples_art.name, model.name);
        return Ok(ExitCode::SUCCESS);
    }
    let kind = if is_gguf(&model.path) { "quantized" } else { "float" };
    // The pipeline's chat_template, as eval renders prompts with it.
    let template = crate::runtime::model_dir::TemplateChoice::parse(
        manifest.settings.chat_template.as_deref().unwrap_or_default(),
    )?;
    let mut loaded =
        EvalModel::load(kind, &model.path, &manifest.settings.device, &manifest.settings.dtype, template.as_ref())?;
    if let (true, EvalModel::Quant(q)) = (eval.guard_quantized, &mut loaded) {
        // As eval measured it: the served model behind the word guard.
        q.guard(&eval_blocked_words(&manifest)?);
    }
    eprintln!("the clone ({}) is answering {} contexts…", model.name, drawn.len());
    let mut trials = Vec::with_capacity(drawn.len());
    for (sample, reply_seed, real) in drawn {
        let mut g = eval.generation.clone();
        g.sampling.seed = reply_seed;
        let clone = loaded.reply(&sample, &g, eval.max_len)?;
        trials.push(Trial { sample, clone, seed: reply_seed, real });
    }
    let state = JudgeState::open(clone, trials, &results)?;
    serve_blocking(state, &args.host, args.port)?;
    Ok(ExitCode::SUCCESS)
}

/// The clone the flag names, else the served model, else the last aligned model, else sft.
fn clone_model(manifest: &Manifest, registry: &Registry, given: Option<&str>) -> anyhow::Result<Artifact> {
    if let Some(s) = given {
        // A bare stage name means its `model` output.
        if manifest.stage(s).is_some() {
            return stage_output(manifest, registry, s, "model");
        }
        return resolve(manifest, registry, &parse_ref(manifest, s)?);
    }
    let served = manifest.stages.iter().find(|s| s.kind == "serve").and_then(|s| s.inputs.get("model"));
    if let Some(r) = served {
        return resolve(manifest, registry, r);
    }
    for kind in ["ppo", "dpo", "sft"] {
        if let Some(s) = manifest.stages.iter().rev().find(|s| s.kind == kind) {
            return stage_output(manifest, registry, &s.name, "model");
        }
    }
    bail!("{} has no serve, ppo, dpo or sft stage: pass --model", manifest.path.display())
}

/// `stage.output` or a path, the way the manifest reads inputs (paths relative to here).
fn parse_ref(manifest: &Manifest, s: &str) -> anyhow::Result<InputRef> {
    let path = PathBuf::from(s);
    if s.contains('/') || s.starts_with('.') || path.exists() {
        let abs = std::path::absolute(&path).map_err(|e| anyhow!("{s}: {e}"))?;
        if !abs.exists() {
            bail!("`{s}` does not exist");
        }
        return Ok(InputRef::Path(abs));
    }
    match s.split_once('.') {
        Some((stage, output)) if manifest.stage(stage).is_some() => {
            Ok(InputRef::Stage { stage: stage.into(), output: output.into() })
        }
        _ => bail!("`{s}` is neither a stage output of {} nor an existing path", manifest.path.display()),
    }
}

fn eval_input(manifest: &Manifest, name: &str) -> Option<InputRef> {
    manifest.stages.iter().find(|s| s.kind == "eval").and_then(|s| s.inputs.get(name)).cloned()
}

fn eval_params(manifest: &Manifest) -> anyhow::Result<EvalParams> {
    match manifest.stages.iter().find(|s| s.kind == "eval") {
        Some(decl) => crate::engine::stage::parse_params::<EvalParams>(&decl.params)
            .map_err(|e| anyhow!("stage `{}`: {}: {}", decl.name, e.path, e.message)),
        None => Ok(EvalParams::default()),
    }
}

/// The eval stage's `blocked_words` file (a path in the manifest; a stage output is not
/// resolved here, so it is refused rather than silently left out).
fn eval_blocked_words(manifest: &Manifest) -> anyhow::Result<Vec<String>> {
    let decl = manifest.stages.iter().find(|s| s.kind == "eval").ok_or_else(|| anyhow!("no eval stage"))?;
    match decl.inputs.get("blocked_words") {
        Some(crate::engine::manifest::InputRef::Path(p)) => crate::stages::eval::read_word_list(p),
        Some(other) => bail!(
            "stage `{}`: guard_quantized with blocked_words = {other}: the judge reads only a file path",
            decl.name
        ),
        None => bail!("stage `{}`: guard_quantized = true needs the blocked_words input", decl.name),
    }
}

/// A .gguf file, or a folder holding one (the quantize stage's output).
fn is_gguf(path: &std::path::Path) -> bool {
    let gguf = |p: &std::path::Path| p.extension().is_some_and(|e| e == "gguf");
    gguf(path) || std::fs::read_dir(path).is_ok_and(|rd| rd.filter_map(Result::ok).any(|e| gguf(&e.path())))
}
