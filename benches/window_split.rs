//! window + split throughput on a synthetic history (target: 1,000,000 messages in <= 2 s on
//! 2 cores). Run: `cargo bench --bench window_split` (optionally `-- <messages>`).
//! Prints one table; each row is the best and the median of several runs.

use std::time::{Duration, Instant};

use avatar::stages::common::jsonl::{read_jsonl, write_jsonl};
use avatar::stages::common::message::Message;
use avatar::stages::common::message_table;
use avatar::stages::common::sample::Sample;
use avatar::stages::split::{SplitParams, split_samples};
use avatar::stages::window::{WindowParams, build_samples};

#[path = "../tests/window_split/corpus.rs"]
mod corpus;

const RUNS: usize = 5;

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        last = Some(out);
    }
    times.sort();
    (times[0], times[runs / 2], last.expect("at least one run"))
}

fn row(name: &str, best: Duration, median: Duration, items: usize, unit: &str) {
    println!(
        "| {name:<36} | {:>9.1} | {:>9.1} | {:>13.0} {unit:<8} |",
        best.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        items as f64 / best.as_secs_f64()
    );
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let t = Instant::now();
    let messages: Vec<Message> = corpus::corpus(n, 500, 2024);
    let generated = t.elapsed();
    let window_params = WindowParams { include_groups: true, ..Default::default() };
    let split_params = SplitParams::default();

    println!(
        "window + split, {n} synthetic messages in {} chats (generated in {:.0} ms), rayon threads: {}",
        n.div_ceil(500),
        generated.as_secs_f64() * 1e3,
        rayon::current_num_threads()
    );
    println!("| {:<36} | {:>9} | {:>9} | {:>22} |", "step", "best ms", "median ms", "throughput");
    println!("|{:-<38}|{:-<11}|{:-<11}|{:-<24}|", "", "", "", "");

    let (wb, wm, windowed) = time(RUNS, || build_samples(&messages, &window_params).expect("valid params"));
    row("window (build_samples)", wb, wm, n, "msg/s");
    let samples = windowed.samples;
    let (sb, sm, _) = time(RUNS, || split_samples(samples.clone(), &split_params, 7).expect("valid params"));
    // The clone is part of the timed closure; time it alone and report split without it.
    let (cb, _, _) = time(RUNS, || samples.clone());
    row("split (split_samples)", sb.saturating_sub(cb), sm.saturating_sub(cb), samples.len(), "sample/s");
    let (tb, tm, splits) = time(RUNS, || {
        let w = build_samples(&messages, &window_params).expect("valid params");
        split_samples(w.samples, &split_params, 7).expect("valid params")
    });
    row("window + split (end to end, memory)", tb, tm, n, "msg/s");

    // File I/O as the stages do it, for context (not part of the 2 s target).
    let dir = tempfile::tempdir().expect("temp dir");
    let msg_path = dir.path().join("messages.db");
    let (wrb, wrm, _) = time(3, || message_table::write(&msg_path, &messages).expect("write"));
    row("write messages.db (normalise)", wrb, wrm, n, "msg/s");
    let (rb, rm, _) = time(3, || message_table::read(&msg_path).expect("read"));
    row("read messages.db (window)", rb, rm, n, "msg/s");
    let sample_path = dir.path().join("samples.jsonl");
    let (swb, swm, _) = time(3, || write_jsonl(&sample_path, &samples).expect("write"));
    row("write samples.jsonl", swb, swm, samples.len(), "sample/s");
    let (srb, srm, _) = time(3, || read_jsonl::<Sample>(&sample_path).expect("read"));
    row("read samples.jsonl", srb, srm, samples.len(), "sample/s");

    println!();
    println!(
        "samples: {} (window {}, quote {}), train/val/test = {}/{}/{}; target: window + split <= 2000 ms -> {}",
        samples.len(),
        windowed.stats.samples_window,
        windowed.stats.samples_quote,
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        if tb.as_secs_f64() <= 2.0 { "met" } else { "NOT met" }
    );
}
