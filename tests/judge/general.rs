//! The forgetting guard: the general file's forms and its bad rows (file:line errors without
//! the row's text), sft mixing it in at `general_ratio` deterministically by seed with a part
//! held back, and eval's perplexity on that part for each model.

use avatar::stages::common::jsonl::read_jsonl;
use avatar::stages::common::sample::{Role, Sample};
use avatar::stages::sft::general::{read_general, split};

use super::{EVAL, Fixture, SFT, general_file};

#[test]
fn general_rows_read_in_sharegpt_and_alpaca_form() {
    let rows = read_general(&general_file()).unwrap();
    assert_eq!(rows.len(), 32);
    let first = &rows[0];
    assert_eq!((first.id.as_str(), first.source.as_str()), ("general:1", "general"));
    assert_eq!(first.context.len(), 1);
    assert_eq!((first.context[0].role, first.context[0].text.as_str()), (Role::Other, "3 加 5 等于多少？"));
    assert_eq!(first.reply, "3 加 5 等于 8。");
    // `messages` with a system turn first: the sample's system prompt.
    assert_eq!(rows[1].system.as_deref(), Some("你是一个乐于助人的助手。"));
    assert_eq!(rows[1].context.len(), 1);
    // Alpaca: instruction and input joined.
    assert_eq!(rows[2].context[0].text, "计算两个数的和。\n\n4 和 4");
    // The two-turn conversation: its last reply is trained on, the rest is context.
    let two = rows.iter().find(|r| r.context.len() == 3).unwrap();
    assert_eq!(two.reply, "4 加 1 等于 5。");
    assert_eq!(two.context.iter().map(|t| t.role).collect::<Vec<_>>(), [Role::Other, Role::Self_, Role::Other]);
    assert_eq!(rows.last().unwrap().system.as_deref(), Some("回答要简短。"));
}

#[test]
fn bad_general_rows_are_errors_naming_file_and_line_without_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"instruction": "秘密问题一", "output": "秘密答案一"}"#;
    let cases = [
        (r#"{"instruction": "秘密问题二", "output": "秘密答案二""#, "not a JSON object"),
        (r#"["秘密问题二"]"#, "not a JSON object"),
        (r#"{"prompt": "秘密问题二", "answer": "秘密答案二"}"#, "neither ShareGPT"),
        (r#"{"instruction": "秘密问题二"}"#, "without `output`"),
        (r#"{"instruction": "秘密问题二", "output": "  "}"#, "reply (last assistant turn) is empty"),
        (r#"{"instruction": "秘密问题二", "output": 3}"#, "`output` must be a string"),
        (r#"{"conversations": [{"from": "human", "value": "秘密问题二"}]}"#, "last turn must be the assistant's"),
        (r#"{"conversations": [{"from": "gpt", "value": "秘密答案二"}]}"#, "no user turn"),
        (
            r#"{"conversations": [{"from": "narrator", "value": "秘密问题二"}, {"from": "gpt", "value": "秘密答案二"}]}"#,
            "turn 1: unknown speaker",
        ),
        (
            r#"{"messages": [{"role": "user", "text": "秘密问题二"}, {"role": "assistant", "content": "秘密答案二"}]}"#,
            "turn 1 has neither `value` nor `content`",
        ),
        (r#"{"messages": [{"content": "秘密问题二"}]}"#, "turn 1 has neither `from` nor `role`"),
        (r#"{"messages": "秘密问题二"}"#, "must be a list"),
        (
            r#"{"messages": [{"role": "user", "content": "秘密问题二"}, {"role": "system", "content": "秘密"}, {"role": "assistant", "content": "秘密答案二"}]}"#,
            "turn 2: a system turn after the first",
        ),
    ];
    for (bad, want) in cases {
        let path = dir.path().join("general.jsonl");
        std::fs::write(&path, format!("{ok}\n\n{bad}\n")).unwrap();
        let err = format!("{:#}", read_general(&path).unwrap_err());
        assert!(err.starts_with(&format!("{}:3: ", path.display())), "{bad}: {err}");
        assert!(err.contains(want), "{bad}: {err}");
        assert!(!err.contains("秘密"), "no row text in the error: {err}");
    }
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert!(format!("{:#}", read_general(&empty).unwrap_err()).contains("no instruction rows"));
}

#[test]
fn sft_mixes_general_rows_at_the_ratio_holds_some_back_and_eval_measures_them_per_model() {
    let f = Fixture::new();
    let general = general_file();
    // 48 person samples; a 0.25 share of general ones is 16 of 64.
    let mixed =
        f.sft(&format!("{SFT}general_ratio = 0.25\ngeneral_holdout = 0.125\n"), Some(&general), "mixed").unwrap();
    assert_eq!(mixed["general_rows"], 32);
    assert_eq!(mixed["general_held_out"], 4);
    assert_eq!(mixed["general_mixed"], 16);
    assert_eq!(mixed["train_samples"], 64);
    assert_eq!(mixed["general_share"], serde_json::json!(0.25));
    // The held-out rows are the seed's draw (the pipeline seed, 42, in these tests), the rest
    // is what sft trains on.
    let held: Vec<Sample> = read_jsonl(&f.path("mixed/general-test.jsonl")).unwrap();
    let (train, test) = split(read_general(&general).unwrap(), 0.125, 42).unwrap();
    assert_eq!(held, test);
    assert_eq!(train.len(), 28);
    let (_, other_seed) = split(read_general(&general).unwrap(), 0.125, 43).unwrap();
    assert_ne!(test, other_seed, "another seed holds back other rows");
    assert_eq!(std::fs::read(f.path("mixed/general-test.jsonl")).unwrap(), {
        let again =
            f.sft(&format!("{SFT}general_ratio = 0.25\ngeneral_holdout = 0.125\n"), Some(&general), "again").unwrap();
        assert_eq!(again["final_train_loss"], mixed["final_train_loss"], "the mix is deterministic");
        std::fs::read(f.path("again/general-test.jsonl")).unwrap()
    });
    // A ratio above what the file holds repeats its rows (whole shuffles): 0.5 of 96 is 48 > 28.
    let one_step = SFT.replace("max_steps = 12", "max_steps = 1");
    let m = f.sft(&format!("{one_step}general_ratio = 0.5\n"), Some(&general), "half").unwrap();
    assert_eq!(m["general_mixed"], 48);

    // Without the input: nothing mixed, an empty general_test output.
    let plain = f.sft(SFT, None, "plain").unwrap();
    assert!(!plain.contains_key("general_mixed"));
    assert_eq!(plain["train_samples"], 48);
    assert_eq!(std::fs::read_to_string(f.path("plain/general-test.jsonl")).unwrap(), "");

    // Bad params and a bad row stop sft before training, naming the file and line.
    let err = f.sft(&format!("{SFT}general_ratio = 1.0\n"), Some(&general), "bad").unwrap_err();
    assert!(format!("{err:#}").contains("general_ratio"), "{err:#}");
    let bad = f.path("bad-general.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"instruction\": \"x\"}}\n", std::fs::read_to_string(&general).unwrap().lines().next().unwrap()),
    )
    .unwrap();
    let err = format!("{:#}", f.sft(SFT, Some(&bad), "bad2").unwrap_err());
    assert!(err.contains(&format!("{}:2: ", bad.display())), "{err}");

    // eval: perplexity on the held-out rows for the base, the sft that saw general rows and
    // the one that did not (standing in as the aligned model's slot).
    let (base, sft, plain) = (f.path("base/model"), f.path("mixed/model"), f.path("plain/model"));
    let held_path = f.path("mixed/general-test.jsonl");
    let (m, report) = f.eval(EVAL, &[("base", &base), ("sft", &sft), ("dpo", &plain), ("general", &held_path)], "e");
    let g = &report["general"];
    assert_eq!(g["samples"], 4);
    for name in ["base", "sft", "dpo"] {
        let ppl = g["perplexity"][name].as_f64().unwrap_or_else(|| panic!("no general perplexity for {name}: {g}"));
        assert!(ppl.is_finite() && ppl > 1.0, "{name}: {ppl}");
        assert_eq!(m[&format!("{name}.general_perplexity")], serde_json::json!(ppl));
    }
    let (gb, gs, gp) = (
        g["perplexity"]["base"].as_f64().unwrap(),
        g["perplexity"]["sft"].as_f64().unwrap(),
        g["perplexity"]["dpo"].as_f64().unwrap(),
    );
    eprintln!("general perplexity: base {gb:.2}, sft with general {gs:.2}, sft without {gp:.2}");
    assert!(gs < gb, "training on general rows lowers their held-out perplexity: sft {gs} vs base {gb}");
    assert!(gs < gp, "the mixed sft knows the general rows better than the chat-only one: {gs} vs {gp}");

    // sft without a general input writes an empty general_test: eval reports no general section.
    let empty = f.path("plain/general-test.jsonl");
    let (m, report) = f.eval(EVAL, &[("sft", &plain), ("general", &empty)], "e2");
    assert!(report.get("general").is_none() && !m.contains_key("sft.general_perplexity"));
}
