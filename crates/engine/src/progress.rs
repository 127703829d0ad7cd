//! Progress reporting handed to stages: indicatif bars on a terminal, silence under `--json`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    stage: String,
}

impl Progress {
    /// Bars drawn to stderr when `enabled` and stderr is a terminal.
    pub fn new(stage: &str, multi: Option<MultiProgress>) -> Self {
        Progress { multi, stage: stage.to_string() }
    }

    /// A progress reporter that draws nothing (tests, `--json`).
    pub fn hidden(stage: &str) -> Self {
        Progress { multi: None, stage: stage.to_string() }
    }

    /// A bar over `total` units; the caller sets messages (loss, tok/s) with `set_message`.
    pub fn bar(&self, total: u64, unit: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        };
        let bar = multi.add(ProgressBar::new(total));
        let template =
            format!("{{prefix:>14.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}}, eta {{eta}})");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(self.stage.clone());
        bar
    }

    /// A one-line status note for work without a known length.
    pub fn note(&self, message: &str) {
        if let Some(multi) = &self.multi {
            let _ = multi.println(format!("{:>14} {message}", self.stage));
        }
    }
}
