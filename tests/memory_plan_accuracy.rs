//! The memory planner's estimate against the peak RSS of a real training step, on two shapes
//! that differ in everything the planner models (layer count and width, f32 vs a bf16 + Q4_0
//! base, checkpointing off and on, sequence length). Each step runs in a child process of this
//! test binary, so each peak is its own; the weights are random, nothing is downloaded.

#[allow(dead_code)]
#[path = "../benches/shared/qlora_run.rs"]
mod qlora_run;
#[path = "../benches/shared/support.rs"]
mod support;

use avatar::runtime::held::{BaseQuant, HoldSpec};
use candle_core::DType;
use qlora_run::{Config, Shape, run_one};

/// Qwen2.5-0.5B's widths with half its layers.
const HALF_05B: Shape =
    Shape { vocab: 151936, hidden: 896, inter: 4864, layers: 12, heads: 14, kv_heads: 2, tie: true };
/// Qwen2.5-1.5B's widths with six layers.
const SHORT_15B: Shape =
    Shape { vocab: 151936, hidden: 1536, inter: 8960, layers: 6, heads: 12, kv_heads: 2, tie: true };

fn configs() -> [Config; 2] {
    let one = |name, shape, spec, batch, checkpoint| Config {
        name,
        shape,
        spec,
        r: 8,
        batch,
        // A run's peak, not one step's: the allocator's high-water mark grows over the first
        // steps (a single step measured 200–300 MiB lower).
        steps: 1,
        warmup: true,
        checkpoint,
    };
    [
        one("half-0.5b-f32", &HALF_05B, HoldSpec::F32, (1, 128), false),
        one(
            "short-1.5b-q4_0",
            &SHORT_15B,
            HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q4_0) },
            (2, 192),
            true,
        ),
    ]
}

const CHILD_ENV: &str = "AVATAR_PLAN_ACCURACY_CONFIG";

/// The child's half: one configuration, its figures as a JSON line on stdout.
#[test]
#[ignore = "run by planner_estimate_is_within_15_percent_of_the_measured_peak in a child process"]
fn one_training_step_in_this_process() {
    let name = std::env::var(CHILD_ENV).expect("the parent test names a configuration");
    let c = configs().into_iter().find(|c| c.name == name).expect("a known configuration");
    // On a line of its own: libtest writes "test <name> ... " before the test's output.
    println!("\n{}", run_one(&c));
}

#[test]
fn planner_estimate_is_within_15_percent_of_the_measured_peak() {
    let exe = std::env::current_exe().unwrap();
    for c in configs() {
        let out = std::process::Command::new(&exe)
            .args(["--ignored", "--exact", "one_training_step_in_this_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, c.name)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let row: serde_json::Value =
            text.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| {
                panic!("{}: no figures ({}): {}", c.name, out.status, String::from_utf8_lossy(&out.stderr))
            });
        let (peak, plan) = (row["peak_mb"].as_f64().unwrap(), row["plan_mb"].as_f64().unwrap());
        let off = plan / peak - 1.0;
        eprintln!(
            "{}: planned {plan:.0} MiB (weights, adapters + optimiser, activations, logits, overhead: {}), \
             loaded {:.0} MiB, measured peak {peak:.0} MiB ({:+.1} %)",
            c.name,
            row["plan_parts_mb"],
            row["loaded_mb"].as_f64().unwrap_or(f64::NAN),
            off * 100.0
        );
        assert!(row["loss"].as_f64().is_some_and(f64::is_finite), "{}: the step trained: {row}", c.name);
        assert!(
            off.abs() <= 0.15,
            "{}: planned {plan:.0} MiB vs measured {peak:.0} MiB ({:+.1} %)",
            c.name,
            off * 100.0
        );
    }
}
