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
    source: String,
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
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned("chat", source.to_string()).context("compiling the chat template")?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("the built-in template compiles")
    }

    /// A built-in format by name ([`super::chat_formats::BUILTIN_NAMES`]).
    pub fn builtin(name: &str) -> anyhow::Result<ChatTemplate> {
        let (source, bos, eos) = super::chat_formats::builtin(name).with_context(|| {
            format!("chat_template `{name}`: expected one of {:?}", super::chat_formats::BUILTIN_NAMES)
        })?;
        ChatTemplate::new(source, bos, eos).with_context(|| format!("built-in chat template `{name}`"))
    }

    /// The Jinja source, to write into merged folders (chat_template.jinja) and GGUF files.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// tokenizer_config.json's template, or `None` when it has none.
    pub fn from_tokenizer_config_if_any(path: &Path) -> anyhow::Result<Option<ChatTemplate>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        if v.get("chat_template").is_none_or(|t| t.is_null()) {
            return Ok(None);
        }
        Self::from_tokenizer_config(path).map(Some)
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

/// transformers' `strftime_now(format)`: the local time in a Python strftime format (Llama 3.x
/// and Granite templates write today's date into the system prompt).
fn strftime_now(format: String) -> Result<Value, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: bad format `{format}`")));
    }
    Ok(Value::from(chrono::Local::now().format_with_items(items.into_iter()).to_string()))
}

/// transformers' `tojson` (json.dumps with ensure_ascii=False): no HTML escaping, and the
/// keyword arguments templates pass (`indent`, `ensure_ascii`, `separators`, `sort_keys`).
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, m);
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| bad(format!("tojson: {e}")))?;
    // serde_json's maps are sorted by key, so `sort_keys` holds either way.
    let _ = sort_keys;
    let (item_sep, key_sep) = match &separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => return Err(bad("tojson: separators must be a pair".into())),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    write_json(&json, indent, 0, &item_sep, &key_sep, ensure_ascii == Some(true), &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python's json.dumps layout: `", "` / `": "` separators, `indent` newlines.
fn write_json(
    v: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    item: &str,
    key: &str,
    ascii: bool,
    out: &mut String,
) {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let item = if indent.is_some() { item.trim_end() } else { item };
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, depth + 1);
                write_str(k, ascii, out);
                out.push_str(key);
                write_json(val, indent, depth + 1, item, key, ascii, out);
            }
            newline(out, depth);
            out.push('}');
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, val) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, depth + 1);
                write_json(val, indent, depth + 1, item, key, ascii, out);
            }
            newline(out, depth);
            out.push(']');
        }
        serde_json::Value::String(s) => write_str(s, ascii, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_str(s: &str, ascii: bool, out: &mut String) {
    let json = serde_json::to_string(s).expect("a string serialises");
    if !ascii {
        out.push_str(&json);
        return;
    }
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
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

    #[test]
    fn transformers_template_environment() {
        // strftime_now: today's date, as Llama 3.2's template writes it.
        let t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), chrono::Local::now().format("%d %b %Y").to_string());
        assert!(ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").unwrap().render(&[], false).is_err());
        // tojson as json.dumps(ensure_ascii=False): no HTML escaping, indent, ensure_ascii.
        let t = ChatTemplate::new("{{ {'a': '<b>中', 'n': [1, 2]} | tojson }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), r#"{"a": "<b>中", "n": [1, 2]}"#);
        let t = ChatTemplate::new("{{ {'a': [1]} | tojson(indent=2) }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "{\n  \"a\": [\n    1\n  ]\n}");
        let t = ChatTemplate::new("{{ '中' | tojson(ensure_ascii=True) }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), r#""\u4e2d""#);
        assert!(ChatTemplate::new("{{ 1 | tojson(bogus=1) }}", "", "").unwrap().render(&[], false).is_err());
    }

    #[test]
    fn builtin_formats_extend_the_prompt_with_the_reply() {
        let msgs = [
            ChatMessage::new("system", "你是小明"),
            ChatMessage::new("user", "在吗"),
            ChatMessage::new("assistant", "在"),
            ChatMessage::new("user", "吃了吗"),
            ChatMessage::new("user", "一起"),
        ];
        for name in super::super::chat_formats::BUILTIN_NAMES {
            let t = ChatTemplate::builtin(name).unwrap();
            let prompt = t.render(&msgs, true).unwrap();
            let mut full = msgs.to_vec();
            full.push(ChatMessage::new("assistant", "好"));
            let whole = t.render(&full, false).unwrap();
            assert!(whole.starts_with(&prompt) && whole.len() > prompt.len(), "{name}: {prompt:?} / {whole:?}");
            assert_eq!(t.source(), super::super::chat_formats::builtin(name).unwrap().0);
        }
        let atom = ChatTemplate::builtin("atom").unwrap();
        assert_eq!(atom.render(&msgs[1..3], false).unwrap(), "<s>Human: 在吗\n</s><s>Assistant: 在</s>");
        assert_eq!(atom.render(&msgs[..2], true).unwrap(), "<s>Human: 你是小明\n在吗\n</s><s>Assistant: ");
        let glm3 = ChatTemplate::builtin("chatglm3").unwrap();
        assert_eq!(
            glm3.render(&msgs[..3], false).unwrap(),
            "[gMASK]sop<|system|>\n 你是小明<|user|>\n 在吗<|assistant|>\n 在</s>"
        );
        let glm2 = ChatTemplate::builtin("chatglm2").unwrap();
        assert_eq!(
            glm2.render(&msgs, true).unwrap(),
            "[gMASK]sop[Round 1]\n\n问：你是小明\n在吗\n\n答：在\n\n[Round 2]\n\n问：吃了吗\n一起\n\n答："
        );
    }
}
