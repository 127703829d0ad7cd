//! `export`: train/val/test samples → files other trainers read.
//!
//! Output `export` is a directory:
//! - `wechat_avatar/{train,val,test}.jsonl` (wechat-avatar / Firefly JSONL),
//! - `atom_csv/{train,dev,test}_sft.csv` (Atom / Llama-Chinese),
//! - `sharegpt/{train,val,test}.json` + `sharegpt/dataset_info.json` (LLaMA-Factory),
//! - `chatlab/<conversation>.json` or `chatlab_jsonl/<conversation>.jsonl` (ChatLab v0.0.2:
//!   the cleaned history itself, from input `messages`, for ChatLab-compatible tools),
//! - `export.json`: what was written, with counts.
//!
//! ```toml
//! [stages.export]
//! kind = "export"
//! inputs = { train = "split.train", val = "split.val", test = "split.test" }   # val, test optional
//! formats = ["wechat_avatar", "atom_csv", "sharegpt"]
//! # or the cleaned history for ChatLab tools: inputs = { messages = "normalise.messages" },
//! # formats = ["chatlab"] (or "chatlab_jsonl")
//! dataset_name = "avatar"     # dataset_info.json keys: avatar_train, avatar_val, avatar_test
//! category = "Conversation"
//! include_system = true
//! atom_newline = false        # true: `…\n</s>` as Llama-Chinese's inference template
//! ```
//!
//! Samples whose context ends with the person's own turn cannot alternate human/assistant and
//! are left out (counted as `skipped_not_alternating`).

pub mod atom_csv;
pub mod chatlab;
pub mod dialogue;
pub mod params;
pub mod sharegpt;
pub mod wechat_avatar;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;

use crate::common::jsonl::read_jsonl;
use crate::common::message_table;
use crate::common::sample::Sample;
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};

pub use dialogue::{Dialogue, dialogue};
pub use params::{ExportParams, Format};

pub struct ExportStage;

/// Split name → file names per format (Llama-Chinese calls its validation file `dev`).
const SPLITS: [(&str, &str); 3] = [("train", "train"), ("val", "dev"), ("test", "test")];

impl TypedStage for ExportStage {
    type Params = ExportParams;
    const INFO: StageInfo = StageInfo {
        kind: "export",
        version: 2,
        summary: "samples → wechat-avatar JSONL, Atom/Llama-Chinese CSV, ShareGPT + LLaMA-Factory dataset_info.json; cleaned history → ChatLab JSON/JSONL",
        inputs: &[
            InputSpec { name: "train", required: false, help: "train.jsonl from split (the sample formats)" },
            InputSpec { name: "val", required: false, help: "val.jsonl from split" },
            InputSpec { name: "test", required: false, help: "test.jsonl from split" },
            InputSpec { name: "messages", required: false, help: "messages.db from normalise (the chatlab formats)" },
        ],
        outputs: &[OutputSpec { name: "export", path: "export", help: "one folder per format" }],
    };

    fn run(&self, ctx: &StageContext, params: &ExportParams) -> anyhow::Result<Metrics> {
        params.validate()?;
        let mut inputs = Vec::new();
        let wants_samples = params.formats.iter().any(|f| !f.from_messages());
        for (split, _) in SPLITS {
            let path =
                if split == "train" && wants_samples { Some(ctx.input(split)?) } else { ctx.optional_input(split) };
            if let Some(path) = path {
                inputs.push((split, read_jsonl::<Sample>(path)?));
            }
        }
        let messages = if params.formats.iter().any(|f| f.from_messages()) {
            let path = ctx.optional_input("messages").with_context(|| {
                "formats chatlab / chatlab_jsonl write the cleaned history: set input `messages` (e.g. \"normalise.messages\")"
            })?;
            Some(message_table::read(path)?)
        } else {
            None
        };
        let out = ctx.output("export", &Self::INFO)?;
        let mut summary = export(&out, &inputs, params)?;
        if let Some(messages) = &messages {
            export_chatlab(&out, messages, params, &mut summary)?;
        }
        let mut m = Metrics::new();
        for (split, n) in &summary.written {
            m.insert(format!("{split}_dialogues"), (*n).into());
        }
        m.insert("skipped_not_alternating".into(), summary.skipped_not_alternating.into());
        if messages.is_some() {
            m.insert("chatlab_chats".into(), summary.chatlab_chats.into());
        }
        Ok(m)
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ExportSummary {
    /// Dialogues written per split (the same in every format).
    pub written: BTreeMap<String, u64>,
    pub skipped_not_alternating: u64,
    /// Conversations written as ChatLab files.
    #[serde(skip_serializing_if = "is_zero")]
    pub chatlab_chats: u64,
    pub files: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The ChatLab formats of `params` for the cleaned history; `export.json` is rewritten with them.
pub fn export_chatlab(
    dir: &Path,
    messages: &[crate::common::message::Message],
    params: &ExportParams,
    summary: &mut ExportSummary,
) -> anyhow::Result<()> {
    let chats = chatlab::chats(messages);
    summary.chatlab_chats = chats.len() as u64;
    for format in params.formats.iter().filter(|f| f.from_messages()) {
        for (stem, chat) in &chats {
            let (sub, name, bytes) = match format {
                Format::ChatlabJsonl => ("chatlab_jsonl", format!("{stem}.jsonl"), chatlab::render_jsonl(chat)),
                _ => ("chatlab", format!("{stem}.json"), chatlab::render_json(chat)),
            };
            write(dir, sub, &name, &bytes)?;
            summary.files.push(format!("{sub}/{name}"));
        }
    }
    write(dir, "", "export.json", &serde_json::to_vec_pretty(&summary)?)
}

/// Writes every requested format for the given (split, samples) into `dir`.
pub fn export(dir: &Path, splits: &[(&str, Vec<Sample>)], params: &ExportParams) -> anyhow::Result<ExportSummary> {
    params.validate()?;
    let mut summary = ExportSummary::default();
    let mut dataset_info = serde_json::Map::new();
    for (split, samples) in splits {
        let file_stem = SPLITS.iter().find(|(s, _)| s == split).map(|(_, f)| *f).unwrap_or(split);
        let dialogues: Vec<Dialogue> = samples.par_iter().filter_map(dialogue).collect();
        summary.skipped_not_alternating += (samples.len() - dialogues.len()) as u64;
        summary.written.insert(split.to_string(), dialogues.len() as u64);
        for format in &params.formats {
            let (sub, name, bytes) = match format {
                Format::WechatAvatar => {
                    ("wechat_avatar", format!("{split}.jsonl"), wechat_avatar::render(&dialogues, &params.category))
                }
                Format::AtomCsv => {
                    ("atom_csv", format!("{file_stem}_sft.csv"), atom_csv::render(&dialogues, params.atom_newline)?)
                }
                Format::Sharegpt => {
                    let name = format!("{split}.json");
                    let with_system = params.include_system && dialogues.iter().any(|d| d.system.is_some());
                    dataset_info.insert(
                        format!("{}_{split}", params.dataset_name),
                        sharegpt::dataset_info_entry(&name, with_system),
                    );
                    ("sharegpt", name, sharegpt::render(&dialogues, params.include_system))
                }
                // Written from the message table by `export_chatlab`.
                Format::Chatlab | Format::ChatlabJsonl => continue,
            };
            write(dir, sub, &name, &bytes)?;
            summary.files.push(format!("{sub}/{name}"));
        }
    }
    if params.formats.contains(&Format::Sharegpt) {
        let bytes = serde_json::to_vec_pretty(&dataset_info)?;
        write(dir, "sharegpt", "dataset_info.json", &bytes)?;
        summary.files.push("sharegpt/dataset_info.json".into());
    }
    write(dir, "", "export.json", &serde_json::to_vec_pretty(&summary)?)?;
    Ok(summary)
}

fn write(dir: &Path, sub: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = dir.join(sub);
    avatar_engine::fsutil::create_private_dir(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let path = folder.join(name);
    avatar_engine::fsutil::write_private(&path, bytes).with_context(|| format!("writing {}", path.display()))
}
