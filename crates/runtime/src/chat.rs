//! Chat formatting: the model's chat template (tokenizer_config.json, rendered with minijinja),
//! OpenAI-style message lists for serving, and training samples → token ids + a loss mask that
//! covers only the reply.

use std::path::Path;

use anyhow::{Context, bail};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;
use avatar_core::sample::{Role, Sample};

/// ChatML, the template of Qwen and of the scratch base.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.to_string(), content: content.into() }
    }
}

/// A compiled chat template with the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

/// Token ids of one training sample and which of them the loss covers.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSample {
    pub ids: Vec<u32>,
    /// `mask[i]`: token `i` is part of the reply (predicted and counted in the loss).
    pub mask: Vec<bool>,
}

fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> anyhow::Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned("chat", source.to_string()).context("compiling the chat template")?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    pub fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("the built-in template compiles")
    }

    /// Read `chat_template`, `bos_token`, `eos_token` from tokenizer_config.json; ChatML when the
    /// file has no template.
    pub fn from_tokenizer_config(path: &Path) -> anyhow::Result<ChatTemplate> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                .with_context(|| format!("{}: chat_template list has no \"default\" entry", path.display()))?
                .to_string(),
            _ => CHATML_TEMPLATE.to_string(),
        };
        let mut eos = token_string(v.get("eos_token"));
        if eos.is_empty() {
            eos = "<|im_end|>".into();
        }
        ChatTemplate::new(&template, &token_string(v.get("bos_token")), &eos)
            .with_context(|| format!("{}: field `chat_template`", path.display()))
    }

    /// The prompt text for `messages`; `add_generation_prompt` appends the assistant header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> anyhow::Result<String> {
        let tmpl = self.env.get_template("chat")?;
        let out = tmpl
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .context("rendering the chat template")?;
        Ok(out)
    }

    /// Messages of a training sample, without the reply. Group-chat turns read `名字:内容`.
    pub fn sample_messages(sample: &Sample) -> Vec<ChatMessage> {
        let mut msgs = Vec::with_capacity(sample.context.len() + 1);
        if let Some(system) = sample.system.as_deref().filter(|s| !s.is_empty()) {
            msgs.push(ChatMessage::new("system", system));
        }
        for turn in &sample.context {
            let role = match turn.role {
                Role::Other => "user",
                Role::Self_ => "assistant",
            };
            let content = match (&turn.speaker, turn.role, sample.is_group) {
                (Some(name), Role::Other, true) => format!("{name}:{}", turn.text),
                _ => turn.text.clone(),
            };
            msgs.push(ChatMessage::new(role, content));
        }
        msgs
    }

    /// Prompt ids for a sample's context, ending with the assistant header. When longer than
    /// `max_len`, the oldest context turns are dropped first (the system prompt and the last
    /// turn stay), then the oldest tokens.
    pub fn encode_prompt(&self, tokenizer: &Tokenizer, sample: &Sample, max_len: usize) -> anyhow::Result<Vec<u32>> {
        let mut msgs = Self::sample_messages(sample);
        let first_turn = usize::from(msgs.first().is_some_and(|m| m.role == "system"));
        loop {
            let ids = tokenizer.encode(&self.render(&msgs, true)?)?;
            if ids.len() <= max_len || msgs.len() <= first_turn + 1 {
                return Ok(ids[ids.len().saturating_sub(max_len)..].to_vec());
            }
            msgs.remove(first_turn);
        }
    }

    /// Token ids and loss mask of a sample. When longer than `max_len`, the oldest context turns
    /// are dropped first, then the reply is cut. `None` when not even one reply token fits.
    pub fn encode_sample(
        &self,
        tokenizer: &Tokenizer,
        sample: &Sample,
        max_len: usize,
    ) -> anyhow::Result<Option<EncodedSample>> {
        let mut msgs = Self::sample_messages(sample);
        let first_turn = usize::from(msgs.first().is_some_and(|m| m.role == "system"));
        loop {
            let prompt = self.render(&msgs, true)?;
            let mut full_msgs = msgs.clone();
            full_msgs.push(ChatMessage::new("assistant", sample.reply.clone()));
            let full = self.render(&full_msgs, false)?;
            let Some(completion) = full.strip_prefix(&prompt) else {
                bail!("the chat template renders the reply in a way that does not extend the prompt");
            };
            // The end-of-turn token is learned; trailing whitespace after it is not.
            let completion = completion.trim_end();
            let prompt_ids = tokenizer.encode(&prompt)?;
            let reply_ids = tokenizer.encode(completion)?;
            if prompt_ids.len() + reply_ids.len() <= max_len || msgs.len() <= first_turn {
                let room = max_len.saturating_sub(prompt_ids.len());
                if room == 0 || reply_ids.is_empty() {
                    return Ok(None);
                }
                let reply_ids = &reply_ids[..reply_ids.len().min(room)];
                let mut ids = prompt_ids.clone();
                ids.extend_from_slice(reply_ids);
                let mut mask = vec![false; prompt_ids.len()];
                mask.resize(ids.len(), true);
                return Ok(Some(EncodedSample { ids, mask }));
            }
            msgs.remove(first_turn);
        }
    }
}

/// The few Python string/dict methods HF chat templates call.
fn python_methods(
    _: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let unknown = || Err(minijinja::Error::from(ErrorKind::UnknownMethod));
    if let Some(s) = value.as_str() {
        let arg = |i: usize| args.get(i).and_then(|a| a.as_str().map(str::to_string));
        return match method {
            "strip" => Ok(Value::from(match arg(0) {
                Some(c) => s.trim_matches(|x| c.contains(x)).to_string(),
                None => s.trim().to_string(),
            })),
            "lstrip" => Ok(Value::from(match arg(0) {
                Some(c) => s.trim_start_matches(|x| c.contains(x)).to_string(),
                None => s.trim_start().to_string(),
            })),
            "rstrip" => Ok(Value::from(match arg(0) {
                Some(c) => s.trim_end_matches(|x| c.contains(x)).to_string(),
                None => s.trim_end().to_string(),
            })),
            "startswith" => Ok(Value::from(arg(0).is_some_and(|p| s.starts_with(&p)))),
            "endswith" => Ok(Value::from(arg(0).is_some_and(|p| s.ends_with(&p)))),
            "upper" => Ok(Value::from(s.to_uppercase())),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "replace" => match (arg(0), arg(1)) {
                (Some(a), Some(b)) => Ok(Value::from(s.replace(&a, &b))),
                _ => unknown(),
            },
            "split" => Ok(Value::from(match arg(0) {
                Some(sep) => s.split(sep.as_str()).map(str::to_string).collect::<Vec<_>>(),
                None => s.split_whitespace().map(str::to_string).collect::<Vec<_>>(),
            })),
            _ => unknown(),
        };
    }
    if value.kind() == minijinja::value::ValueKind::Map {
        return match method {
            "items" => {
                let mut out = Vec::new();
                for key in value.try_iter()? {
                    let v = value.get_item(&key)?;
                    out.push(Value::from(vec![key, v]));
                }
                Ok(Value::from(out))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() { args.get(1).cloned().unwrap_or(Value::from(())) } else { v })
            }
            _ => unknown(),
        };
    }
    unknown()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_and_python_methods_work() {
        let t = ChatTemplate::chatml();
        let out = t.render(&[ChatMessage::new("system", "你是我"), ChatMessage::new("user", "在吗")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\n你是我<|im_end|>\n<|im_start|>user\n在吗<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip() }}{% if m.role.startswith('us') %}!{% endif %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi ")], false).unwrap(), "hi!");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(t.render(&[], false).is_err());
    }
}
