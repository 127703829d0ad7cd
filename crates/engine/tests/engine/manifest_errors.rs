//! Every manifest error class is reported with file:line:column before anything runs.

use avatar_engine::Manifest;

use crate::fixture::Fixture;

/// Load `text` and return the diagnostics as strings "line:col: message".
fn errors(text: &str) -> Vec<String> {
    let f = Fixture::new(text);
    let err = Manifest::load(&f.manifest, &f.registry).expect_err("manifest should be rejected");
    assert!(f.ran().is_empty());
    err.diagnostics
        .iter()
        .map(|d| {
            assert_eq!(d.file, f.manifest, "diagnostic names the manifest file");
            format!("{}:{}: {}", d.line, d.column, d.message)
        })
        .collect()
}

fn one(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn toml_syntax_error() {
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" \n");
    assert!(e.starts_with("3:"), "{e}");
    assert!(e.contains("TOML syntax"), "{e}");
}

#[test]
fn unknown_top_level_key() {
    let e = one("[pipline]\nseed = 1\n[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.starts_with("1:2: unknown top-level key `pipline`"), "{e}");
}

#[test]
fn unknown_pipeline_setting_and_bad_choice() {
    let e = errors(
        "[pipeline]\nseed = 1\nsede = 2\ndevice = \"tpu\"\n[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("3:1: [pipeline]: unknown field `sede`"), "{e:?}");
    assert!(!e[0].ends_with('\n'));
    assert!(e[1].starts_with("4:10: `pipeline.device` is `tpu`"), "{e:?}");
    let e = one("[pipeline]\ndevice = \"tpu\"\n[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.starts_with("2:10: `pipeline.device` is `tpu`"), "{e}");
    let e = one("[pipeline]\ndtype = \"f64\"\n[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.starts_with("2:9: `pipeline.dtype` is `f64`; expected one of f32, bf16, f16, auto"), "{e}");
    for ok in ["f32", "bf16", "f16", "auto"] {
        let text = format!(
            "[pipeline]\ndtype = \"{ok}\"\n[stages.a]\nkind = \"transform\"\ninputs = {{ a = \"./input.txt\" }}\n"
        );
        let f = Fixture::new(&text);
        assert!(Manifest::load(&f.manifest, &f.registry).is_ok(), "dtype = {ok} is accepted");
    }
}

#[test]
fn unknown_param_key() {
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nsufix = \"x\"\n");
    assert!(e.starts_with("4:1: stage `a` (transform) param `sufix`: unknown field `sufix`"), "{e}");
}

#[test]
fn wrong_param_type() {
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nsleep_ms = \"long\"\n");
    assert!(e.starts_with("4:12: stage `a` (transform) param `sleep_ms`: invalid type"), "{e}");
}

#[test]
fn invalid_param_value() {
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nop = \"sideways\"\n");
    assert!(e.starts_with("4:6: stage `a` (transform) param `op`: unknown op `sideways`"), "{e}");
}

#[test]
fn unknown_stage_kind_lists_known_kinds() {
    let e = one("[stages.a]\nkind = \"transfrom\"\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.starts_with("2:8: stage `a`: unknown kind `transfrom` (known kinds: transform, transform2)"), "{e}");
}

#[test]
fn missing_kind_and_bad_stage_name() {
    let e = one("[stages.a]\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.starts_with("1:9: stage `a` has no `kind`"), "{e}");
    let e = one("[stages.\"a.b\"]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n");
    assert!(e.contains("may only use letters"), "{e}");
}

#[test]
fn cycle() {
    let e = one(
        "[stages.a]\nkind = \"transform\"\ninputs = { a = \"b.data\" }\n[stages.b]\nkind = \"transform\"\ninputs = { a = \"a.data\" }\n",
    );
    assert!(e.contains("dependency cycle: "), "{e}");
    assert!(e.contains("a -> b -> a") || e.contains("b -> a -> b"), "{e}");
}

#[test]
fn input_naming_missing_stage_output_or_file() {
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"nope.data\" }\n");
    assert!(e.starts_with("3:16: input `a` names stage `nope`, which is not in this manifest"), "{e}");
    let e = errors(
        "[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n[stages.b]\nkind = \"transform\"\ninputs = { a = \"a.dta\" }\n",
    );
    assert!(e[0].starts_with("6:16: stage `a` (transform) has no output `dta` (its outputs: data, meeting)"), "{e:?}");
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"./missing.txt\" }\n");
    assert!(e.starts_with("3:16: input `a`: file `") && e.contains("missing.txt` does not exist"), "{e}");
    let e = one("[stages.a]\nkind = \"transform\"\ninputs = { a = \"input\" }\n");
    assert!(e.contains("neither `stage.output` nor a path"), "{e}");
}

#[test]
fn unknown_and_missing_inputs() {
    let e = errors("[stages.a]\nkind = \"transform\"\ninputs = { z = \"./input.txt\" }\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("1:9: stage `a` (transform) needs input `a`"), "{e:?}");
    assert!(e[1].starts_with("3:12: stage `a` (transform) has no input `z` (its inputs: a, b)"), "{e:?}");
}

#[test]
fn several_errors_are_all_reported() {
    let e = errors(
        "[stages.a]\nkind = \"nope\"\n[stages.b]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nbogus = 1\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn every_bad_field_is_reported_also_inside_an_inline_table() {
    let e = errors(
        "[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nnested = { level = \"high\", tga = \"x\" }\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("4:20: stage `a` (transform) param `nested.level`: invalid type"), "{e:?}");
    assert!(
        e[1].starts_with("4:28: stage `a` (transform) param `nested") && e[1].contains("unknown field `tga`"),
        "{e:?}"
    );
    let e = errors(
        "[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nsufix = \"x\"\nsleep_ms = \"long\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("4:1: stage `a` (transform) param `sufix`: unknown field"), "{e:?}");
    assert!(e[1].starts_with("5:12: stage `a` (transform) param `sleep_ms`: invalid type"), "{e:?}");
}

#[test]
fn errors_are_listed_in_line_order() {
    // `a`'s reference is checked once every stage has parsed; `b`'s param and `c`'s kind while
    // parsing: the list still reads top to bottom.
    let e = errors(
        "[stages.a]\nkind = \"transform\"\ninputs = { a = \"nope.data\" }\n[stages.b]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\nop = \"sideways\"\n[stages.c]\nkind = \"nope\"\n",
    );
    let lines: Vec<usize> = e.iter().map(|d| d.split(':').next().unwrap().parse().unwrap()).collect();
    assert_eq!(lines, vec![3, 7, 9], "{e:#?}");
}

mod fuzz {
    use proptest::prelude::*;

    use crate::fixture::DIAMOND;

    fn parse(text: &str) {
        let (registry, _) = crate::stages::registry(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        // Must return Ok or diagnostics; a panic fails the property.
        let _ = avatar_engine::Manifest::parse(&path, text, &registry);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            parse(&text);
        }

        #[test]
        fn mutated_manifests_never_panic(cut in 0usize..DIAMOND.len(), junk in "[\\[\\]{}=\".a-z0-9 \\n#]{0,12}") {
            let mut text = DIAMOND.to_string();
            let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(at, &junk);
            parse(&text);
        }
    }
}

#[test]
fn chat_template_must_be_a_builtin_or_an_existing_jinja_file() {
    let stage = "[stages.a]\nkind = \"transform\"\ninputs = { a = \"./input.txt\" }\n";
    let e = one(&format!("[pipeline]\nchat_template = \"gpt4\"\n{stage}"));
    assert!(e.starts_with("2:17: `pipeline.chat_template` is `gpt4`; expected one of chatml, atom"), "{e}");
    let e = one(&format!("[pipeline]\nchat_template = \"tmpl/missing.jinja\"\n{stage}"));
    assert!(e.starts_with("2:17: `pipeline.chat_template`: ") && e.contains("missing.jinja does not exist"), "{e}");
}
