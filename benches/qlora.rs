//! Training with the frozen base held in bf16 or quantized (QLoRA), on random weights of real
//! shapes (nothing downloaded). `cargo bench --bench qlora` prints two tables:
//!
//! - `speed`: a LoRA r8 step on Qwen2.5-0.5B's shape, batch 1×128, with the base held in f32,
//!   bf16, Q8_0 and Q4_0, and PyTorch + PEFT (f32) on the same shape in the same run when
//!   `AVATAR_BENCH_PYTHON` names a Python with torch, transformers and peft (same threads).
//! - `7b`: a LoRA r16 step on all linear layers of Qwen2.5-7B's shape, batch 1×256, base in
//!   Q4_0, Q8_0 and bf16: peak RSS (the CPU stand-in for device memory) and step time. Weights
//!   are made one matrix at a time straight into the held format; a 7B in f32 does not fit a
//!   24 GB machine.
//!
//! `cpu s` is a step's CPU time over all threads: another tenant on a shared machine stretches
//! wall time but hardly this, so it compares avatar's rows (what each held format costs) when
//! the wall times are disturbed.
//!
//! Every configuration runs in a process of its own (`qlora one <name>`), so each peak RSS is
//! its own. Args: `speed`, `7b`, or configuration names (`0.5b-q4_0`, `7b-bf16`, `torch`, …).

use std::process::Command;

use avatar::runtime::held::{BaseQuant, HoldSpec};
use candle_core::DType;

#[path = "shared/qlora_run.rs"]
mod qlora_run;
#[path = "shared/support.rs"]
mod support;
use qlora_run::{Config, QWEN_05B, QWEN_7B, run_one};

fn configs() -> Vec<Config> {
    let spec = |dtype, quant| HoldSpec { dtype, quant };
    let small = |name, s| Config {
        name,
        shape: &QWEN_05B,
        spec: s,
        r: 8,
        batch: (1, 128),
        steps: 3,
        warmup: true,
        checkpoint: false,
    };
    // One step each (a 7B step takes minutes on two cores), checkpointing on.
    let big = |name, s| Config {
        shape: &QWEN_7B,
        r: 16,
        batch: (1, 256),
        steps: 1,
        warmup: false,
        checkpoint: true,
        ..small(name, s)
    };
    vec![
        small("0.5b-f32", HoldSpec::F32),
        small("0.5b-bf16", spec(DType::BF16, None)),
        small("0.5b-q8_0", spec(DType::BF16, Some(BaseQuant::Q8_0))),
        small("0.5b-q4_0", spec(DType::BF16, Some(BaseQuant::Q4_0))),
        big("7b-q4_0", spec(DType::BF16, Some(BaseQuant::Q4_0))),
        big("7b-q8_0", spec(DType::BF16, Some(BaseQuant::Q8_0))),
        big("7b-bf16", spec(DType::BF16, None)),
    ]
}

/// The last JSON line a child printed, or why there is none.
fn last_json(out: std::process::Output, what: &str) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        Some(v) => Ok(v),
        None => Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
    }
}

fn torch_row(python: &str) -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/qlora_peft.py");
    let out = Command::new(python)
        .args([script, &QWEN_05B.json(), "8", "1", "128", "3"])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    last_json(out, "PyTorch + PEFT")
}

fn main() {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { avatar::runtime::device::configure_cpu_threads() };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // cargo passes `--bench`; other flags are not ours.
    let args: Vec<String> = raw.iter().filter(|a| !a.starts_with('-')).cloned().collect();
    let names: Vec<&str> = configs().iter().map(|c| c.name).collect();
    let known = |a: &str| ["speed", "7b", "torch", "one"].contains(&a) || names.contains(&a);
    let help = raw.iter().any(|a| a == "-h" || a == "--help");
    if help || args.iter().any(|a| !known(a)) {
        eprintln!("usage: qlora [speed | 7b | torch | CONFIG ...]  (none: everything, the 7B rows take minutes each)");
        eprintln!("configurations: {}", names.join(", "));
        std::process::exit(if help { 0 } else { 2 });
    }
    if args.first().map(String::as_str) == Some("one") {
        let c = configs().into_iter().find(|c| Some(c.name) == args.get(1).map(String::as_str)).expect("a config name");
        println!("{}", run_one(&c));
        return;
    }
    let want = |c: &Config| {
        args.is_empty()
            || args.iter().any(|a| {
                a == c.name || (a == "speed" && c.name.starts_with("0.5b")) || (a == "7b" && c.name.starts_with("7b"))
            })
    };
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for c in configs().iter().filter(|c| want(c)) {
        eprintln!("qlora: {} …", c.name);
        let out = Command::new(&exe).args(["one", c.name]).output().expect("re-run the bench binary");
        match last_json(out, c.name) {
            Ok(v) => rows.push(v),
            Err(e) => eprintln!("qlora: {e}"),
        }
        if c.name == "0.5b-f32" {
            // The reference, right after avatar's f32 row: the same shape, threads and machine.
            match std::env::var("AVATAR_BENCH_PYTHON") {
                Ok(py) if args.is_empty() || args.iter().any(|a| a == "speed" || a == "torch") => {
                    match torch_row(&py) {
                        Ok(v) => rows.push(v),
                        Err(e) => eprintln!("qlora: {e}"),
                    }
                }
                _ => eprintln!("qlora: AVATAR_BENCH_PYTHON unset: no PyTorch + PEFT row"),
            }
        }
    }
    let torch = rows.iter().find(|r| r["name"] == "torch-peft-f32");
    println!(
        "{:<16} {:<12} {:>3} {:>6} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "config",
        "base",
        "r",
        "batch",
        "step s",
        "cpu s",
        "tok/s",
        "frozen MiB",
        "loaded MiB",
        "peak MiB",
        "plan MiB",
        "÷torch"
    );
    for r in &rows {
        // Torch's step over this row's, in wall time: PyTorch's OpenMP threads spin while they
        // wait, so CPU seconds do not compare across the two. Only the 0.5B rows share the
        // reference's shape.
        let ratio = match (torch.and_then(|t| t["step_s"].as_f64()), r["step_s"].as_f64(), r["name"].as_str()) {
            (Some(t), Some(x), Some(n)) if !n.starts_with("7b") => format!("{:.2}", t / x),
            _ => "-".into(),
        };
        println!(
            "{:<16} {:<12} {:>3} {:>6} {:>9.2} {:>8.2} {:>8.1} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8}",
            r["name"].as_str().unwrap_or("?"),
            r["base"].as_str().unwrap_or("?"),
            r["r"],
            r["batch"].as_str().unwrap_or("?"),
            r["step_s"].as_f64().unwrap_or(f64::NAN),
            r["cpu_s"].as_f64().unwrap_or(f64::NAN),
            r["tok_s"].as_f64().unwrap_or(f64::NAN),
            r["frozen_mb"].as_f64().unwrap_or(f64::NAN),
            r["loaded_mb"].as_f64().unwrap_or(f64::NAN),
            r["peak_mb"].as_f64().unwrap_or(f64::NAN),
            r["plan_mb"].as_f64().unwrap_or(f64::NAN),
            ratio,
        );
    }
}
