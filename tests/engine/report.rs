//! `avatar report` on a test pipeline: self-contained, shows every stage and what happened.

use avatar::report::{ReportOptions, write_report};

use crate::fixture::{DIAMOND, Fixture};

#[test]
fn report_shows_dag_states_and_metrics() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("suffix = \"-b\"", "suffix = \"-B\""));
    f.run();
    let out = f.path("report.html");
    write_report(&f.load(), &f.registry, &ReportOptions { examples: false, out: Some(out.clone()) }).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for stage in ["a", "b", "c", "d", "e"] {
        assert!(html.contains(&format!("<td>{stage}</td>")), "stage {stage} missing");
    }
    // b and d re-ran in the last run; the rest came from the cache.
    assert!(html.contains("<td class=\"ran\">ran"), "{html}");
    assert!(html.contains("<td class=\"cached\">cached"));
    assert!(html.contains("chars=12"), "metrics of d");
    assert!(html.contains("<svg"), "the DAG is drawn inline");
    assert!(
        !html.contains("http://") && !html.contains("https://") || html.contains("http://www.w3.org/2000/svg"),
        "no external resources"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
}
