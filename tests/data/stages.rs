//! The two stages through the engine's Stage interface: params in, artifacts and metrics out.

use std::collections::BTreeMap;

use avatar::engine::progress::Progress;
use avatar::engine::stage::{Globals, ResolvedInput, Stage, StageContext};
use avatar::stages::common::message::Message;
use avatar::stages::common::message_table;
use avatar::stages::decrypt_read::DecryptReadStage;
use avatar::stages::normalise::{NormaliseStage, Stats};

use super::fixture::fixture;

fn run(
    stage: &dyn Stage,
    params: toml::Table,
    inputs: &[(&str, &std::path::Path)],
    out: &std::path::Path,
) -> anyhow::Result<avatar::engine::Metrics> {
    let canonical = stage.canonical_params(&params).map_err(|e| anyhow::anyhow!("{}: {}", e.path, e.message))?;
    let inputs: BTreeMap<String, ResolvedInput> = inputs
        .iter()
        .map(|(n, p)| (n.to_string(), ResolvedInput { path: p.to_path_buf(), hash: String::new() }))
        .collect();
    let work = tempfile::tempdir()?;
    let globals = Globals { seed: 1, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
    let progress = Progress::hidden("t");
    std::fs::create_dir_all(out)?;
    let ctx = StageContext {
        stage_name: "t",
        inputs: &inputs,
        out_dir: out,
        work_dir: work.path(),
        globals: &globals,
        progress: &progress,
        manifest_dir: std::path::Path::new("."),
    };
    stage.run(&ctx, &canonical)
}

#[test]
fn decrypt_read_then_normalise_with_blocked_words() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let mut params = toml::Table::new();
    params.insert("imei".into(), fx.keys.imei.clone().into());
    params.insert("uin".into(), fx.keys.uin.clone().into());
    let raw_out = tmp.path().join("dr");
    let m = run(&DecryptReadStage, params, &[("db", &fx.path("android"))], &raw_out).unwrap();
    assert_eq!(m["messages"], super::fixture::MESSAGES);
    assert_eq!(m["format"], "android");

    let words = tmp.path().join("blocked.txt");
    std::fs::write(&words, avatar::synth::blocked_words_file()).unwrap();
    let norm_out = tmp.path().join("n");
    let m = run(
        &NormaliseStage,
        toml::Table::new(),
        &[("raw", &raw_out.join("raw")), ("blocked_words", &words)],
        &norm_out,
    )
    .unwrap();
    let msgs: Vec<Message> = message_table::read(&norm_out.join("messages.db")).unwrap();
    assert_eq!(msgs.len() as u64, m["messages"].as_u64().unwrap());
    assert!(m["blocked_masked"].as_u64().unwrap() > 0, "the persona is sometimes rude");
    for w in avatar::synth::lines::BLOCKED_WORDS {
        assert!(msgs.iter().all(|x| !x.text.contains(w)), "{w} must be masked");
    }
    let stats: Stats = serde_json::from_slice(&std::fs::read(norm_out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats.messages, msgs.len() as u64);
    assert_eq!(stats.by_kind.values().sum::<u64>(), stats.messages);
    assert_eq!(stats.by_year.values().sum::<u64>(), stats.messages);
    assert_eq!(stats.malformed_xml, 0);
    assert!(stats.pii_masked.phone > 0 && stats.pii_masked.id_card > 0 && stats.pii_masked.bank_card > 0);
    // Sorted by conversation, then time.
    assert!(msgs.windows(2).all(|w| (&w[0].conversation, w[0].timestamp) <= (&w[1].conversation, w[1].timestamp)));

    // Drop mode removes the rude messages instead.
    let mut p = toml::Table::new();
    p.insert("blocked_mode".into(), "drop".into());
    let out2 = tmp.path().join("n2");
    let m2 = run(&NormaliseStage, p, &[("raw", &raw_out.join("raw")), ("blocked_words", &words)], &out2).unwrap();
    assert_eq!(m2["blocked_dropped"], m["blocked_masked"]);
}

#[test]
fn canonical_params_fill_defaults_and_hide_secrets() {
    let mut t = toml::Table::new();
    t.insert("key".into(), "abcdef0".into());
    let v = DecryptReadStage.canonical_params(&t).unwrap();
    assert_eq!(v["format"], "auto");
    assert!(v.get("key").is_none());
    let v = NormaliseStage.canonical_params(&toml::Table::new()).unwrap();
    assert_eq!(v["pii"]["phone"], true);
    assert_eq!(v["blocked_mode"], "mask");
    let mut bad = toml::Table::new();
    bad.insert(
        "pii".into(),
        toml::Value::Table([("phones".to_string(), toml::Value::Boolean(true))].into_iter().collect()),
    );
    assert!(NormaliseStage.canonical_params(&bad).unwrap_err().path.contains("pii"));
}
