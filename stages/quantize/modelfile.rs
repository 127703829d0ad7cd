//! An ollama `Modelfile` beside each GGUF: `FROM ./<file>.gguf`, the model's chat template as an
//! ollama (Go) template, its stop tokens, and avatar serve's default sampling.
//!
//! The chat template is recognised, not translated: the model's own template renders probe
//! conversations, and when they equal ChatML's (Qwen, the scratch base) or Llama 3's rendering,
//! the matching Go template is written. A template that renders a default system prompt when
//! the conversation has none (Qwen2.5's) becomes the Modelfile's `SYSTEM`. Anything else gets a
//! Modelfile without `TEMPLATE`, and a comment saying so.

use avatar_runtime::chat::{ChatMessage, ChatTemplate};
use avatar_runtime::sampling::SamplingParams;

/// Llama 3's chat format, as its tokenizer_config.json renders it (system turn optional).
pub const LLAMA3_TEMPLATE: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

/// System messages reach ollama's template as `.System` (ollama also keeps them in
/// `.Messages`, so the range skips them); the generation header always follows the last turn.
const CHATML_GO: &str = r#"{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"#;

/// Without `<|begin_of_text|>`: llama.cpp adds BOS when it tokenizes the prompt.
const LLAMA3_GO: &str = r#"{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    ChatMl,
    Llama3,
}

impl ChatFormat {
    pub fn name(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => "chatml",
            ChatFormat::Llama3 => "llama3",
        }
    }

    /// The ollama template of this format.
    pub fn go_template(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => CHATML_GO,
            ChatFormat::Llama3 => LLAMA3_GO,
        }
    }

    fn reference(self) -> ChatTemplate {
        match self {
            ChatFormat::ChatMl => ChatTemplate::chatml(),
            ChatFormat::Llama3 => ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")
                .expect("the built-in template compiles"),
        }
    }

    fn stops(self) -> &'static [&'static str] {
        match self {
            ChatFormat::ChatMl => &["<|im_end|>", "<|endoftext|>"],
            ChatFormat::Llama3 => &["<|eot_id|>", "<|end_of_text|>"],
        }
    }
}

/// What the model's template was recognised as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    pub format: ChatFormat,
    /// The system prompt the template adds when a conversation has none.
    pub default_system: Option<String>,
}

fn probe(system: Option<&str>) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage::new("system", s));
    }
    m.push(ChatMessage::new("user", "在吗?\nprobe one"));
    m.push(ChatMessage::new("assistant", "在的 probe two"));
    m.push(ChatMessage::new("user", "probe three"));
    m
}

/// Render with BOS text removed: ollama's prompt leaves BOS to the tokenizer.
fn render(t: &ChatTemplate, msgs: &[ChatMessage]) -> Option<String> {
    let text = t.render(msgs, true).ok()?;
    Some(match text.strip_prefix(t.bos_token.as_str()) {
        Some(rest) if !t.bos_token.is_empty() => rest.to_string(),
        _ => text,
    })
}

/// Which supported format `template` renders, if any.
pub fn recognise(template: &ChatTemplate) -> Option<Recognised> {
    for format in [ChatFormat::ChatMl, ChatFormat::Llama3] {
        let reference = format.reference();
        let with_system = probe(Some("probe system"));
        if render(template, &with_system)? != render(&reference, &with_system)? {
            continue;
        }
        let bare = probe(None);
        let got = render(template, &bare)?;
        if got == render(&reference, &bare)? {
            return Some(Recognised { format, default_system: None });
        }
        // A default system prompt: find it by rendering the reference with the candidate.
        let (open, close) = match format {
            ChatFormat::ChatMl => ("<|im_start|>system\n", "<|im_end|>"),
            ChatFormat::Llama3 => ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        };
        let candidate = got.strip_prefix(open).and_then(|r| r.split_once(close)).map(|(s, _)| s.to_string())?;
        if render(&reference, &probe(Some(&candidate)))? == got {
            return Some(Recognised { format, default_system: Some(candidate) });
        }
    }
    None
}

/// A Go-template string literal for the Modelfile: `"""…"""` cannot hold `"""`, so such text
/// is refused rather than written broken.
fn triple_quoted(s: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!s.contains("\"\"\""), "text contains `\"\"\"`, which a Modelfile cannot quote");
    Ok(format!("\"\"\"{s}\"\"\""))
}

/// The Modelfile for `gguf_file` (a name in the same directory).
pub fn modelfile(gguf_file: &str, template: &ChatTemplate) -> anyhow::Result<(String, Option<Recognised>)> {
    let recognised = recognise(template);
    let mut out = format!("# ollama create <name> -f <this file>\nFROM ./{gguf_file}\n");
    let mut stops: Vec<String> = Vec::new();
    match &recognised {
        Some(r) => {
            out.push_str(&format!("TEMPLATE {}\n", triple_quoted(r.format.go_template())?));
            if let Some(system) = &r.default_system {
                out.push_str(&format!("SYSTEM {}\n", triple_quoted(system)?));
            }
            stops.extend(r.format.stops().iter().map(|s| s.to_string()));
        }
        None => out.push_str(
            "# The model's chat template is neither ChatML nor Llama 3: no TEMPLATE is written, so\n\
             # ollama uses the one it derives from the GGUF's tokenizer.chat_template.\n",
        ),
    }
    if !template.eos_token.is_empty() && !stops.contains(&template.eos_token) {
        stops.push(template.eos_token.clone());
    }
    for s in &stops {
        out.push_str(&format!("PARAMETER stop {}\n", serde_json::to_string(s)?));
    }
    // avatar serve's defaults, so a clone sounds the same on both servers.
    let d = SamplingParams::default();
    out.push_str(&format!(
        "PARAMETER temperature {}\nPARAMETER top_p {}\nPARAMETER top_k {}\nPARAMETER repeat_penalty {}\n",
        d.temperature, d.top_p, d.top_k, d.repetition_penalty
    ));
    Ok((out, recognised))
}

/// The template as written in a Modelfile produced by [`modelfile`], for tests and tools that
/// read one back.
pub fn template_of(modelfile: &str) -> Option<&str> {
    let start = modelfile.find("TEMPLATE \"\"\"")? + "TEMPLATE \"\"\"".len();
    let len = modelfile[start..].find("\"\"\"")?;
    Some(&modelfile[start..start + len])
}
