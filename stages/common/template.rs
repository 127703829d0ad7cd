//! The pipeline's `chat_template` setting as every prompt-rendering stage applies it: the
//! chosen format replaces the model folder's own, so sft, reward-label, reward-train, ppo, dpo,
//! eval, quantize and serve render the same prompts.

use std::path::Path;

use avatar_engine::StageContext;
use avatar_runtime::model_dir::{TemplateChoice, load_template};
use avatar_runtime::{ChatTemplate, Tokenizer};

/// `[pipeline] chat_template`, parsed; `None` when unset.
pub fn choice(ctx: &StageContext) -> anyhow::Result<Option<TemplateChoice>> {
    TemplateChoice::parse(&ctx.globals.chat_template).map_err(|e| anyhow::anyhow!("[pipeline] chat_template: {e}"))
}

/// Replace `template` (read from the folder `dir`) by the pipeline's choice, if it makes one.
pub fn apply(ctx: &StageContext, dir: &Path, tokenizer: &Tokenizer, template: &mut ChatTemplate) -> anyhow::Result<()> {
    if let Some(c) = choice(ctx)? {
        *template = load_template(dir, tokenizer, Some(&c))?;
    }
    Ok(())
}
