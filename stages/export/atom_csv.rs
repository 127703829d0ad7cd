//! Atom / Llama-Chinese SFT CSV: one `text` column, each row the whole dialogue as
//! `<s>Human: …</s><s>Assistant: …</s>` repeated per exchange.

use super::dialogue::Dialogue;

pub fn render(dialogues: &[Dialogue], newline: bool) -> anyhow::Result<Vec<u8>> {
    let end = if newline { "\n</s>" } else { "</s>" };
    let mut w = csv::WriterBuilder::new().from_writer(Vec::with_capacity(dialogues.len() * 256));
    w.write_record(["text"])?;
    let mut row = String::new();
    for d in dialogues {
        row.clear();
        for (human, assistant) in &d.exchanges {
            row.push_str("<s>Human: ");
            row.push_str(human);
            row.push_str(end);
            row.push_str("<s>Assistant: ");
            row.push_str(assistant);
            row.push_str(end);
        }
        w.write_record([row.as_str()])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("writing CSV: {}", e.error()))
}
