//! Built-in prompt formats for models whose tokenizer_config.json has no chat template, chosen
//! by name with the pipeline's `chat_template` setting or picked for the model family.

/// Names `chat_template` accepts besides a path to a .jinja file.
pub const BUILTIN_NAMES: &[&str] = &["chatml", "atom", "chatglm3", "chatglm2", "llama3"];

/// Atom-7B-Chat / Llama-Chinese: `<s>Human: …\n</s><s>Assistant: …</s>`, the format of seed
/// 000 and Llama-Chinese's own inference code. A system prompt has no slot there; it goes in
/// front of the first human turn's text.
pub const ATOM: &str = "{%- set ns = namespace(system='') -%}\
{%- for m in messages -%}\
{%- if m.role == 'system' -%}{%- set ns.system = m.content + '\\n' -%}\
{%- elif m.role == 'user' -%}<s>Human: {{ ns.system }}{{ m.content }}\n</s>{%- set ns.system = '' -%}\
{%- elif m.role == 'assistant' -%}<s>Assistant: {{ m.content }}</s>\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<s>Assistant: {% endif -%}";

/// ChatGLM3: `[gMASK]sop` once, then `<|role|>\n content` per message; the reply ends at the
/// next role token, or at `</s>` when it is the last message.
pub const CHATGLM3: &str = "[gMASK]sop\
{%- for m in messages -%}<|{{ m.role }}|>\n {{ m.content }}\
{%- if loop.last and m.role == 'assistant' and not add_generation_prompt -%}{{ eos_token }}{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}";

/// ChatGLM2: `[gMASK]sop` then `[Round N]\n\n问：…\n\n答：…\n\n` per exchange (its
/// build_prompt). Consecutive user messages share one question, a system prompt opens it.
pub const CHATGLM2: &str = "[gMASK]sop\
{%- set ns = namespace(round=0, prev='', system='') -%}\
{%- for m in messages -%}\
{%- if m.role == 'system' -%}{%- set ns.system = m.content + '\\n' -%}\
{%- elif m.role == 'user' -%}\
{%- if ns.prev == 'user' -%}{{ '\\n' + m.content }}\
{%- else -%}{%- set ns.round = ns.round + 1 -%}{{ '[Round ' ~ ns.round ~ ']\\n\\n问：' + ns.system + m.content }}{%- set ns.system = '' -%}\
{%- endif -%}{%- set ns.prev = 'user' -%}\
{%- elif m.role == 'assistant' -%}\
{%- if ns.prev == 'user' -%}{{ '\\n\\n答：' }}{%- elif ns.prev == 'assistant' -%}{{ '\\n' }}{%- endif -%}{{ m.content }}\
{%- if loop.last and not add_generation_prompt -%}{{ eos_token }}{%- else -%}{{ '\\n\\n' }}{%- endif -%}\
{%- set ns.prev = 'assistant' -%}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt and ns.prev == 'user' -%}{{ '\\n\\n答：' }}{%- endif -%}";

/// Llama 3 Instruct.
pub const LLAMA3: &str = "{{- bos_token -}}{%- for m in messages -%}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{%- endfor -%}{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif -%}";

/// (source, bos, eos) of a built-in format.
pub fn builtin(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match name {
        "chatml" => (super::chat::CHATML_TEMPLATE, "", "<|im_end|>"),
        "atom" => (ATOM, "<s>", "</s>"),
        "chatglm3" => (CHATGLM3, "", "</s>"),
        "chatglm2" => (CHATGLM2, "", "</s>"),
        "llama3" => (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
        _ => return None,
    })
}
