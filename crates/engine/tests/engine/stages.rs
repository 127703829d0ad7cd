//! Test-only stage kinds: they exercise the engine and are never shipped as product stages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use avatar_engine::stage::{ParamError, parse_params};
use avatar_engine::{InputSpec, Metrics, OutputSpec, Registry, Stage, StageContext, StageInfo};
use serde::{Deserialize, Serialize};

/// Names of the stages that actually ran, in completion order.
pub type Ran = Arc<Mutex<Vec<String>>>;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformParams {
    /// "identity", "upper" or "reverse".
    pub op: String,
    /// Appended to the output.
    pub suffix: String,
    /// Does not change the output: tests early cut-off.
    pub note: String,
    pub sleep_ms: u64,
    pub fail: bool,
    /// Write half the output, create this marker file, then sleep (for kill tests).
    pub hang_marker: Option<String>,
    pub count: u32,
    /// Track input `b` as a dependency without reading it (big-file benchmarks).
    pub skip_b: bool,
}

/// Reads input `a` (and optional `b`), writes `out/data.txt`.
pub struct Transform {
    pub info: &'static StageInfo,
    pub ran: Ran,
}

const INPUTS: &[InputSpec] = &[
    InputSpec { name: "a", required: true, help: "text to transform" },
    InputSpec { name: "b", required: false, help: "more text" },
];
const OUTPUTS: &[OutputSpec] = &[
    OutputSpec { name: "data", path: "data.txt", help: "the transformed text" },
    OutputSpec { name: "timing", path: "timing.json", help: "when the stage ran" },
];

impl Transform {
    pub fn new(kind: &'static str, version: u32, ran: Ran) -> Transform {
        let info = Box::leak(Box::new(StageInfo {
            kind,
            version,
            summary: "test transform",
            inputs: INPUTS,
            outputs: OUTPUTS,
        }));
        Transform { info, ran }
    }
}

fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    if path.is_dir() { Ok(std::fs::read_to_string(path.join("data.txt"))?) } else { Ok(std::fs::read_to_string(path)?) }
}

impl Stage for Transform {
    fn info(&self) -> &'static StageInfo {
        self.info
    }

    fn globals(&self) -> &'static [&'static str] {
        &["seed"]
    }

    fn canonical_params(&self, params: &toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: TransformParams = parse_params(params)?;
        if !["", "identity", "upper", "reverse"].contains(&p.op.as_str()) {
            return Err(ParamError { path: "op".into(), message: format!("unknown op `{}`", p.op) });
        }
        Ok(serde_json::to_value(&p).unwrap())
    }

    fn run(&self, ctx: &StageContext, params: &serde_json::Value) -> anyhow::Result<Metrics> {
        let p: TransformParams = serde_json::from_value(params.clone())?;
        let start = now_ms();
        let mut text = read_text(ctx.input("a")?)?;
        if let Some(b) = ctx.optional_input("b").filter(|_| !p.skip_b) {
            text.push_str(&read_text(b)?);
        }
        let text = match p.op.as_str() {
            "upper" => text.to_uppercase(),
            "reverse" => text.chars().rev().collect(),
            _ => text,
        } + &p.suffix;
        let out = ctx.output("data", self.info)?;
        if let Some(marker) = &p.hang_marker {
            std::fs::write(&out, &text[..text.len() / 2])?;
            std::fs::write(marker, ctx.stage_name)?;
            std::thread::sleep(Duration::from_secs(60));
        }
        if p.sleep_ms > 0 {
            let until = Instant::now() + Duration::from_millis(p.sleep_ms);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        anyhow::ensure!(!p.fail, "asked to fail (test)");
        std::fs::write(&out, &text)?;
        // Only timed stages record wall-clock times, so other outputs stay deterministic.
        let timing = if p.sleep_ms > 0 { serde_json::to_vec(&(start, now_ms()))? } else { b"[]".to_vec() };
        std::fs::write(ctx.output("timing", self.info)?, timing)?;
        self.ran.lock().unwrap().push(ctx.stage_name.to_string());
        let mut m = BTreeMap::new();
        m.insert("chars".to_string(), serde_json::json!(text.chars().count()));
        Ok(m)
    }
}

pub fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// A registry with the `transform` kind at `version`, and a `transform2` kind.
pub fn registry(version: u32) -> (Registry, Ran) {
    let ran: Ran = Arc::default();
    let mut r = Registry::new();
    r.add(Transform::new("transform", version, ran.clone()));
    r.add(Transform::new("transform2", 1, ran.clone()));
    (r, ran)
}
