//! `window`: normalised messages → (context, reply) training samples.
//!
//! Params: see [`params::WindowParams`]. Output `samples` (samples.jsonl of
//! `common::sample::Sample`) and `stats` (window_stats.json: counts kept and dropped, kind mix).
//!
//! ```toml
//! [stages.window]
//! kind = "window"
//! inputs = { messages = "normalise.messages" }
//! context_messages = 10          # prior messages a reply sees
//! session_gap_minutes = 30       # context never crosses a longer gap
//! bubble_gap_seconds = 300       # own bubbles closer than this form one reply, joined with <s>
//! other_separator = "\n"         # joins another speaker's consecutive messages
//! include_groups = false         # on: context turns carry `名字` and only own messages are targets
//! quote_pairs = true             # own quote replies → (quoted text, reply), even across sessions
//! quotes_only = false            # quote pairs only: the high-confidence set
//! skip_kinds = ["system", "revoke"]
//! placeholder_kinds = ["image", "sticker", "voice", ...]   # replies made only of these are dropped
//! min_reply_chars = 1
//! max_reply_chars = 400
//! max_context_chars = 2000
//! dedup = true
//! system_prompt = "你是{self_name}，正在和{contact}聊天"    # optional persona
//! ```

pub mod build;
pub mod params;
pub mod stats;

use anyhow::Context;

use crate::common::jsonl::write_jsonl;
use crate::common::message::Message;
use crate::common::message_table;
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};

pub use build::{Windowed, build_samples};
pub use params::WindowParams;
pub use stats::WindowStats;

pub struct WindowStage;

impl TypedStage for WindowStage {
    type Params = WindowParams;
    const INFO: StageInfo = StageInfo {
        kind: "window",
        version: 2,
        summary: "messages → (context, reply) samples: N prior messages, own bubbles merged with <s>, time-gap sessions, quote pairs",
        inputs: &[InputSpec { name: "messages", required: true, help: "messages.db from normalise" }],
        outputs: &[
            OutputSpec { name: "samples", path: "samples.jsonl", help: "one Sample per line" },
            OutputSpec { name: "stats", path: "window_stats.json", help: "counts kept/dropped and kind mix" },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &WindowParams) -> anyhow::Result<Metrics> {
        let input = ctx.input("messages")?;
        let messages: Vec<Message> = message_table::read(input)?;
        let Windowed { samples, stats } =
            build_samples(&messages, params).with_context(|| format!("windowing {}", input.display()))?;
        write_jsonl(&ctx.output("samples", &Self::INFO)?, &samples)?;
        let stats_path = ctx.output("stats", &Self::INFO)?;
        avatar_engine::fsutil::write_private(&stats_path, serde_json::to_vec_pretty(&stats)?)
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
