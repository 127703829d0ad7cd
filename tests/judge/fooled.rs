//! The blind-test results file round-trips into eval's fooled rate: choices saved through the
//! page's state give known counts, and eval reports the known rate and Wilson interval for the
//! model whose content hash the trials name.

use std::os::unix::fs::PermissionsExt;

use avatar::stages::eval::fooled::{BlindTrial, Side, read_trials};
use avatar::stages::eval::judge_page::{CloneModel, JudgeState, Trial};
use serde_json::json;

use super::common::corpus;
use super::{EVAL, Fixture};

/// `n` trials of synthetic samples, the real reply on side A for even ones.
pub fn trials(n: usize) -> Vec<Trial> {
    corpus(n)
        .into_iter()
        .enumerate()
        .map(|(i, sample)| Trial {
            sample,
            clone: format!("克隆回复{i}"),
            seed: i as u64,
            real: if i % 2 == 0 { Side::A } else { Side::B },
        })
        .collect()
}

fn other(side: Side) -> Side {
    if side == Side::A { Side::B } else { Side::A }
}

#[test]
fn blind_results_round_trip_into_evals_fooled_rate() {
    let f = Fixture::new();
    let results = f.path("blind.jsonl");
    // 40 trials of the clone eval knows as `sft`: the first 13 fooled the judge.
    let sft = CloneModel { name: "sft.model".into(), hash: "hash-of-sft".into() };
    let state = JudgeState::open(sft, trials(40), &results).unwrap();
    for i in 0..40 {
        let real = if i % 2 == 0 { Side::A } else { Side::B };
        let choice = if i < 13 { other(real) } else { real };
        let v = state.choose(i, choice).unwrap();
        assert_eq!(v["fooled"], json!(i < 13));
        assert_eq!(v["real"], json!(real));
    }
    drop(state);
    // 3 trials of an older artifact: eval counts them apart.
    let old = CloneModel { name: "sft.model".into(), hash: "an-older-model".into() };
    let state = JudgeState::open(old, trials(3), &results).unwrap();
    for i in 0..3 {
        state.choose(i, Side::A).unwrap();
    }
    drop(state);
    assert_eq!(std::fs::metadata(&results).unwrap().permissions().mode() & 0o777, 0o600);

    let saved = read_trials(&results).unwrap();
    assert_eq!(saved.len(), 43);
    assert_eq!(saved.iter().filter(|t| t.model_hash == "hash-of-sft" && t.fooled()).count(), 13);
    // What a line holds: ids, sides and time, no chat text.
    let text = std::fs::read_to_string(&results).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["choice", "model", "model_hash", "real", "sample", "seed", "time"]);
    for s in corpus(40) {
        assert!(!text.contains(&s.reply) && !text.contains("克隆回复"), "the results file holds no chat text");
    }
    assert_eq!(
        saved[0],
        BlindTrial {
            time: saved[0].time,
            model: "sft.model".into(),
            model_hash: "hash-of-sft".into(),
            sample: "s0".into(),
            seed: 0,
            real: Side::A,
            choice: Side::B
        }
    );

    let model = f.path("base/model");
    let (m, report) = f.eval(EVAL, &[("base", &model), ("sft", &model), ("blind", &results)], "e");
    let sft = &report["blind"]["models"]["sft"];
    assert_eq!(sft["trials"], 40);
    assert_eq!(sft["fooled"], 13);
    assert!((sft["rate"].as_f64().unwrap() - 0.325).abs() < 1e-12);
    // Wilson 95 %: 13 of 40 → (0.20085, 0.47982).
    assert!((sft["low"].as_f64().unwrap() - 0.200845).abs() < 1e-5, "{sft}");
    assert!((sft["high"].as_f64().unwrap() - 0.479823).abs() < 1e-5, "{sft}");
    assert!(report["blind"]["models"].get("base").is_none(), "no trials judged the base");
    assert_eq!(report["blind"]["unmatched"], 3);
    assert_eq!(m["sft.fooled_rate"], json!(0.325));
    assert_eq!(m["sft.blind_trials"], 40);
    assert_eq!(m["blind.unmatched_trials"], 3);
    assert!(!m.contains_key("base.fooled_rate"));

    // Without the input, eval.json has no blind section at all.
    let (m, report) = f.eval(EVAL, &[("sft", &model)], "e2");
    assert!(report.get("blind").is_none() && !m.contains_key("sft.fooled_rate"));

    // A damaged line: eval fails naming the file and line, before generating anything.
    std::fs::write(&results, format!("{text}{{\"time\": 1, \"choice\": \"c\"}}\n")).unwrap();
    let test = f.path("test.jsonl");
    let err = super::common::run_stage(
        &avatar::stages::eval::Eval,
        EVAL,
        &[("test", &test), ("sft", &model), ("blind", &results)],
        &f.path("e3"),
        &f.path("work/e3"),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("{}:44:", results.display())), "{msg}");
}
