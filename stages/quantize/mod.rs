//! `quantize`: merged HF-layout weights → one GGUF file per requested type, loadable by
//! llama.cpp, ollama and our own server. The tokenizer files are copied next to the GGUFs so
//! the server tokenizes exactly as training did, and an ollama Modelfile beside each GGUF.

pub mod modelfile;

use serde::{Deserialize, Serialize};

use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_quant as quant;
use avatar_runtime::model_dir::{copy_tokenizer_files, load_template, load_tokenizer};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizeParams {
    /// llama.cpp type names: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k. K-quants fall
    /// back to q8_0 per tensor whose rows are not a multiple of 256.
    pub types: Vec<String>,
    /// File stem: `<name>-<type>.gguf`.
    pub name: String,
}

impl Default for QuantizeParams {
    fn default() -> Self {
        Self { types: vec!["q8_0".into(), "q4_0".into()], name: "model".into() }
    }
}

pub struct QuantizeStage;

impl TypedStage for QuantizeStage {
    type Params = QuantizeParams;
    const INFO: StageInfo = StageInfo {
        kind: "quantize",
        // 4: GGUF v3 with add_eos_token / key_length / value_length and the served chat template;
        // SentencePiece tokenizers; chat_template.jinja beside the files.
        version: 4,
        summary: "merged weights → GGUF files (q8_0, q4_0, f16, K-quants) + ollama Modelfiles, for llama.cpp/ollama/`avatar serve`",
        inputs: &[InputSpec {
            name: "model",
            required: true,
            help: "HF-layout folder: config.json, model.safetensors, tokenizer.json or tokenizer.model, tokenizer_config.json",
        }],
        outputs: &[OutputSpec {
            name: "gguf",
            path: "gguf",
            help: "one <name>-<type>.gguf and <name>-<type>.Modelfile per type, plus tokenizer files",
        }],
    };

    fn run(&self, ctx: &StageContext, params: &QuantizeParams) -> anyhow::Result<Metrics> {
        if params.types.is_empty() {
            anyhow::bail!("param `types` is empty: name at least one type, e.g. [\"q4_0\"]");
        }
        if params.name.is_empty() || params.name.contains(['/', '\\']) {
            anyhow::bail!("param `name` must be a plain file stem");
        }
        let types = params
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| quant::parse_type(t).map_err(|e| anyhow::anyhow!("param `types[{i}]`: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let model = ctx.input("model")?;
        let tokenizer = load_tokenizer(model)?;
        let choice = crate::common::template::choice(ctx)?;
        let template = load_template(model, &tokenizer, choice.as_ref())?;
        let out = ctx.output("gguf", &Self::INFO)?;
        avatar_engine::fsutil::create_private_dir(&out)?;
        let bar = ctx.progress.bar(types.len() as u64, "files");
        let mut m = Metrics::new();
        for (name, ty) in params.types.iter().zip(types) {
            let name = name.to_ascii_lowercase();
            let file = format!("{}-{name}.gguf", params.name);
            let report = quant::convert_with_template(model, ty, &out.join(&file), Some(template.source()))?;
            let (text, recognised) = modelfile::modelfile(&file, &template)?;
            std::fs::write(out.join(format!("{}-{name}.Modelfile", params.name)), text)?;
            let format = recognised.map(|r| r.format.name()).unwrap_or("none");
            m.insert("modelfile_template".into(), format.into());
            m.insert(format!("{name}_bytes"), report.bytes.into());
            m.insert(format!("{name}_fallback_tensors"), report.fallbacks.into());
            bar.inc(1);
        }
        bar.finish_and_clear();
        copy_tokenizer_files(model, &out)?;
        // The template every GGUF here carries, for the server and for people reading the folder.
        std::fs::write(out.join("chat_template.jinja"), template.source())?;
        // config.json tells the server the model family (its fallback template and end tokens).
        std::fs::copy(model.join("config.json"), out.join("config.json"))?;
        ctx.progress.note(&format!("wrote {} GGUF file(s)", params.types.len()));
        Ok(m)
    }
}
