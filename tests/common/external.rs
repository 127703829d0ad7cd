//! Programs some tests drive when they are installed (headless Chromium), shared by the test
//! binaries that include this file. Each binary uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Skip a test whose tool is missing here, but fail it in CI, where scripts/install-test-deps
/// installs every tool. Returns true (skipped) so callers can `return`.
pub fn skip_or_fail(what: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required in CI");
    }
    eprintln!("SKIPPED: {what} is not available here");
    true
}

/// The first Chromium-like browser on PATH.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Run `browser` headless on `target` with a fresh `profile` and the caller's `extra` flags.
/// Without the background-networking flags Chromium keeps reaching for the network, which is
/// closed here.
pub fn headless(browser: &str, profile: &Path, extra: &[&str], target: &str) -> Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(target)
        .output()
        .unwrap()
}
