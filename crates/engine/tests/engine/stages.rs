//! Test-only stage kinds: they exercise the engine and are never shipped as product stages.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use avatar_engine::stage::{ParamError, parse_params};
use avatar_engine::{InputSpec, Metrics, OutputSpec, Registry, Stage, StageContext, StageInfo};
use serde::{Deserialize, Serialize};

/// Names of the stages that actually ran, in completion order.
pub type Ran = Arc<Mutex<Vec<String>>>;

/// What happened, in the order it happened: stages starting and ending, and what tests note
/// between them. Evidence of overlap (or of its absence) that does not depend on timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started(String),
    Ended(String),
    Note(String),
}

#[derive(Default)]
pub struct EventLog {
    events: Mutex<Vec<Event>>,
    changed: Condvar,
}

pub type Events = Arc<EventLog>;

impl EventLog {
    pub fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.changed.notify_all();
    }

    pub fn all(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }

    /// Block until `stage` has started, for at most `limit`; whether it did.
    pub fn wait_started(&self, stage: &str, limit: Duration) -> bool {
        let started = |events: &Vec<Event>| events.iter().any(|e| *e == Event::Started(stage.to_string()));
        let events = self.events.lock().unwrap();
        let (events, _) = self.changed.wait_timeout_while(events, limit, |e| !started(e)).unwrap();
        started(&events)
    }

    /// The most stages that were running at the same time.
    pub fn max_overlap(&self) -> usize {
        let (mut now, mut most) = (0usize, 0usize);
        for e in self.all() {
            match e {
                Event::Started(_) => now += 1,
                Event::Ended(_) => now -= 1,
                Event::Note(_) => {}
            }
            most = most.max(now);
        }
        most
    }
}

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
    /// Before finishing, wait for this stage to start (at most `await_ms`): two stages that
    /// await each other both finish having met only if the engine ran them at the same time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub await_start: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub await_ms: u64,
    /// An inline table (manifest errors inside one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<Nested>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nested {
    pub level: u32,
    pub tag: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reads input `a` (and optional `b`), writes `out/data.txt`.
pub struct Transform {
    pub info: &'static StageInfo,
    pub ran: Ran,
    pub events: Events,
}

const INPUTS: &[InputSpec] = &[
    InputSpec { name: "a", required: true, help: "text to transform" },
    InputSpec { name: "b", required: false, help: "more text" },
];
const OUTPUTS: &[OutputSpec] = &[
    OutputSpec { name: "data", path: "data.txt", help: "the transformed text" },
    OutputSpec { name: "meeting", path: "meeting.json", help: "whether the awaited stage started meanwhile" },
];

impl Transform {
    pub fn new(kind: &'static str, version: u32, ran: Ran, events: Events) -> Transform {
        let info = Box::leak(Box::new(StageInfo {
            kind,
            version,
            summary: "test transform",
            inputs: INPUTS,
            outputs: OUTPUTS,
        }));
        Transform { info, ran, events }
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
        self.events.push(Event::Started(ctx.stage_name.to_string()));
        let result = self.transform(ctx, &p);
        self.events.push(Event::Ended(ctx.stage_name.to_string()));
        result
    }
}

impl Transform {
    fn transform(&self, ctx: &StageContext, p: &TransformParams) -> anyhow::Result<Metrics> {
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
        let meeting = match &p.await_start {
            Some(other) => {
                let met = self.events.wait_started(other, Duration::from_millis(p.await_ms));
                serde_json::json!({ "awaited": other, "met": met })
            }
            None => serde_json::json!({}),
        };
        anyhow::ensure!(!p.fail, "asked to fail (test)");
        std::fs::write(&out, &text)?;
        std::fs::write(ctx.output("meeting", self.info)?, serde_json::to_vec(&meeting)?)?;
        self.ran.lock().unwrap().push(ctx.stage_name.to_string());
        let mut m = BTreeMap::new();
        m.insert("chars".to_string(), serde_json::json!(text.chars().count()));
        Ok(m)
    }
}

/// A registry with the `transform` kind at `version`, and a `transform2` kind.
pub fn registry(version: u32) -> (Registry, Ran) {
    let (r, ran, _) = registry_with_events(version);
    (r, ran)
}

/// [`registry`], and the log its stages write their start and end into.
pub fn registry_with_events(version: u32) -> (Registry, Ran, Events) {
    let ran: Ran = Arc::default();
    let events: Events = Arc::default();
    let mut r = Registry::new();
    r.add(Transform::new("transform", version, ran.clone(), events.clone()));
    r.add(Transform::new("transform2", 1, ran.clone(), events.clone()));
    (r, ran, events)
}
