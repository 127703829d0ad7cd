//! The command stage's params and argv placeholders, through their public functions.

use std::path::PathBuf;

use avatar::engine::stage::ParamError;
use avatar::stages::command::argv::{Placeholder, placeholders, shell_quote, substitute};
use avatar::stages::command::params::CommandParams;

fn parse(src: &str) -> Result<CommandParams, ParamError> {
    let t: toml::Table = toml::from_str(src).unwrap();
    CommandParams::from_table(&t, &|n| (n == "HF_HOME").then(|| "/cache/hf".to_string()))
}

#[test]
fn canonical_form_carries_keyed_env_values_only() {
    let p = parse(
        r#"argv = ["python3", "t.py", "{out.model}"]
outputs = { model = "model/" }
env = ["HF_HOME", "UNSET_ONE"]
secret_env = ["HF_TOKEN"]"#,
    )
    .unwrap();
    assert_eq!(p.env["HF_HOME"].as_deref(), Some("/cache/hf"));
    assert_eq!(p.env["UNSET_ONE"], None);
    assert_eq!(p.outputs["model"], "model");
    assert_eq!(p.secret_env, vec!["HF_TOKEN"]);
}

#[test]
fn bad_params_name_the_field() {
    let e = parse(r#"argv = []"#).unwrap_err();
    assert_eq!(e.path, "argv");
    let e = parse(r#"argv = ["x", "{out.nope}"]"#).unwrap_err();
    assert!(e.message.contains("{out.nope}"), "{}", e.message);
    let e = parse(
        r#"argv = ["x"]
outputs = { a = "../escape" }"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "outputs.a");
    let e = parse(
        r#"argv = ["x"]
env = ["A"]
secret_env = ["A"]"#,
    )
    .unwrap_err();
    assert!(e.message.contains("already listed"), "{}", e.message);
    let e = parse(
        r#"argv = ["a", "b"]
shell = true"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "argv");
}

#[test]
fn input_placeholders_must_name_inputs() {
    let p = parse(r#"argv = ["cat", "{in.data}"]"#).unwrap();
    assert!(p.check_inputs(&["data"]).is_ok());
    let e = p.check_inputs(&["other"]).unwrap_err();
    assert!(e.message.contains("{in.data}"), "{}", e.message);
}

fn lookup(h: Placeholder) -> Option<PathBuf> {
    match h {
        Placeholder::In("data") => Some(PathBuf::from("/in/my data")),
        Placeholder::Out("model") => Some(PathBuf::from("/out/model")),
        Placeholder::Cwd => Some(PathBuf::from("/cwd")),
        _ => None,
    }
}

#[test]
fn substitutes_known_holes_and_leaves_other_braces() {
    let s = substitute("--data={in.data},out={out.model} ${HOME} {x}", &lookup, false).unwrap();
    assert_eq!(s, "--data=/in/my data,out=/out/model ${HOME} {x}");
    let s = substitute("cat {in.data} > {cwd}/x", &lookup, true).unwrap();
    assert_eq!(s, "cat '/in/my data' > '/cwd'/x");
    assert!(substitute("{in.nope}", &lookup, false).unwrap_err().contains("{in.nope}"));
    assert!(placeholders("{in.a b}").is_err());
    assert!(placeholders("{out.x").is_err());
    assert_eq!(
        placeholders("{in.a}{out.b}{cwd}").unwrap(),
        vec![Placeholder::In("a"), Placeholder::Out("b"), Placeholder::Cwd]
    );
}

#[test]
fn shell_quote_survives_quotes() {
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}
