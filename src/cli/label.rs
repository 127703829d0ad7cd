//! `avatar label`: rank a reward-label stage's candidates by hand in the browser. Finds the
//! stage's ranked.jsonl through the lock file and store, and the labels file the training
//! stages read, then serves the labelling page on loopback.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;

use crate::engine::manifest::InputRef;
use crate::engine::{Manifest, Registry};

/// The stage kind whose output is labelled.
const KIND: &str = "reward-label";

#[derive(Args)]
pub struct LabelArgs {
    /// The pipeline manifest (default: ./pipeline.toml, else pipelines/demo.toml).
    pub manifest: Option<PathBuf>,
    /// The reward-label stage to label (default: the manifest's only one).
    #[arg(long)]
    pub stage: Option<String>,
    /// Labels file to append to (default: the `labels` input of a stage in the manifest).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Loopback address to listen on (the page shows chat text: nothing else is allowed).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
}

pub fn label(registry: &Registry, args: &LabelArgs) -> anyhow::Result<ExitCode> {
    if !crate::stages::reward_label::human::is_loopback_host(&args.host) {
        bail!("refusing to listen on {}: the labelling page shows chat text, so it binds loopback only", args.host);
    }
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let ranked = ranked_path(&manifest, registry, args.stage.as_deref())?;
    let labels = match &args.labels {
        Some(p) => p.clone(),
        None => labels_path(&manifest)?,
    };
    crate::stages::reward_label::human::serve_blocking(&ranked, &labels, &args.host, args.port)?;
    Ok(ExitCode::SUCCESS)
}

/// ranked.jsonl of the stage's current artifact, else of its last recorded run.
pub fn ranked_path(manifest: &Manifest, registry: &Registry, stage: Option<&str>) -> anyhow::Result<PathBuf> {
    let decl = match stage {
        Some(name) => {
            let d = manifest.stage(name).ok_or_else(|| anyhow!("no stage `{name}` in {}", manifest.path.display()))?;
            if d.kind != KIND {
                bail!("stage `{name}` is a `{}` stage, not `{KIND}`", d.kind);
            }
            d
        }
        None => {
            let all: Vec<_> = manifest.stages.iter().filter(|s| s.kind == KIND).collect();
            match all.as_slice() {
                [one] => *one,
                [] => bail!("{} has no `{KIND}` stage", manifest.path.display()),
                many => bail!(
                    "{} has several `{KIND}` stages ({}): pass --stage",
                    manifest.path.display(),
                    many.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    Ok(super::artifact::stage_output(manifest, registry, &decl.name, "ranked")?.path)
}

/// The `labels` input of the manifest's stages (a file path, not another stage's output).
pub fn labels_path(manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let mut found: Vec<&Path> = Vec::new();
    for s in &manifest.stages {
        if let Some(InputRef::Path(p)) = s.inputs.get("labels")
            && !found.contains(&p.as_path())
        {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.to_path_buf()),
        [] => bail!(
            "no stage in {} has a `labels` input: pass --labels FILE (and add `labels = \"./FILE\"` to the inputs of reward-train or dpo)",
            manifest.path.display()
        ),
        _ => bail!("stages in {} name different labels files: pass --labels", manifest.path.display()),
    }
}
