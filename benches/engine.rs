//! Engine benchmark: no-op `avatar run` / `avatar status` on a 10-stage pipeline (whole
//! process, as a user runs it), `make` on the same shape, and blake3 throughput on 1 GiB.
//!
//!     cargo bench --bench engine
//!
//! The binary doubles as an `avatar` CLI with test stage kinds when AVATAR_BENCH_CLI=1.

#[path = "../crates/engine/tests/engine/stages.rs"]
#[allow(dead_code)]
mod stages;

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 30;

fn main() -> ExitCode {
    if std::env::var_os("AVATAR_BENCH_CLI").is_some() {
        return avatar::cli::main_with(stages::registry(1).0);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let big_gib: u64 = std::env::var("AVATAR_BENCH_GIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    write_big_file(&dir.path().join("big.bin"), big_gib << 30);
    std::fs::write(dir.path().join("input.txt"), "hello").unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), ten_stage_manifest()).unwrap();
    write_makefile(dir.path());

    let exe = std::env::current_exe().unwrap();
    let avatar = |args: &[&str]| {
        let ok = Command::new(&exe)
            .args(args)
            .current_dir(dir.path())
            .env("AVATAR_BENCH_CLI", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "avatar {args:?} failed");
    };

    let cold = time(|| avatar(&["run"]));
    // Input stamps younger than 2 s are not trusted (racy-clean rule); let them settle once.
    std::thread::sleep(Duration::from_millis(2100));
    let settle = time(|| avatar(&["run"]));
    let run = median(RUNS, || avatar(&["run"]));
    let status = median(RUNS, || avatar(&["status"]));
    let make_ok = Command::new("make").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    let make = make_ok.then(|| {
        Command::new("make").arg("-s").current_dir(dir.path()).status().unwrap();
        median(RUNS, || {
            assert!(
                Command::new("make")
                    .arg("-s")
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            );
        })
    });

    let big = dir.path().join("big.bin");
    let bytes = std::fs::metadata(&big).unwrap().len() as f64;
    let par = best_of(3, || {
        avatar::engine::hashing::hash_file(&big).unwrap();
    });
    let single = best_of(1, || {
        let mut h = blake3::Hasher::new();
        h.update_mmap(&big).unwrap();
        h.finalize();
    });

    println!(
        "engine benchmark ({} CPUs, load {})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load()
    );
    println!("{:<52} {:>12}", "measure", "value");
    println!("{:<52} {:>9.1} ms", "cold `avatar run`, 10 stages (incl. hashing big input)", ms(cold));
    println!("{:<52} {:>9.1} ms", "first no-op run (fills the hash cache)", ms(settle));
    println!("{:<52} {:>9.1} ms", format!("no-op `avatar run`, median of {RUNS}"), ms(run));
    println!("{:<52} {:>9.1} ms", format!("`avatar status`, median of {RUNS}"), ms(status));
    match make {
        Some(m) => println!("{:<52} {:>9.1} ms", format!("no-op `make`, same 10-stage shape, median of {RUNS}"), ms(m)),
        None => println!("{:<52} {:>12}", "no-op `make`", "not installed"),
    }
    println!(
        "{:<52} {:>7.2} GB/s",
        format!("blake3 {big_gib} GiB, mmap + rayon (engine)"),
        bytes / par.as_secs_f64() / 1e9
    );
    println!("{:<52} {:>7.2} GB/s", format!("blake3 {big_gib} GiB, one thread"), bytes / single.as_secs_f64() / 1e9);
    ExitCode::SUCCESS
}

/// a → b → c → d → e → f → g, with h, i, j fanning out of c and a 1 GiB file tracked by b.
fn ten_stage_manifest() -> String {
    let mut m = String::from("[pipeline]\nseed = 1\n");
    let chain = ["a", "b", "c", "d", "e", "f", "g"];
    for (i, s) in chain.iter().enumerate() {
        let input = if i == 0 { "./input.txt".to_string() } else { format!("{}.data", chain[i - 1]) };
        let extra = if *s == "b" { ", b = \"./big.bin\" }\nskip_b = true" } else { " }" };
        m += &format!("[stages.{s}]\nkind = \"transform\"\ninputs = {{ a = \"{input}\"{extra}\nsuffix = \"{s}\"\n");
    }
    for s in ["h", "i", "j"] {
        m += &format!(
            "[stages.{s}]\nkind = \"transform\"\ninputs = {{ a = \"c.data\" }}\nop = \"upper\"\nsuffix = \"{s}\"\n"
        );
    }
    m
}

fn write_makefile(dir: &Path) {
    let mut mk = String::from("all: g.out h.out i.out j.out\n");
    mk += "a.out: input.txt\n\tcp input.txt a.out\n";
    mk += "b.out: a.out big.bin\n\tcp a.out b.out\n";
    for (s, up) in [("c", "b"), ("d", "c"), ("e", "d"), ("f", "e"), ("g", "f"), ("h", "c"), ("i", "c"), ("j", "c")] {
        mk += &format!("{s}.out: {up}.out\n\tcp {up}.out {s}.out\n");
    }
    std::fs::write(dir.join("Makefile"), mk).unwrap();
}

fn write_big_file(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut written = 0;
    while written < len {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
        written += block.len() as u64;
    }
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..n).map(|_| time(&mut f)).collect();
    v.sort();
    v[n / 2]
}

fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n).map(|_| time(&mut f)).min().unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().next().unwrap_or("?").to_string())
        .unwrap_or_default()
}
