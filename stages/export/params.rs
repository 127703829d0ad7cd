//! Parameters of the `export` stage.

use serde::{Deserialize, Serialize};

/// Formats other trainers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// wechat-avatar / Firefly JSONL: `{conversation_id, category, conversation:[{human, assistant}]}`.
    WechatAvatar,
    /// Atom / Llama-Chinese CSV, one `text` column: `<s>Human: …</s><s>Assistant: …</s>`.
    AtomCsv,
    /// ShareGPT JSON with a LLaMA-Factory `dataset_info.json`.
    Sharegpt,
    /// ChatLab v0.0.2 JSON, one file per conversation of the cleaned history (input `messages`).
    Chatlab,
    /// ChatLab v0.0.2 JSONL (header, member and message lines), for large histories.
    ChatlabJsonl,
}

impl Format {
    /// True for the formats written from the cleaned message table rather than samples.
    pub fn from_messages(self) -> bool {
        matches!(self, Format::Chatlab | Format::ChatlabJsonl)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportParams {
    pub formats: Vec<Format>,
    /// Prefix of the dataset names in `dataset_info.json` (`<name>_train`, …).
    pub dataset_name: String,
    /// `category` field of the wechat-avatar records.
    pub category: String,
    /// Write the sample's persona/system prompt where the format has a slot (ShareGPT).
    pub include_system: bool,
    /// Atom CSV: end each turn with `\n</s>` (Llama-Chinese's inference template) instead of `</s>`.
    pub atom_newline: bool,
}

impl Default for ExportParams {
    fn default() -> Self {
        ExportParams {
            formats: vec![Format::WechatAvatar, Format::AtomCsv, Format::Sharegpt],
            dataset_name: "avatar".to_string(),
            category: "Conversation".to_string(),
            include_system: true,
            atom_newline: false,
        }
    }
}

impl ExportParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.formats.is_empty() {
            anyhow::bail!(
                "param `formats` is empty: name at least one of wechat_avatar, atom_csv, sharegpt, chatlab, chatlab_jsonl"
            );
        }
        let ok = !self.dataset_name.is_empty()
            && self.dataset_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            anyhow::bail!("param `dataset_name` must be non-empty ASCII letters, digits, `_` or `-`");
        }
        Ok(())
    }
}
