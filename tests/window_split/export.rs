//! `export`: the files other trainers read.

use avatar::stages::common::sample::{Role, Sample, Turn};
use avatar::stages::export::{ExportParams, Format, dialogue, export};

fn turn(role: Role, speaker: Option<&str>, text: &str) -> Turn {
    Turn { role, speaker: speaker.map(str::to_string), text: text.to_string() }
}

fn sample(context: Vec<Turn>, reply: &str) -> Sample {
    Sample {
        id: "0123456789abcdef".into(),
        conversation: "wxid_a".into(),
        is_group: false,
        session: "1700000000".into(),
        timestamp: 1_700_000_100,
        system: Some("你是乌冬面".into()),
        context,
        reply: reply.into(),
        source: "window".into(),
    }
}

#[test]
fn dialogues_alternate_and_name_group_speakers() {
    let s = sample(
        vec![
            turn(Role::Self_, Some("乌冬面"), "我先说"),
            turn(Role::Other, Some("胡三行"), "对"),
            turn(Role::Other, Some("小虫"), "上号"),
            turn(Role::Self_, Some("乌冬面"), "好"),
            turn(Role::Other, Some("胡三行"), "冲"),
        ],
        "开冲<s>[呲牙]",
    );
    let d = dialogue(&s).unwrap();
    assert_eq!(
        d.exchanges,
        vec![
            ("胡三行:对\n小虫:上号".to_string(), "好".to_string()),
            ("胡三行:冲".to_string(), "开冲<s>[呲牙]".to_string())
        ]
    );
    assert_eq!(d.system.as_deref(), Some("你是乌冬面"));
    // A follow-up after one's own turn cannot alternate.
    let follow_up = sample(vec![turn(Role::Other, None, "在吗"), turn(Role::Self_, None, "在")], "刚才去开会了");
    assert!(dialogue(&follow_up).is_none());
}

#[test]
fn every_format_is_written_in_its_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let train = vec![
        sample(vec![turn(Role::Other, None, "女孩子生气的时候是不是暂时不能讲理啊")], "嗯嗯"),
        sample(
            vec![turn(Role::Other, None, "q1"), turn(Role::Self_, None, "a1"), turn(Role::Other, None, "q2, \"引号\"")],
            "a2<s>a3",
        ),
        sample(vec![turn(Role::Other, None, "在吗"), turn(Role::Self_, None, "在")], "跟进"),
    ];
    let val = vec![sample(vec![turn(Role::Other, None, "v")], "w")];
    let summary = export(dir.path(), &[("train", train), ("val", val)], &ExportParams::default()).unwrap();
    assert_eq!(summary.skipped_not_alternating, 1);
    assert_eq!(summary.written["train"], 2);

    // wechat-avatar JSONL.
    let text = std::fs::read_to_string(dir.path().join("wechat_avatar/train.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        serde_json::json!({"conversation_id": 1, "category": "Conversation",
            "conversation": [{"human": "女孩子生气的时候是不是暂时不能讲理啊", "assistant": "嗯嗯"}]})
    );
    assert_eq!(rows[1]["conversation"].as_array().unwrap().len(), 2);

    // Atom CSV, read back with a CSV parser.
    let mut r = csv::Reader::from_path(dir.path().join("atom_csv/train_sft.csv")).unwrap();
    assert_eq!(r.headers().unwrap(), vec!["text"]);
    let texts: Vec<String> = r.records().map(|x| x.unwrap()[0].to_string()).collect();
    assert_eq!(texts[0], "<s>Human: 女孩子生气的时候是不是暂时不能讲理啊</s><s>Assistant: 嗯嗯</s>");
    assert_eq!(texts[1], "<s>Human: q1</s><s>Assistant: a1</s><s>Human: q2, \"引号\"</s><s>Assistant: a2<s>a3</s>");
    assert!(dir.path().join("atom_csv/dev_sft.csv").exists());
    assert!(!dir.path().join("atom_csv/test_sft.csv").exists(), "no test input, no test file");

    // ShareGPT + dataset_info.json (LLaMA-Factory).
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sharegpt/train.json")).unwrap()).unwrap();
    let first = &records[0];
    assert_eq!(
        first["conversations"][0],
        serde_json::json!({"from": "human", "value": "女孩子生气的时候是不是暂时不能讲理啊"})
    );
    assert_eq!(first["conversations"][1], serde_json::json!({"from": "gpt", "value": "嗯嗯"}));
    assert_eq!(first["system"], "你是乌冬面");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sharegpt/dataset_info.json")).unwrap()).unwrap();
    assert_eq!(info["avatar_train"]["file_name"], "train.json");
    assert_eq!(info["avatar_train"]["formatting"], "sharegpt");
    assert_eq!(info["avatar_train"]["columns"]["messages"], "conversations");
    assert_eq!(info["avatar_val"]["tags"]["assistant_tag"], "gpt");
    assert!(info.get("avatar_test").is_none());
}

#[test]
fn params_choose_formats_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let params = ExportParams { formats: vec![Format::AtomCsv], atom_newline: true, ..Default::default() };
    export(dir.path(), &[("train", vec![sample(vec![turn(Role::Other, None, "问")], "答")])], &params).unwrap();
    assert!(!dir.path().join("sharegpt").exists() && !dir.path().join("wechat_avatar").exists());
    let mut r = csv::Reader::from_path(dir.path().join("atom_csv/train_sft.csv")).unwrap();
    assert_eq!(&r.records().next().unwrap().unwrap()[0], "<s>Human: 问\n</s><s>Assistant: 答\n</s>");
    let bad = ExportParams { formats: vec![], ..Default::default() };
    let err = export(dir.path(), &[], &bad).err().unwrap().to_string();
    assert!(err.contains("`formats`"), "{err}");
}
