//! Choosing the steps of a run: which stages `--until` selects, in what order, and which ones
//! `--force` re-runs. Nothing here touches the store; whether a step is cached is decided by
//! the scheduler once its inputs exist.

use std::collections::BTreeSet;

use crate::dag::Dag;
use crate::manifest::Manifest;

pub struct Plan {
    /// The selected stages, each after the stages it reads from.
    pub order: Vec<String>,
    force: Vec<String>,
}

impl Plan {
    /// The stages `until` selects (all when None), with `force` checked against the manifest.
    pub fn new(manifest: &Manifest, dag: &Dag, until: Option<&str>, force: &[String]) -> anyhow::Result<Plan> {
        let selected: BTreeSet<String> = match until {
            Some(stage) => {
                anyhow::ensure!(
                    manifest.stage(stage).is_some(),
                    "--until: no stage `{stage}` in {}",
                    manifest.path.display()
                );
                dag.ancestors_inclusive(stage)
            }
            None => manifest.stages.iter().map(|s| s.name.clone()).collect(),
        };
        for f in force {
            anyhow::ensure!(
                f == "all" || manifest.stage(f).is_some(),
                "--force: no stage `{f}` in {}",
                manifest.path.display()
            );
        }
        let order = dag.topo_order().into_iter().filter(|s| selected.contains(s)).collect();
        Ok(Plan { order, force: force.to_vec() })
    }

    /// Re-run `stage` even when its key has an artifact.
    pub fn is_forced(&self, stage: &str) -> bool {
        self.force.iter().any(|f| f == stage || f == "all")
    }
}
