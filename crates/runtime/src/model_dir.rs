//! What a model folder's tokenizer and chat-template files mean, read the same way by every
//! stage: tokenizer.json, else a tokenizer.model: GLM-4's tiktoken ranks or a SentencePiece
//! model (with ChatGLM's extra specials and tokenizer_config.json's added tokens); the chat template from the pipeline's
//! `chat_template` setting, else chat_template.jinja (transformers 5), else
//! tokenizer_config.json, else the family's own format.

use std::path::Path;

use anyhow::{Context, bail};

use super::chat::ChatTemplate;
use super::chat_formats;
use super::spm::SpmModel;
use super::tokenizer::{SpmTokenizer, Tokenizer};

/// ChatGLM2's specials after the SentencePiece pieces (tokenization_chatglm.py), and
/// ChatGLM3's role tokens after those.
const CHATGLM_SPECIALS: [&str; 5] = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
const CHATGLM3_ROLES: [&str; 4] = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"];

/// A chat template chosen in the manifest: a built-in name or a .jinja file.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateChoice {
    Builtin(String),
    File(std::path::PathBuf),
}

impl TemplateChoice {
    /// The pipeline's `chat_template` value ("" = the model's own).
    pub fn parse(value: &str) -> anyhow::Result<Option<TemplateChoice>> {
        if value.is_empty() {
            return Ok(None);
        }
        if chat_formats::builtin(value).is_some() {
            return Ok(Some(TemplateChoice::Builtin(value.to_string())));
        }
        if value.ends_with(".jinja") {
            return Ok(Some(TemplateChoice::File(value.into())));
        }
        bail!("chat_template `{value}`: expected one of {:?} or a path to a .jinja file", chat_formats::BUILTIN_NAMES)
    }
}

fn read_json(path: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map(Some).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Whether the folder holds a ChatGLM model (config.json's model_type or the tokenizer class).
fn is_chatglm(dir: &Path) -> anyhow::Result<bool> {
    let mt = read_json(&dir.join("config.json"))?.and_then(|c| c["model_type"].as_str().map(str::to_string));
    let tc =
        read_json(&dir.join("tokenizer_config.json"))?.and_then(|c| c["tokenizer_class"].as_str().map(str::to_string));
    Ok(mt.as_deref() == Some("chatglm") || tc.as_deref() == Some("ChatGLMTokenizer"))
}

/// ChatGLM3 (role tokens) rather than ChatGLM2: its tokenizer code or config names `<|user|>`.
fn is_chatglm3(dir: &Path) -> bool {
    ["tokenization_chatglm.py", "tokenizer_config.json"]
        .iter()
        .any(|f| std::fs::read_to_string(dir.join(f)).is_ok_and(|t| t.contains("<|user|>")))
}

/// The folder's tokenizer: tokenizer.json, else tokenizer.model (GLM-4's tiktoken ranks or a
/// SentencePiece model).
pub fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json);
    }
    let model_path = dir.join("tokenizer.model");
    if !model_path.is_file() {
        bail!("{}: neither tokenizer.json nor a tokenizer.model", dir.display());
    }
    if let Some(value) = tiktoken_json(dir)? {
        let inner: tokenizers::Tokenizer = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: building the BPE tokenizer", model_path.display()))?;
        return Ok(Tokenizer::from_inner(inner));
    }
    let model = SpmModel::from_file(&model_path)?;
    let mut extra: Vec<(String, u32)> = Vec::new();
    if is_chatglm(dir)? {
        let roles: &[&str] = if is_chatglm3(dir) { &CHATGLM3_ROLES } else { &[] };
        for (i, t) in CHATGLM_SPECIALS.iter().chain(roles).enumerate() {
            extra.push((t.to_string(), (model.len() + i) as u32));
        }
    }
    for (content, id) in added_tokens(dir)? {
        if !extra.iter().any(|(c, i)| *c == content && *i == id) {
            extra.push((content, id));
        }
    }
    let spm = SpmTokenizer::new(model, &extra).with_context(|| format!("{}", model_path.display()))?;
    Ok(Tokenizer::from_spm(spm))
}

/// When the folder's tokenizer.model holds tiktoken ranks (GLM-4-9B-Chat), its tokenizer.json
/// value ([`super::tiktoken`]), with tokenizer_config.json's added tokens as specials.
pub fn tiktoken_json(dir: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer.model");
    let head = match std::fs::File::open(&path) {
        Ok(f) => {
            use std::io::Read;
            let mut buf = Vec::with_capacity(512);
            f.take(512).read_to_end(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            buf
        }
        Err(_) => return Ok(None),
    };
    if !super::tiktoken::looks_like_tiktoken(&head) {
        return Ok(None);
    }
    super::tiktoken::load_json(&path, &added_tokens(dir)?).map(Some)
}

/// tokenizer_config.json's `added_tokens_decoder` as (text, id) (transformers writes every
/// special there).
fn added_tokens(dir: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    let tc_path = dir.join("tokenizer_config.json");
    let mut out = Vec::new();
    let Some(tc) = read_json(&tc_path)? else { return Ok(out) };
    for (id, t) in tc["added_tokens_decoder"].as_object().into_iter().flatten() {
        let id: u32 = id
            .parse()
            .with_context(|| format!("{}: added_tokens_decoder key `{id}` is not an id", tc_path.display()))?;
        let content = t["content"]
            .as_str()
            .with_context(|| format!("{}: added_tokens_decoder.{id} has no `content`", tc_path.display()))?;
        out.push((content.to_string(), id));
    }
    Ok(out)
}

/// The built-in format for a folder without a template: ChatGLM's, Atom's for a SentencePiece
/// Llama (Atom-7B-Chat, Llama-Chinese), ChatML otherwise.
pub fn family_default(dir: &Path, tokenizer: &Tokenizer) -> anyhow::Result<&'static str> {
    if is_chatglm(dir)? {
        return Ok(if is_chatglm3(dir) { "chatglm3" } else { "chatglm2" });
    }
    if tokenizer.spm().is_some() && tokenizer.token_to_id("<|im_start|>").is_none() {
        return Ok("atom");
    }
    Ok("chatml")
}

/// The chat template for the model in `dir`; `choice` (the pipeline's setting) wins.
pub fn load_template(
    dir: &Path,
    tokenizer: &Tokenizer,
    choice: Option<&TemplateChoice>,
) -> anyhow::Result<ChatTemplate> {
    match choice {
        Some(TemplateChoice::Builtin(name)) => return ChatTemplate::builtin(name),
        Some(TemplateChoice::File(path)) => {
            let source =
                std::fs::read_to_string(path).with_context(|| format!("reading chat template {}", path.display()))?;
            let (bos, eos) = special_strings(dir, tokenizer)?;
            return ChatTemplate::new(&source, &bos, &eos).with_context(|| format!("{}", path.display()));
        }
        None => {}
    }
    let tc = dir.join("tokenizer_config.json");
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source = std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?;
        let (bos, eos) = special_strings(dir, tokenizer)?;
        return ChatTemplate::new(&source, &bos, &eos).with_context(|| format!("{}", jinja.display()));
    }
    if tc.is_file()
        && let Some(t) = ChatTemplate::from_tokenizer_config_if_any(&tc)?
    {
        return Ok(t);
    }
    ChatTemplate::builtin(family_default(dir, tokenizer)?)
}

/// A template from its source, with the folder's bos/eos strings.
pub fn template_from_source(dir: &Path, tokenizer: &Tokenizer, source: &str) -> anyhow::Result<ChatTemplate> {
    let (bos, eos) = special_strings(dir, tokenizer)?;
    ChatTemplate::new(source, &bos, &eos)
}

/// Whether tokenizer_config.json (if there is one) carries a chat template.
pub fn tokenizer_config_has_template(path: &Path) -> anyhow::Result<bool> {
    Ok(read_json(path)?.is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null())))
}

/// bos/eos strings for a template: tokenizer_config.json's, else the SentencePiece model's.
fn special_strings(dir: &Path, tokenizer: &Tokenizer) -> anyhow::Result<(String, String)> {
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(serde_json::Value::Null);
    let s = |k: &str| tc[k].as_str().or_else(|| tc[k]["content"].as_str()).map(str::to_string);
    let spm_piece = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let bos = s("bos_token").or_else(|| spm_piece(tokenizer.spm().and_then(|t| t.model().bos_id))).unwrap_or_default();
    let eos = s("eos_token")
        .or_else(|| spm_piece(tokenizer.spm().and_then(|t| t.model().eos_id)))
        .unwrap_or_else(|| "<|im_end|>".into());
    Ok((bos, eos))
}

/// Files besides weights and config that travel with a model folder (merged models, quantize
/// and serve outputs).
pub const TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// The Python files `auto_map` in `from`'s config.json and tokenizer_config.json names (ChatGLM's
/// modeling_chatglm.py, configuration_chatglm.py, tokenization_chatglm.py): copied into `to` so
/// transformers' `trust_remote_code=True` loads a merged folder as it loads the base. Returns
/// the file names copied; a module name that is not a plain Python path is an error naming it.
pub fn copy_remote_code(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = std::collections::BTreeSet::new();
    for name in ["config.json", "tokenizer_config.json"] {
        let Some(json) = read_json(&from.join(name))? else { continue };
        let Some(map) = json["auto_map"].as_object() else { continue };
        let refs = map.values().flat_map(|v| match v {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>(),
            other => other.as_str().into_iter().collect(),
        });
        for r in refs {
            // "module.Class", or "owner/repo--module.Class" when it points into another repo.
            let local = r.rsplit("--").next().unwrap_or(r);
            let Some((module, _class)) = local.rsplit_once('.') else {
                bail!("{}: auto_map entry `{r}` is not `module.Class`", from.join(name).display());
            };
            let plain = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !module.split('.').all(plain) {
                bail!("{}: auto_map module `{module}` is not a Python module path", from.join(name).display());
            }
            files.insert(format!("{}.py", module.replace('.', "/")));
        }
    }
    let mut copied = Vec::new();
    for f in files {
        let src = from.join(&f);
        if src.is_file() {
            let dst = to.join(&f);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            copied.push(f);
        }
    }
    Ok(copied)
}

/// Copy the tokenizer files of `from` into `to`; returns the names copied.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).with_context(|| format!("copying {}", src.display()))?;
            copied.push(f);
        }
    }
    Ok(copied)
}
