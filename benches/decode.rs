//! Decode/prefill speed of the quantized decoder on a Qwen2.5-0.5B-shaped GGUF with random
//! weights, next to llama.cpp (llama-cpp-python) on the same file when it is importable.
//!
//! `cargo bench --bench decode` — prints a table. Env: BENCH_PROMPT (128), BENCH_DECODE (64),
//! BENCH_CLIENTS (8), BENCH_TYPES ("q8_0,q4_0"), BENCH_THREADS (2, both engines).

use std::path::{Path, PathBuf};
use std::time::Instant;

use avatar::quant::convert::write_gguf;
use avatar::quant::{QModel, SeqStep, parse_type};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

const HIDDEN: usize = 896;
const LAYERS: usize = 24;
const HEADS: usize = 14;
const KV_HEADS: usize = 2;
const INTER: usize = 4864;
const VOCAB: usize = 151936;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Src {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

fn random(rows: usize, cols: usize, seed: u64, scale: f32) -> Src {
    let data: Vec<f32> = (0..rows)
        .into_par_iter()
        .flat_map_iter(|r| {
            let mut s = (seed ^ (r as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15)) | 1;
            (0..cols).map(move |_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
        })
        .collect();
    Src { data, rows, cols }
}

fn ones(n: usize) -> Src {
    Src { data: vec![1.0; n], rows: 1, cols: n }
}

impl Src {
    fn q(self, ty: GgmlDType) -> QTensor {
        let shape: Vec<usize> = if self.rows == 1 { vec![self.cols] } else { vec![self.rows, self.cols] };
        QTensor::quantize(&Tensor::from_vec(self.data, shape, &Device::Cpu).unwrap(), ty).unwrap()
    }
}

/// Write (once, cached under target/) the 0.5B-shaped random GGUF of type `ty`.
fn model_file(ty: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("qwen05-random-v1-{ty}.gguf"));
    if path.exists() {
        return path;
    }
    eprintln!("writing {} ...", path.display());
    let t = parse_type(ty).unwrap();
    let f32t = GgmlDType::F32;
    let mut tensors: Vec<(String, QTensor)> = vec![("token_embd.weight".into(), random(VOCAB, HIDDEN, 1, 0.5).q(t))];
    let kvd = KV_HEADS * HIDDEN / HEADS;
    for i in 0..LAYERS {
        let s = 100 + i as u64 * 16;
        let b = format!("blk.{i}");
        tensors.push((format!("{b}.attn_norm.weight"), ones(HIDDEN).q(f32t)));
        tensors.push((format!("{b}.attn_q.weight"), random(HIDDEN, HIDDEN, s + 1, 0.05).q(t)));
        tensors.push((format!("{b}.attn_q.bias"), random(1, HIDDEN, s + 2, 0.01).q(f32t)));
        tensors.push((format!("{b}.attn_k.weight"), random(kvd, HIDDEN, s + 3, 0.05).q(t)));
        tensors.push((format!("{b}.attn_k.bias"), random(1, kvd, s + 4, 0.01).q(f32t)));
        tensors.push((format!("{b}.attn_v.weight"), random(kvd, HIDDEN, s + 5, 0.05).q(t)));
        tensors.push((format!("{b}.attn_v.bias"), random(1, kvd, s + 6, 0.01).q(f32t)));
        tensors.push((format!("{b}.attn_output.weight"), random(HIDDEN, HIDDEN, s + 7, 0.05).q(t)));
        tensors.push((format!("{b}.ffn_norm.weight"), ones(HIDDEN).q(f32t)));
        tensors.push((format!("{b}.ffn_gate.weight"), random(INTER, HIDDEN, s + 8, 0.05).q(t)));
        tensors.push((format!("{b}.ffn_up.weight"), random(INTER, HIDDEN, s + 9, 0.05).q(t)));
        tensors.push((format!("{b}.ffn_down.weight"), random(HIDDEN, INTER, s + 10, 0.02).q(t)));
    }
    tensors.push(("output_norm.weight".into(), ones(HIDDEN).q(f32t)));

    // GPT-2 byte tokens, one merge, ChatML specials, then unique padding up to the vocab.
    let mut tokens: Vec<String> = Vec::with_capacity(VOCAB);
    let mut extra = 0;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(256 + extra - 1).unwrap()
        };
        tokens.push(c.to_string());
    }
    tokens.push("Ġt".into());
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    let mut types: Vec<i32> = vec![1; 257];
    types.extend([3, 3, 3]);
    while tokens.len() < VOCAB {
        tokens.push(format!("[PAD{}]", tokens.len()));
        types.push(5);
    }
    let a = "qwen2";
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("qwen05-random".into())),
        ("general.file_type".into(), Value::U32(if ty == "q8_0" { 7 } else { 2 })),
        ("general.quantization_version".into(), Value::U32(2)),
        (format!("{a}.context_length"), Value::U32(32768)),
        (format!("{a}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{a}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(INTER as u32)),
        (format!("{a}.attention.head_count"), Value::U32(HEADS as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (format!("{a}.rope.freq_base"), Value::F32(1_000_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("Ġ t".into())])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(257)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(259)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let tmp = path.with_extension("tmp");
    write_gguf(&tmp, &meta, &tensors).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

struct Row {
    engine: &'static str,
    ty: String,
    prefill: f64,
    ttft_ms: f64,
    decode: f64,
    concurrent: Option<f64>,
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
        as u32
}

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + salt * 104729) % 150000).collect()
}

fn bench_ours(path: &Path, ty: &str, np: usize, nd: usize, clients: usize) -> Row {
    let m = QModel::load(path).unwrap();
    // Warm-up (page in weights, spin up rayon).
    let mut c = m.new_cache();
    m.forward(&mut [SeqStep { cache: &mut c, tokens: &prompt(8, 9) }]).unwrap();

    let p = prompt(np, 1);
    let mut cache = m.new_cache();
    let t0 = Instant::now();
    let logits = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &p }]).unwrap();
    let mut next = argmax(&logits[0]);
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..nd {
        let l = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[next] }]).unwrap();
        next = argmax(&l[0]);
    }
    let decode_s = t1.elapsed().as_secs_f64();

    // `clients` sequences prefilled together (32 tokens each), then decoded in lock-step batches,
    // which is what the server's continuous batching does with that many concurrent requests.
    let steps_n = (nd / 2).max(1);
    let prompts: Vec<Vec<u32>> = (0..clients).map(|i| prompt(32, i as u32 + 2)).collect();
    let mut caches: Vec<_> = (0..clients).map(|_| m.new_cache()).collect();
    let t2 = Instant::now();
    let mut steps: Vec<SeqStep> =
        caches.iter_mut().zip(&prompts).map(|(c, p)| SeqStep { cache: c, tokens: p }).collect();
    let mut nexts: Vec<u32> = m.forward(&mut steps).unwrap().iter().map(|l| argmax(l)).collect();
    for _ in 1..steps_n {
        let toks: Vec<[u32; 1]> = nexts.iter().map(|&t| [t]).collect();
        let mut steps: Vec<SeqStep> =
            caches.iter_mut().zip(&toks).map(|(c, t)| SeqStep { cache: c, tokens: t }).collect();
        nexts = m.forward(&mut steps).unwrap().iter().map(|l| argmax(l)).collect();
    }
    let conc_s = t2.elapsed().as_secs_f64();
    Row {
        engine: "avatar",
        ty: ty.into(),
        prefill: np as f64 / prefill_s,
        ttft_ms: prefill_s * 1000.0,
        decode: nd as f64 / decode_s,
        concurrent: Some((clients * steps_n) as f64 / conc_s),
    }
}

const LLAMA_PY: &str = r#"
import sys, time, json
from llama_cpp import Llama
path, np_, nd, th = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=1024, n_threads=th, n_threads_batch=th, n_batch=512, verbose=False)
toks = [(i * 7919 + 104729) % 150000 for i in range(np_)]
llm.eval([5, 6, 7, 8]); llm.reset()
t0 = time.perf_counter(); llm.eval(toks); t1 = time.perf_counter()
for i in range(nd):
    llm.eval([(i * 31) % 150000])
t2 = time.perf_counter()
print(json.dumps({"prefill_s": t1 - t0, "decode_s": t2 - t1}))
"#;

fn bench_llama(path: &Path, ty: &str, np: usize, nd: usize) -> Option<Row> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(LLAMA_PY)
        .arg(path)
        .arg(np.to_string())
        .arg(nd.to_string())
        .arg(rayon::current_num_threads().to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("llama.cpp not measured: {}", err.lines().last().unwrap_or("python3 failed"));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let (ps, ds) = (v["prefill_s"].as_f64()?, v["decode_s"].as_f64()?);
    Some(Row {
        engine: "llama.cpp",
        ty: ty.into(),
        prefill: np as f64 / ps,
        ttft_ms: ps * 1000.0,
        decode: nd as f64 / ds,
        concurrent: None,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Memory throughput of one FFN-shaped matvec (decode's hot loop), for kernel tuning.
fn micro() {
    use avatar::quant::kernels::{BlockKind, QuantizedActs, matmul_q};
    let rows = env("BENCH_MICRO_ROWS", INTER);
    for (kind, ty) in [(BlockKind::Q8_0, GgmlDType::Q8_0), (BlockKind::Q4_0, GgmlDType::Q4_0)] {
        let w = random(rows, HIDDEN, 5, 0.05).q(ty);
        let data = w.data().unwrap();
        let mut bytes = avatar::quant::hugebuf::HugeBuf::zeroed(data.len());
        bytes.copy_from_slice(&data);
        avatar::quant::kernels::repack(kind, &mut bytes, rows, HIDDEN);
        let x = random(1, HIDDEN, 6, 1.0).data;
        let acts = QuantizedActs::quantize(&x, HIDDEN);
        let mut out = vec![0f32; rows];
        let iters = (300 * INTER / rows).max(3);
        let t = Instant::now();
        for _ in 0..iters {
            matmul_q(kind, &bytes, rows, &acts, &mut out);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "micro {kind:?} {rows}x{HIDDEN}: {:.1} us/matvec, {:.1} GB/s",
            s / iters as f64 * 1e6,
            (bytes.len() * iters) as f64 / s / 1e9
        );
    }
}

fn main() {
    if std::env::var("BENCH_MICRO").is_ok() {
        micro();
        return;
    }
    // Both engines use the same thread count: BENCH_THREADS, default 2 (this machine's cores).
    let threads = env("BENCH_THREADS", 2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("rayon pool");
    let np = env("BENCH_PROMPT", 128);
    let nd = env("BENCH_DECODE", 64);
    let clients = env("BENCH_CLIENTS", 8);
    let types = std::env::var("BENCH_TYPES").unwrap_or_else(|_| "q8_0,q4_0".into());
    println!(
        "Qwen2.5-0.5B-shaped random GGUF (hidden {HIDDEN}, {LAYERS} layers, {HEADS}/{KV_HEADS} heads, ffn {INTER}, vocab {VOCAB}); \
         {} threads, kernels: {}; prompt {np}, decode {nd}, {clients} clients; load before: {}",
        rayon::current_num_threads(),
        avatar::quant::kernels::kernel_name(),
        loadavg()
    );
    let mut rows = Vec::new();
    for ty in types.split(',') {
        let path = model_file(ty);
        let ours = bench_ours(&path, ty, np, nd, clients);
        let theirs = bench_llama(&path, ty, np, nd);
        rows.push((ours, theirs));
    }
    println!(
        "\n| engine    | type | prefill tok/s | TTFT ms ({np} tok) | decode tok/s | {clients}-client tok/s | decode ratio vs llama.cpp |"
    );
    println!(
        "|-----------|------|---------------|------------------|--------------|------------------|---------------------------|"
    );
    for (ours, theirs) in &rows {
        for r in std::iter::once(ours).chain(theirs.iter()) {
            let ratio = match (r.engine, theirs) {
                ("avatar", Some(t)) => format!("{:.2}", r.decode / t.decode),
                _ => "-".into(),
            };
            println!(
                "| {:9} | {:4} | {:13.1} | {:16.0} | {:12.1} | {:>16} | {:>25} |",
                r.engine,
                r.ty,
                r.prefill,
                r.ttft_ms,
                r.decode,
                r.concurrent.map_or("-".into(), |c| format!("{c:.1}")),
                ratio
            );
        }
    }
    println!("\nload after: {}", loadavg());
}
