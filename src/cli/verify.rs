//! `avatar verify`: check the store is whole (content hashes, records, no leftovers of kills).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::output::outln;
use crate::engine::Registry;
use crate::engine::store::Store;
use crate::engine::verify::verify as verify_store;

#[derive(Args)]
pub struct VerifyArgs {
    pub manifest: Option<PathBuf>,
    /// If a run holds the store, wait for it instead of failing.
    #[arg(long)]
    pub wait: bool,
}

pub fn verify(registry: &Registry, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let dir = manifest.store_dir();
    anyhow::ensure!(dir.is_dir(), "no store at {} yet: nothing to verify", dir.display());
    let store = Store::existing(&dir);
    let _lock = store.lock(args.wait)?;
    let r = verify_store(&store)?;
    for (what, list) in [("corrupt", &r.corrupt), ("orphaned", &r.orphaned), ("left over", &r.leftovers)] {
        for item in list {
            outln!("{what:<9} {item}");
        }
    }
    outln!(
        "{} artifacts, {} action records, {} resumable checkpoint dirs: {} corrupt, {} orphaned, {} left over",
        r.objects,
        r.actions,
        r.resumable,
        r.corrupt.len(),
        r.orphaned.len(),
        r.leftovers.len()
    );
    Ok(if r.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
