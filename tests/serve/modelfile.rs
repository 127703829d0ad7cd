//! The ollama Modelfile quantize writes: its TEMPLATE, rendered here by a small Go-template
//! interpreter for exactly the subset quantize emits, equals avatar's chat template rendering
//! of the same conversation.

use avatar::runtime::{ChatMessage, ChatTemplate};
use avatar::stages::quantize::modelfile::{ChatFormat, LLAMA3_TEMPLATE, modelfile, recognise, template_of};

/// One node of a parsed Go template.
#[derive(Debug)]
enum Node {
    Text(String),
    Field(String),
    If(Vec<(Cond, Vec<Node>)>, Vec<Node>),
    Range(Vec<Node>),
}

#[derive(Debug)]
enum Cond {
    Truthy(String),
    RoleIs(String),
}

/// Split into text and `{{ }}` actions, applying `{{-` / `-}}` whitespace trimming.
fn lex(src: &str) -> Vec<Result<String, String>> {
    let mut out: Vec<Result<String, String>> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let end = rest[start..].find("}}").expect("closed action") + start;
        let mut action = &rest[start + 2..end];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end().to_string();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        out.push(Ok(text));
        out.push(Err(action.trim().to_string()));
        rest = &rest[end + 2..];
    }
    out.push(Ok(if trim_next { rest.trim_start().to_string() } else { rest.to_string() }));
    out
}

fn cond(s: &str) -> Cond {
    if let Some(role) = s.strip_prefix("eq .Role ") {
        return Cond::RoleIs(role.trim_matches('"').to_string());
    }
    assert!(s.starts_with('.') && !s.contains(' '), "condition outside the emitted subset: {s}");
    Cond::Truthy(s[1..].to_string())
}

/// Parse until `end`/`else` at this level; returns the nodes and the closing action.
fn parse(tokens: &mut std::vec::IntoIter<Result<String, String>>) -> (Vec<Node>, Option<String>) {
    let mut nodes = Vec::new();
    while let Some(t) = tokens.next() {
        match t {
            Ok(text) => nodes.push(Node::Text(text)),
            Err(a) if a == "end" || a == "else" || a.starts_with("else if ") => return (nodes, Some(a)),
            Err(a) if a == "range .Messages" => {
                let (body, close) = parse(tokens);
                assert_eq!(close.as_deref(), Some("end"));
                nodes.push(Node::Range(body));
            }
            Err(a) if a.starts_with("if ") => {
                let mut arms = Vec::new();
                let mut c = cond(&a[3..]);
                let mut otherwise = Vec::new();
                loop {
                    let (body, close) = parse(tokens);
                    arms.push((c, body));
                    match close.as_deref() {
                        Some("end") => break,
                        Some("else") => {
                            let (body, close) = parse(tokens);
                            assert_eq!(close.as_deref(), Some("end"));
                            otherwise = body;
                            break;
                        }
                        Some(e) => c = cond(&e["else if ".len()..]),
                        None => panic!("unclosed if"),
                    }
                }
                nodes.push(Node::If(arms, otherwise));
            }
            Err(a) if a.starts_with('.') && !a.contains(' ') => nodes.push(Node::Field(a[1..].to_string())),
            Err(a) => panic!("action outside the emitted subset: {a}"),
        }
    }
    (nodes, None)
}

struct Scope<'a> {
    system: &'a str,
    message: Option<&'a ChatMessage>,
}

fn field(name: &str, s: &Scope) -> String {
    match (name, s.message) {
        ("System", _) => s.system.to_string(),
        ("Role", Some(m)) => m.role.clone(),
        ("Content", Some(m)) => m.content.clone(),
        _ => panic!("field .{name} outside its scope"),
    }
}

fn exec(nodes: &[Node], messages: &[ChatMessage], s: &Scope, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Field(f) => out.push_str(&field(f, s)),
            Node::Range(body) => {
                for m in messages {
                    exec(body, messages, &Scope { system: s.system, message: Some(m) }, out);
                }
            }
            Node::If(arms, otherwise) => {
                let hit = arms.iter().find(|(c, _)| match c {
                    Cond::Truthy(f) => !field(f, s).is_empty(),
                    Cond::RoleIs(r) => s.message.is_some_and(|m| &m.role == r),
                });
                exec(hit.map(|(_, b)| b.as_slice()).unwrap_or(otherwise), messages, s, out);
            }
        }
    }
}

/// Render as ollama does for a chat request: system messages are joined into `.System` and
/// also stay in `.Messages`; the Modelfile's SYSTEM is prepended when the chat has none.
fn ollama_render(go: &str, default_system: Option<&str>, messages: &[ChatMessage]) -> String {
    let mut msgs = messages.to_vec();
    if msgs.first().is_none_or(|m| m.role != "system")
        && let Some(s) = default_system
    {
        msgs.insert(0, ChatMessage::new("system", s));
    }
    let system: Vec<&str> = msgs.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let system = system.join("\n\n");
    let (nodes, close) = parse(&mut lex(go).into_iter());
    assert!(close.is_none(), "stray {close:?}");
    let mut out = String::new();
    exec(&nodes, &msgs, &Scope { system: &system, message: None }, &mut out);
    out
}

fn two_turns(system: bool) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if system {
        m.push(ChatMessage::new("system", "你是小王,说话简短"));
    }
    m.push(ChatMessage::new("user", "在吗"));
    m.push(ChatMessage::new("assistant", "在的<s>咋了"));
    m.push(ChatMessage::new("user", "周末有空吗 😂\n出来玩"));
    m
}

/// The Modelfile's template renders what avatar's template renders (BOS aside: llama.cpp adds
/// it when tokenizing, so ollama's prompt text has none).
fn assert_same_prompt(t: &ChatTemplate, expect: ChatFormat) {
    let (file, recognised) = modelfile("model-q4_0.gguf", t).unwrap();
    let r = recognised.unwrap_or_else(|| panic!("{expect:?} not recognised"));
    assert_eq!(r.format, expect);
    assert!(file.contains("FROM ./model-q4_0.gguf\n"), "{file}");
    let go = template_of(&file).expect("TEMPLATE in the Modelfile");
    let system = file.split("SYSTEM \"\"\"").nth(1).map(|s| s.split("\"\"\"").next().unwrap());
    assert_eq!(system, r.default_system.as_deref());
    for with_system in [true, false] {
        let msgs = two_turns(with_system);
        let ours = t.render(&msgs, true).unwrap();
        let ours = ours.strip_prefix(t.bos_token.as_str()).unwrap_or(&ours);
        assert_eq!(ollama_render(go, system, &msgs), ours, "{expect:?}, system: {with_system}");
    }
}

#[test]
fn chatml_modelfile_renders_avatars_prompt() {
    let t = ChatTemplate::chatml();
    assert_same_prompt(&t, ChatFormat::ChatMl);
    let (file, _) = modelfile("model-q4_0.gguf", &t).unwrap();
    assert!(file.contains("PARAMETER stop \"<|im_end|>\"\n") && file.contains("PARAMETER temperature 0.8\n"), "{file}");
    assert!(!file.contains("SYSTEM"));
}

#[test]
fn llama3_modelfile_renders_avatars_prompt() {
    let t = ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    assert_same_prompt(&t, ChatFormat::Llama3);
    assert!(modelfile("m.gguf", &t).unwrap().0.contains("PARAMETER stop \"<|eot_id|>\"\n"));
}

/// Qwen2.5-Instruct's template (tool branches left out): ChatML with a default system prompt.
const QWEN25: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"#;

#[test]
fn default_system_prompt_becomes_the_modelfile_system() {
    let t = ChatTemplate::new(QWEN25, "", "<|im_end|>").unwrap();
    let r = recognise(&t).unwrap();
    assert_eq!(
        r.default_system.as_deref(),
        Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    );
    assert_same_prompt(&t, ChatFormat::ChatMl);
}

#[test]
fn unknown_template_gets_no_template_line() {
    let t = ChatTemplate::new(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        "",
        "</assistant>",
    )
    .unwrap();
    let (file, recognised) = modelfile("m.gguf", &t).unwrap();
    assert!(recognised.is_none());
    assert!(!file.lines().any(|l| l.starts_with("TEMPLATE")) && file.contains("neither ChatML nor Llama 3"), "{file}");
    assert!(file.contains("PARAMETER stop \"</assistant>\"\n"), "{file}");
}
