//! `avatar demo`: the main job. Runs the demo pipeline on the shipped synthetic account, says
//! where everything is, writes the run report, and serves the clone on localhost.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::output::outln;
use crate::engine::Registry;
use crate::engine::status::status;
use crate::engine::store::Store;

#[derive(Args)]
pub struct DemoArgs {
    /// The pipeline to run and serve.
    #[arg(long, default_value = "pipelines/demo.toml")]
    pub manifest: PathBuf,
    /// Address for the server (loopback needs no API key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Run the pipeline and write the report, but don't start the server.
    #[arg(long)]
    pub no_serve: bool,
    /// Stages to run at once (default: number of CPUs).
    #[arg(long, short = 'j', default_value_t = 0)]
    pub jobs: usize,
}

pub fn demo(registry: &Registry, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.manifest.is_file(),
        "{} not found: run `avatar demo` from the root of the avatar checkout (or pass --manifest)",
        args.manifest.display()
    );
    let run_args = super::run_cmd::RunArgs {
        manifest: Some(args.manifest.clone()),
        until: None,
        force: Vec::new(),
        dry_run: false,
        jobs: args.jobs,
        json: false,
        check: false,
        wait: true,
    };
    let code = super::run_cmd::run(registry, &run_args)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let manifest = super::load_manifest(Some(&args.manifest), registry)?;
    let store = Store::existing(&manifest.store_dir());
    outln!("\nWhere everything is (`avatar show <stage>` for details):");
    for s in status(&manifest, registry)? {
        let Some(rec) = s.key.as_deref().and_then(|k| store.action(k)) else { continue };
        outln!("  {:<10} {:<14} {}", s.name, s.kind, store.object_dir(&rec.output).display());
    }
    // The demo's data is synthetic, so the report may show example conversations.
    let report =
        crate::report::write_report(&manifest, registry, &crate::report::ReportOptions { examples: true, out: None })?;
    outln!("  report     {}", report.display());
    outln!("  lock file  {}", manifest.lock_path().display());
    if args.no_serve {
        return Ok(ExitCode::SUCCESS);
    }
    let manifest_arg = args.manifest.display().to_string();
    let port = args.port.to_string();
    let cmd = <crate::serve::ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
    let matches = cmd.try_get_matches_from([
        "serve",
        manifest_arg.as_str(),
        "--host",
        args.host.as_str(),
        "--port",
        port.as_str(),
    ])?;
    let serve_args = <crate::serve::ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches)?;
    outln!("\nChat with the clone at http://{}:{}/ (Ctrl-C to stop)", args.host, args.port);
    crate::serve_target::run(&serve_args, registry)?;
    Ok(ExitCode::SUCCESS)
}
