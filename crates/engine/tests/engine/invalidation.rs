//! Exactly what re-runs after each kind of change.

use avatar_engine::runner::{Outcome, RunOptions};
use avatar_engine::status::status;

use crate::fixture::{DIAMOND, Fixture};
use crate::stages::Event;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn first_run_runs_everything_second_run_nothing() {
    let f = Fixture::new(DIAMOND);
    let r = f.run();
    assert!(r.ok());
    assert_eq!(f.ran(), strs(&["a", "b", "c", "d", "e"]));
    assert_eq!(f.output_text(&r, "d"), "HELLO-bOLLEH");

    let r = f.run();
    assert!(r.ok());
    assert!(f.ran().is_empty(), "no-op run executed {:?}", f.ran());
    assert!(r.stages.iter().all(|s| s.outcome == Outcome::Cached));
}

#[test]
fn param_change_reruns_the_stage_and_its_descendants_only() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("suffix = \"-b\"", "suffix = \"-B\""));
    let r = f.run();
    assert_eq!(f.ran(), strs(&["b", "d"]));
    assert_eq!(f.output_text(&r, "d"), "HELLO-BOLLEH");
}

#[test]
fn reverting_a_param_is_a_cache_hit() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("op = \"reverse\"", "op = \"identity\""));
    f.run();
    assert_eq!(f.ran(), strs(&["c", "d"]));
    f.set_manifest(DIAMOND);
    let r = f.run();
    assert!(f.ran().is_empty(), "revert re-ran {:?}", f.ran());
    assert_eq!(f.output_text(&r, "d"), "HELLO-bOLLEH");
}

#[test]
fn input_file_change_reruns_its_readers_only() {
    let f = Fixture::new(DIAMOND);
    f.run();
    std::fs::write(f.path("other.txt"), "changed").unwrap();
    f.run();
    assert_eq!(f.ran(), strs(&["e"]));
    std::fs::write(f.path("input.txt"), "bye").unwrap();
    f.run();
    assert_eq!(f.ran(), strs(&["a", "b", "c", "d"]));
}

#[test]
fn stage_version_change_reruns_that_kind_and_descendants() {
    let f = Fixture::new(DIAMOND);
    f.run();
    // Same store, registry where `transform` is v2 (d is `transform2`, unchanged).
    let (registry, ran) = crate::stages::registry(2);
    let g = Fixture { registry, ran, ..f };
    g.run();
    // d (`transform2`) stays cached: its inputs came out byte-identical.
    assert_eq!(g.ran(), strs(&["a", "b", "c", "e"]));
    let st = avatar_engine::status::status(&g.load(), &g.registry).unwrap();
    assert!(st.iter().all(|s| s.up_to_date));
}

#[test]
fn version_change_is_explained_by_status() {
    let f = Fixture::new(DIAMOND);
    f.run();
    let (registry, ran) = crate::stages::registry(3);
    let g = Fixture { registry, ran, ..f };
    let st = status(&g.load(), &g.registry).unwrap();
    assert_eq!(st[0].reasons, vec!["stage version changed: 1 → 3"]);
}

#[test]
fn identical_output_stops_invalidation_early() {
    let f = Fixture::new(DIAMOND);
    f.run();
    // `note` changes c's key but not its output: d must stay cached.
    f.set_manifest(&DIAMOND.replace("op = \"reverse\"", "op = \"reverse\"\nnote = \"tried again\""));
    f.run();
    assert_eq!(f.ran(), strs(&["c"]));
}

#[test]
fn seed_change_reruns_stages_that_use_it() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("seed = 7", "seed = 8"));
    f.run();
    assert_eq!(f.ran(), strs(&["a", "b", "c", "d", "e"]));
}

#[test]
fn until_runs_only_ancestors() {
    let f = Fixture::new(DIAMOND);
    f.run_with(&RunOptions { until: Some("b".into()), ..Default::default() });
    assert_eq!(f.ran(), strs(&["a", "b"]));
}

#[test]
fn force_reruns_a_cached_stage() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.run_with(&RunOptions { force: vec!["c".into()], ..Default::default() });
    // Same output, so d stays cached.
    assert_eq!(f.ran(), strs(&["c"]));
}

#[test]
fn dry_run_runs_nothing_and_says_why() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("suffix = \"-b\"", "suffix = \"-x\""));
    let r = f.run_with(&RunOptions { dry_run: true, ..Default::default() });
    assert!(f.ran().is_empty());
    match &r.stage("b").unwrap().outcome {
        Outcome::WouldRun(why) => assert!(why.contains("param `suffix` changed: \"-b\" → \"-x\""), "{why}"),
        other => panic!("b: {other:?}"),
    }
    assert!(matches!(r.stage("d").unwrap().outcome, Outcome::WouldRun(_)));
    assert_eq!(r.stage("c").unwrap().outcome, Outcome::Cached);
}

#[test]
fn status_explains_staleness() {
    let f = Fixture::new(DIAMOND);
    let st = status(&f.load(), &f.registry).unwrap();
    assert!(st.iter().all(|s| !s.up_to_date));
    assert_eq!(st[0].reasons, vec!["never run"]);
    f.run();
    assert!(status(&f.load(), &f.registry).unwrap().iter().all(|s| s.up_to_date));

    f.set_manifest(&DIAMOND.replace("suffix = \"-b\"", "suffix = \"-B\""));
    std::fs::write(f.path("other.txt"), "changed").unwrap();
    let st = status(&f.load(), &f.registry).unwrap();
    let by = |n: &str| st.iter().find(|s| s.name == n).unwrap().clone();
    assert!(by("a").up_to_date && by("c").up_to_date);
    assert_eq!(by("b").reasons, vec!["param `suffix` changed: \"-b\" → \"-B\""]);
    assert_eq!(by("d").reasons, vec!["input `a` comes from `b`, which is stale"]);
    assert_eq!(by("e").reasons, vec!["input `a` changed"]);
}

#[test]
fn independent_branches_run_in_parallel() {
    // Each branch waits for the other to start before it finishes: with two jobs both meet,
    // which only happens if they ran at the same time. The limit only matters when they don't.
    let m = r#"
[stages.a]
kind = "transform"
inputs = { a = "./input.txt" }
await_start = "b"
await_ms = AWAIT
[stages.b]
kind = "transform"
inputs = { a = "./other.txt" }
await_start = "a"
await_ms = AWAIT
"#;
    let f = Fixture::new(&m.replace("AWAIT", "60000"));
    let r = f.run_with(&RunOptions { jobs: 2, ..Default::default() });
    assert!(r.ok());
    let meeting = |r: &avatar_engine::RunReport, s: &str| -> serde_json::Value {
        let dir = r.stage(s).unwrap().artifact.clone().unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("meeting.json")).unwrap()).unwrap()
    };
    assert_eq!(meeting(&r, "a")["met"], true, "a finished without b having started: {:?}", f.events.all());
    assert_eq!(meeting(&r, "b")["met"], true, "b finished without a having started: {:?}", f.events.all());
    assert_eq!(f.events.max_overlap(), 2, "{:?}", f.events.all());

    // With one job they serialise: the first to start gives up waiting for the other, which
    // starts only after it ended.
    let f = Fixture::new(&m.replace("AWAIT", "200"));
    let r = f.run_with(&RunOptions { jobs: 1, ..Default::default() });
    assert!(r.ok());
    assert_eq!(f.events.max_overlap(), 1, "{:?}", f.events.all());
    assert_eq!(meeting(&r, "a")["met"], false, "{:?}", f.events.all());
    assert_eq!(meeting(&r, "b")["met"], true, "{:?}", f.events.all());
    let started: Vec<Event> = f.events.all().into_iter().filter(|e| matches!(e, Event::Started(_))).collect();
    assert_eq!(started, vec![Event::Started("a".into()), Event::Started("b".into())]);
}
