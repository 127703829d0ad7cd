//! `window`: normalised messages → (context, reply) training samples.
//!
//! Params: see [`params::WindowParams`]. Output `samples` (samples.jsonl of
//! `common::sample::Sample`) and `stats` (window_stats.json: counts kept and dropped, kind mix).

pub mod build;
pub mod params;
pub mod stats;

use anyhow::Context;

use crate::engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use crate::stages::common::jsonl::{read_jsonl, write_jsonl};
use crate::stages::common::message::Message;

pub use build::{Windowed, build_samples};
pub use params::WindowParams;
pub use stats::WindowStats;

pub struct WindowStage;

impl TypedStage for WindowStage {
    type Params = WindowParams;
    const INFO: StageInfo = StageInfo {
        kind: "window",
        version: 1,
        summary: "messages → (context, reply) samples: N prior messages, own bubbles merged with <s>, time-gap sessions, quote pairs",
        inputs: &[InputSpec { name: "messages", required: true, help: "messages.jsonl from normalise" }],
        outputs: &[
            OutputSpec { name: "samples", path: "samples.jsonl", help: "one Sample per line" },
            OutputSpec { name: "stats", path: "window_stats.json", help: "counts kept/dropped and kind mix" },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &WindowParams) -> anyhow::Result<Metrics> {
        let input = ctx.input("messages")?;
        let messages: Vec<Message> = read_jsonl(input)?;
        let Windowed { samples, stats } =
            build_samples(&messages, params).with_context(|| format!("windowing {}", input.display()))?;
        write_jsonl(&ctx.output("samples", &Self::INFO)?, &samples)?;
        let stats_path = ctx.output("stats", &Self::INFO)?;
        std::fs::write(&stats_path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("writing {}", stats_path.display()))?;
        ctx.progress.note(&format!("{} messages → {} samples", stats.messages, samples.len()));

        let mut m = Metrics::new();
        m.insert("messages".into(), stats.messages.into());
        m.insert("samples".into(), (samples.len() as u64).into());
        m.insert("samples_quote".into(), stats.samples_quote.into());
        m.insert("sessions".into(), stats.sessions.into());
        m.insert("dropped_duplicate".into(), stats.dropped.duplicate.into());
        m.insert("dropped_placeholder".into(), stats.dropped.placeholder_reply.into());
        Ok(m)
    }
}
