//! The `avatar` command line.

mod artifact;
mod demo;
mod inspect;
mod judge;
pub mod label;
pub(crate) mod output;
mod run_cmd;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::output::outln;
use crate::engine::{Manifest, Registry};

#[derive(Parser)]
#[command(
    name = "avatar",
    version,
    about = "WeChat history in, a chat model that talks like you out: a make-style pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: run the demo pipeline on the shipped sample data, write the report, serve.
    Demo(demo::DemoArgs),
    /// Run the pipeline, re-running only what changed.
    Run(run_cmd::RunArgs),
    /// Say for each stage whether it is up to date, and if not, why.
    Status(inspect::StatusArgs),
    /// Print the stage graph (text, DOT or mermaid).
    Dag(inspect::DagArgs),
    /// Past runs with params and metrics side by side.
    Log(inspect::LogArgs),
    /// Where a stage's artifact is, its params and metrics.
    Show(inspect::ShowArgs),
    /// Delete artifacts no lock file or recorded run refers to.
    Gc(inspect::GcArgs),
    /// Check the store: every artifact matches its content hash, no leftovers of killed runs.
    Verify(verify::VerifyArgs),
    /// Write one self-contained HTML page about the last run.
    Report(ReportArgs),
    /// Rank reward-label's candidates by hand in the browser (appends to the labels file).
    Label(label::LabelArgs),
    /// Blind test: pick the person's real reply next to the clone's (appends to a results file eval reads).
    Judge(judge::JudgeArgs),
    /// Serve a model on an OpenAI-compatible API with a web chat page.
    Serve(crate::serve::ServeArgs),
    /// Write a synthetic WeChat history in every supported source format (tests, demos).
    Synth(crate::synth::SynthArgs),
    /// List the stage kinds this build knows, with their inputs and outputs.
    Kinds,
}

#[derive(clap::Args)]
struct ReportArgs {
    manifest: Option<PathBuf>,
    /// Output file (default: report.html in the store).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Include example conversations from the eval stage (chat text: only for data you may show).
    #[arg(long)]
    examples: bool,
}

/// Entry point of the `avatar` binary.
pub fn main() -> ExitCode {
    main_with(crate::stages::registry())
}

/// The CLI over any stage registry (tests and benches add their own stage kinds).
pub fn main_with(registry: Registry) -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::demo(&registry, &args),
        Command::Run(args) => run_cmd::run(&registry, &args),
        Command::Status(args) => inspect::status(&registry, &args),
        Command::Dag(args) => inspect::dag(&registry, &args),
        Command::Log(args) => inspect::log(&registry, &args),
        Command::Show(args) => inspect::show(&registry, &args),
        Command::Gc(args) => inspect::gc(&registry, &args),
        Command::Verify(args) => verify::verify(&registry, &args),
        Command::Report(args) => report(&registry, &args),
        Command::Label(args) => label::label(&registry, &args),
        Command::Judge(args) => judge::judge(&registry, &args),
        Command::Serve(args) => crate::serve_target::run(&args, &registry).map(|()| ExitCode::SUCCESS),
        Command::Synth(args) => crate::synth::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Kinds => inspect::kinds(&registry),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("avatar: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(registry: &Registry, args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let manifest = load_manifest(args.manifest.as_deref(), registry)?;
    let opts = crate::report::ReportOptions { examples: args.examples, out: args.out.clone() };
    let path = crate::report::write_report(&manifest, registry, &opts)?;
    outln!("report written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AVATAR_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The manifest named on the command line, else `./pipeline.toml`, else `pipelines/demo.toml`.
pub(crate) fn manifest_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    for candidate in ["pipeline.toml", "pipelines/demo.toml"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    anyhow::bail!("no manifest given and neither ./pipeline.toml nor ./pipelines/demo.toml exists")
}

pub(crate) fn load_manifest(given: Option<&Path>, registry: &Registry) -> anyhow::Result<Manifest> {
    let path = manifest_path(given)?;
    Manifest::load(&path, registry).map_err(|e| {
        let n = e.diagnostics.len();
        anyhow::anyhow!("{e}\n{n} problem{} in the manifest; nothing was run", if n == 1 { "" } else { "s" })
    })
}
