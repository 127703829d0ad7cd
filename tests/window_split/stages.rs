//! The three stages run as the engine runs them: params from TOML, files in, files out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use avatar::engine::progress::Progress;
use avatar::engine::stage::ResolvedInput;
use avatar::engine::{Globals, Metrics, StageContext};
use avatar::stages::common::jsonl::read_jsonl;
use avatar::stages::common::message_table;
use avatar::stages::common::sample::Sample;

use super::corpus::corpus;

fn run(kind: &str, params: &str, inputs: &[(&str, PathBuf)], out: &Path) -> anyhow::Result<Metrics> {
    let registry = avatar::stages::registry();
    let stage = registry.get(kind).expect("registered");
    let table: toml::Table = toml::from_str(params).unwrap();
    let params = stage.canonical_params(&table).map_err(|e| anyhow::anyhow!("param `{}`: {}", e.path, e.message))?;
    let inputs: BTreeMap<String, ResolvedInput> =
        inputs.iter().map(|(n, p)| (n.to_string(), ResolvedInput { path: p.clone(), hash: String::new() })).collect();
    std::fs::create_dir_all(out).unwrap();
    let work = out.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let globals = Globals { seed: 17, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
    let progress = Progress::hidden(kind);
    let ctx = StageContext {
        stage_name: kind,
        inputs: &inputs,
        out_dir: out,
        work_dir: &work,
        globals: &globals,
        progress: &progress,
        manifest_dir: out,
    };
    stage.run(&ctx, &params)
}

#[test]
fn window_split_export_run_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("messages.db");
    message_table::write(&messages, &corpus(8000, 400, 1)).unwrap();

    let w = dir.path().join("window");
    let m = run("window", "include_groups = true\nsystem_prompt = \"你是{self_name}\"", &[("messages", messages)], &w)
        .unwrap();
    let samples: Vec<Sample> = read_jsonl(&w.join("samples.jsonl")).unwrap();
    assert_eq!(m["samples"], serde_json::json!(samples.len()));
    assert!(samples.len() > 1000);
    assert!(samples.iter().all(|s| s.system.as_deref() == Some("你是乌冬面")));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("window_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["messages"], 8000);
    assert!(stats["reply_kinds"]["text"].as_u64().unwrap() > 0);

    let s = dir.path().join("split");
    let m = run(
        "split",
        "train = 0.8\nval = 0.1\ntest = 0.1",
        &[("samples", w.join("samples.jsonl")), ("window_stats", w.join("window_stats.json"))],
        &s,
    )
    .unwrap();
    let counts: Vec<usize> = ["train", "val", "test"]
        .iter()
        .map(|p| read_jsonl::<Sample>(&s.join(format!("{p}.jsonl"))).unwrap().len())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), samples.len());
    assert_eq!(m["train"], serde_json::json!(counts[0]));
    for chart in ["reply_length.svg", "context_length.svg", "top_contacts.svg", "kind_mix.svg", "split_sizes.svg"] {
        let svg = std::fs::read_to_string(s.join("stats").join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{chart}");
    }
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(s.join("stats/stats.json")).unwrap()).unwrap();
    assert_eq!(st["seed"], 17, "the pipeline seed is used when no `seed` param is given");
    assert_eq!(st["splits"]["train"]["samples"], serde_json::json!(counts[0]));
    assert!(st["reply_kinds"]["sticker"].as_u64().is_some());
    let top = &st["top_contacts"][0];
    assert!(
        top["name"].as_str().unwrap().starts_with('好') || top["name"].as_str().unwrap().starts_with('群'),
        "{top}"
    );
    assert!(std::fs::read_to_string(s.join("stats/top_contacts.svg")).unwrap().contains(top["name"].as_str().unwrap()));
    assert!(std::fs::read_to_string(s.join("stats/kind_mix.svg")).unwrap().contains("sticker"));

    let e = dir.path().join("export");
    let m = run(
        "export",
        "formats = [\"sharegpt\", \"wechat_avatar\"]",
        &[("train", s.join("train.jsonl")), ("test", s.join("test.jsonl"))],
        &e,
    )
    .unwrap();
    assert!(m["train_dialogues"].as_u64().unwrap() > 0);
    assert!(e.join("export/sharegpt/dataset_info.json").exists());
    assert!(e.join("export/wechat_avatar/test.jsonl").exists());
    assert!(!e.join("export/atom_csv").exists());
}

#[test]
fn bad_params_and_bad_input_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let err = run("window", "context_mesages = 5", &[], dir.path()).err().unwrap().to_string();
    assert!(err.contains("context_mesages"), "{err}");
    let err = run("split", "train = \"most\"", &[], dir.path()).err().unwrap().to_string();
    assert!(err.contains("train"), "{err}");
    let err = run("export", "formats = [\"parquet\"]", &[], dir.path()).err().unwrap().to_string();
    assert!(err.contains("formats"), "{err}");

    // A bad row in messages.db is reported by file, message and column, without its content.
    let messages = dir.path().join("messages.db");
    message_table::write(&messages, &corpus(3, 3, 0)).unwrap();
    rusqlite::Connection::open(&messages)
        .unwrap()
        .execute("UPDATE messages SET timestamp = 'secret chat text' WHERE seq = 1", [])
        .unwrap_err(); // STRICT: the table itself refuses a wrong type
    rusqlite::Connection::open(&messages)
        .unwrap()
        .execute("UPDATE messages SET kind = 'secret chat text' WHERE seq = 1", [])
        .unwrap();
    let err = format!("{:#}", run("window", "", &[("messages", messages)], &dir.path().join("w")).err().unwrap());
    assert!(err.contains("messages.db: message 1: column `kind`"), "{err}");
    assert!(!err.contains("secret chat text"), "{err}");
}
