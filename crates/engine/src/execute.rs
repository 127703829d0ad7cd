//! Reproducing one stage: run it into a fresh temp dir, commit the artifact into the store
//! and record which output its key produced. A failure or a panic leaves no temp dir behind.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use anyhow::Context;

use crate::Registry;
use crate::fsutil::create_private_dir;
use crate::manifest::{Manifest, StageDecl};
use crate::progress::Progress;
use crate::resolve::{DoneStage, Resolved};
use crate::stage::{Globals, Metrics, StageContext};
use crate::store::{ActionRecord, Store, now_rfc3339};

/// Everything a stage needs from the run it belongs to.
pub struct Execution<'a> {
    pub manifest: &'a Manifest,
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub globals: &'a Globals,
}

impl Execution<'_> {
    /// Run `decl` with its resolved inputs; returns its artifact, metrics and seconds taken.
    pub fn execute(
        &self,
        decl: &StageDecl,
        resolved: Resolved,
        progress: &Progress,
    ) -> anyhow::Result<(DoneStage, Metrics, f64)> {
        let Resolved { inputs, parts, key } = resolved;
        let stage = self.registry.get(&decl.kind).expect("validated kind");
        let tmp = self.store.new_tmp_dir(&decl.name)?;
        let work = self.store.work_dir(&key);
        create_private_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        let ctx = StageContext {
            stage_name: &decl.name,
            inputs: &inputs,
            out_dir: &tmp,
            work_dir: &work,
            globals: self.globals,
            progress,
            manifest_dir: &self.manifest.dir,
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| stage.run(&ctx, &decl.canonical_params)));
        let secs = started.elapsed().as_secs_f64();
        let metrics = match result {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            Err(panic) => {
                let _ = std::fs::remove_dir_all(&tmp);
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                anyhow::bail!("stage crashed (a bug in avatar, please report it): {msg}");
            }
        };
        let (output, outputs) = match self.store.commit(&tmp, &decl.outputs) {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        self.store.record_action(&ActionRecord {
            key: key.clone(),
            stage: decl.name.clone(),
            output: output.clone(),
            outputs: outputs.clone(),
            metrics: metrics.clone(),
            parts,
            created: now_rfc3339(),
            duration_s: secs,
        })?;
        let _ = std::fs::remove_dir_all(&work);
        let dir = self.store.object_dir(&output);
        Ok((DoneStage { key, output, outputs, dir }, metrics, secs))
    }
}
