//! `split`: samples → train / val / test by a seeded hash of (conversation, session), plus a
//! stats directory (stats.json and SVG charts).
//!
//! Params: see [`params::SplitParams`]. The seed is the `seed` param, else the pipeline seed.
//!
//! ```toml
//! [stages.split]
//! kind = "split"
//! inputs = { samples = "window.samples", window_stats = "window.stats" }   # window_stats optional
//! train = 0.9
//! val = 0.05
//! test = 0.05
//! # seed = 7                 # default: the pipeline seed
//! top_contacts = 20
//! contact_names = true       # label the chart with display names from window_stats
//! histogram_bins = 40
//! ```

pub mod assign;
pub mod params;
pub mod stats;

use anyhow::Context;

use crate::common::jsonl::{read_jsonl, write_jsonl};
use crate::common::sample::Sample;
use crate::window::WindowStats;
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};

pub use assign::{Part, Splits, split_samples};
pub use params::SplitParams;

pub struct SplitStage;

impl TypedStage for SplitStage {
    type Params = SplitParams;
    const INFO: StageInfo = StageInfo {
        kind: "split",
        version: 1,
        summary: "samples → train/val/test by seeded hash of conversation-session (no leakage), with stats and charts",
        inputs: &[
            InputSpec { name: "samples", required: true, help: "samples.jsonl from window" },
            InputSpec { name: "window_stats", required: false, help: "window_stats.json, for the kind-mix chart" },
        ],
        outputs: &[
            OutputSpec { name: "train", path: "train.jsonl", help: "training samples" },
            OutputSpec { name: "val", path: "val.jsonl", help: "validation samples" },
            OutputSpec { name: "test", path: "test.jsonl", help: "held-out test samples" },
            OutputSpec { name: "stats", path: "stats", help: "stats.json and SVG charts" },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &SplitParams) -> anyhow::Result<Metrics> {
        params.validate()?;
        let seed = params.seed.unwrap_or(ctx.globals.seed);
        let samples: Vec<Sample> = read_jsonl(ctx.input("samples")?)?;
        let window_stats: Option<WindowStats> = match ctx.optional_input("window_stats") {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{}: not window stats JSON", path.display()))?,
                )
            }
            None => None,
        };
        let splits = split_samples(samples, params, seed)?;
        for part in Part::ALL {
            write_jsonl(&ctx.output(part.name(), &Self::INFO)?, splits.get(part))?;
        }
        let (st, reply, context) = stats::compute(
            &splits,
            [params.train, params.val, params.test],
            seed,
            params.top_contacts,
            window_stats.as_ref(),
            params.contact_names,
        );
        stats::write(&ctx.output("stats", &Self::INFO)?, &st, &reply, &context, params.histogram_bins)?;
        ctx.progress.note(&format!(
            "train {} / val {} / test {}",
            splits.train.len(),
            splits.val.len(),
            splits.test.len()
        ));
        let mut m = Metrics::new();
        for part in Part::ALL {
            m.insert(part.name().to_string(), (splits.get(part).len() as u64).into());
        }
        m.insert("reply_chars_mean".into(), st.reply_chars.mean.into());
        m.insert("context_turns_mean".into(), st.context_turns.mean.into());
        Ok(m)
    }
}
