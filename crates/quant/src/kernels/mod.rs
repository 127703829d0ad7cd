//! Matrix-vector kernels on GGML block formats, the hot loop of quantized decoding.
//!
//! Like llama.cpp, the activation is quantized to Q8_0 once per matmul and every weight
//! block is dotted with it in integer arithmetic, so a decode step reads each weight byte
//! exactly once. `layout` says how weights are repacked for the kernels; the instruction set
//! (AVX2, AVX-512 VNNI, or portable loops computing the same integer sums) is detected at run
//! time. `vector` holds the decoder's other f32 work (attention, softmax, SiLU).

mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_vector;
#[cfg(target_arch = "x86_64")]
mod group;
mod layout;
mod portable;
#[cfg(test)]
mod tests;
mod vector;
#[cfg(target_arch = "x86_64")]
mod vnni;

use rayon::prelude::*;

use acts::ActRow;
pub use acts::QuantizedActs;
use layout::GROUP;
pub use layout::{dequantize_row, repack};
use vector::dot_f32;
pub use vector::{attention_scores, attention_values, silu_mul, softmax};

/// Elements per Q8_0 / Q4_0 block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block: f16 scale + 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_0 block: f16 scale + 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;

/// Block format of a quantized weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Q8_0,
    Q4_0,
}

impl BlockKind {
    pub fn block_bytes(self) -> usize {
        match self {
            BlockKind::Q8_0 => Q8_0_BYTES,
            BlockKind::Q4_0 => Q4_0_BYTES,
        }
    }
}

/// The instruction set the kernels use on this machine, detected once.
///
/// AVX-512 is used only for VNNI's `vpdpbusd` on 256-bit vectors: 512-bit vectors gave nothing
/// on the Zen 4 machines this project runs on (they split them in two), and a VNNI kernel
/// for the old row layout was no faster either, decoding being bound by memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Isa {
    Portable,
    /// AVX2 + FMA + F16C: 256-bit `maddubs` dot products.
    Avx2,
    /// AVX2 and AVX512-VNNI + AVX512-VL: interleaved groups through `vpdpbusd`.
    Avx512Vnni,
}

/// The best family the CPU has, capped by `AVATAR_KERNELS` (`portable`, `avx2`) when set: a
/// way to compare families, or to step around a kernel suspected of a fault.
fn isa() -> Isa {
    use std::sync::OnceLock;
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = match std::env::var("AVATAR_KERNELS").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512Vnni,
        };
        detected_isa().min(cap)
    })
}

fn detected_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match (has!("avx2") && has!("fma") && has!("f16c"), has!("avx512vnni") && has!("avx512vl")) {
            (true, true) => Isa::Avx512Vnni,
            (true, false) => Isa::Avx2,
            _ => Isa::Portable,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Portable
    }
}

/// Which kernel family runs on this machine ("avx512-vnni", "avx2" or "portable"), for bench
/// output.
pub fn kernel_name() -> &'static str {
    match isa() {
        Isa::Avx512Vnni => "avx512-vnni",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

/// The kernel families this machine can run, best last (tests compare them all).
#[cfg(test)]
fn available_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|&i| i <= detected_isa()).collect()
}

fn has_avx2() -> bool {
    isa() != Isa::Portable
}

/// One block-quantized (repacked) matrix of a [`matmul_q_group`] call: `out` is `[acts.t][rows]`.
pub struct MatJob<'a> {
    pub kind: BlockKind,
    pub w: &'a [u8],
    pub rows: usize,
    pub out: &'a mut [f32],
}

/// `out[t][r] = dot(weight row r, act t)` for a `rows x k` repacked block-quantized matrix.
/// `out` is row-major `[acts.t][rows]`.
pub fn matmul_q(kind: BlockKind, w: &[u8], rows: usize, acts: &QuantizedActs, out: &mut [f32]) {
    matmul_q_group(&mut [MatJob { kind, w, rows, out }], acts);
}

/// Several matrices applied to the same activations in ONE parallel region (Q/K/V, gate/up):
/// every region costs a wake-up of the worker threads, which at decode sizes is not free.
pub fn matmul_q_group(jobs: &mut [MatJob], acts: &QuantizedActs) {
    matmul_q_group_on(isa(), jobs, acts);
}

/// [`matmul_q_group`] with the kernels of `isa` (which the machine must have).
fn matmul_q_group_on(isa: Isa, jobs: &mut [MatJob], acts: &QuantizedActs) {
    let k = acts.k;
    let nb = k / QK;
    let t = acts.t;
    let threads = rayon::current_num_threads();
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    let total_rows: usize = jobs.iter().map(|j| j.rows).sum();
    // Chunks small enough to balance busy cores, large enough to amortise scheduling; whole
    // interleaved groups.
    let chunk = (total_rows / (threads * 8)).clamp(16, 512).next_multiple_of(GROUP);
    for (ji, j) in jobs.iter().enumerate() {
        assert_eq!(j.w.len(), j.rows * nb * j.kind.block_bytes(), "weight bytes do not match {}x{k}", j.rows);
        assert_eq!(j.out.len(), j.rows * t);
        let mut r = 0;
        while r < j.rows {
            tasks.push((ji, r, (r + chunk).min(j.rows)));
            r += chunk;
        }
    }
    let outs: Vec<SyncPtr> = jobs.iter_mut().map(|j| SyncPtr(j.out.as_mut_ptr())).collect();
    let jobs_ro: Vec<(BlockKind, &[u8], usize)> = jobs.iter().map(|j| (j.kind, j.w, j.rows)).collect();
    let run = |&(ji, r0, r1): &(usize, usize, usize)| {
        let (kind, w, rows) = jobs_ro[ji];
        let row_bytes = nb * kind.block_bytes();
        let grouped = layout::grouped_rows(rows).min(r1);
        let out_ptr = &outs[ji];
        // SAFETY (every write below): each (t, r) cell of each job is written by exactly one task.
        let put = |t: usize, r: usize, v: f32| unsafe { *out_ptr.0.add(t * rows + r) = v };
        let mut r = r0;
        while r < grouped {
            let group = &w[r * row_bytes..(r + GROUP) * row_bytes];
            let mut t0 = 0;
            while t0 < t {
                let n = (t - t0).min(4);
                let a4: [ActRow; 4] = std::array::from_fn(|j| acts.row(t0 + j.min(n - 1)));
                let mut o = [[0f32; GROUP]; 4];
                group_dots(kind, isa, group, &a4[..n], nb, &mut o, t0 == 0);
                for (j, orow) in o.iter().enumerate().take(n) {
                    for (i, v) in orow.iter().enumerate() {
                        put(t0 + j, r + i, *v);
                    }
                }
                t0 += n;
            }
            r += GROUP;
        }
        // The few rows past the last full group.
        for r in r..r1 {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            for ti in 0..t {
                put(ti, r, portable::row_dot(kind, row, acts.row(ti), nb));
            }
        }
    };
    if tasks.len() == 1 || threads == 1 {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// `o[j][r] = dot(row r of an interleaved group, acts[j])` for 1 to 4 activation rows;
/// `prefetch` the groups ahead on the first pass over this one.
fn group_dots(
    kind: BlockKind,
    isa: Isa,
    group: &[u8],
    acts: &[ActRow],
    nb: usize,
    o: &mut [[f32; GROUP]; 4],
    prefetch: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `isa` comes from the run-time feature check; the group and act rows hold nb
        // blocks each (the caller slices them so), and `o` has a row per act.
        Isa::Avx512Vnni => return unsafe { vnni::group_dots(kind, group, acts, nb, o, prefetch) },
        Isa::Avx2 => {
            for (i, (pair, o)) in acts.chunks(2).zip(o.chunks_mut(2)).enumerate() {
                // SAFETY: as above, with 1 or 2 acts per call, as the AVX2 kernel takes them.
                unsafe { avx2::group_dots(kind, group, pair, nb, o, prefetch && i == 0) };
            }
            return;
        }
        Isa::Portable => {}
    }
    let _ = (isa, prefetch);
    for (j, a) in acts.iter().enumerate() {
        o[j] = portable::group_dots(kind, group, *a, nb);
    }
}

/// `out[t][r] = dot(w row r, x_t)` for an f32 matrix (used for F16/F32/K-quant tensors,
/// dequantized at load).
pub fn matmul_f32(w: &[f32], rows: usize, x: &[f32], k: usize, out: &mut [f32]) {
    let t = x.len() / k;
    assert_eq!(w.len(), rows * k);
    assert_eq!(out.len(), rows * t);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let chunk = (rows / (rayon::current_num_threads() * 8)).clamp(8, 256);
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let out_ptr = &out_ptr;
        for r in c * chunk..((c + 1) * chunk).min(rows) {
            let wrow = &w[r * k..(r + 1) * k];
            for ti in 0..t {
                let s = dot_f32(wrow, &x[ti * k..(ti + 1) * k]);
                // SAFETY: disjoint rows per task.
                unsafe { *out_ptr.0.add(ti * rows + r) = s };
            }
        }
    });
}

struct SyncPtr(*mut f32);
// SAFETY: used only for writes to disjoint indices from parallel tasks, while the buffer it
// points into is borrowed by the call that spawned them.
unsafe impl Sync for SyncPtr {}
// SAFETY: as for Sync: the pointer is only carried into those tasks.
unsafe impl Send for SyncPtr {}
