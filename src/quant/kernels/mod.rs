//! Matrix-vector kernels on GGML block formats, the hot loop of quantized decoding.
//!
//! Like llama.cpp, the activation is quantized to Q8_0 once per matmul and every weight
//! block is dotted with it in integer arithmetic (AVX2 `maddubs`), so a decode step reads
//! each weight byte exactly once. AVX2/FMA/F16C is detected at run time; the portable
//! fallback computes the same integer sums. `layout` says how weights are repacked for them.

mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_vector;
pub mod layout;
mod portable;
#[cfg(test)]
mod tests;
mod vector;

use rayon::prelude::*;

use acts::ActRow;
pub use acts::QuantizedActs;
use layout::GROUP;
pub use layout::{dequantize_row, repack};
pub use vector::{attention_scores, attention_values, dot_f32, silu_mul, softmax};

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
/// An AVX-512 VNNI kernel (two blocks per `dpbusd`) was measured on the AMD EPYC (Zen 4)
/// machines this project runs on and was no faster than AVX2 there: Zen 4 splits 512-bit
/// operations in two, and decoding is bound by memory, not arithmetic. It was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Portable,
    /// AVX2 + FMA + F16C: 256-bit `maddubs` dot products.
    Avx2,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") { Isa::Avx2 } else { Isa::Portable }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Portable
    }
}

/// Which kernel family runs on this machine ("avx2" or "portable"), for bench output.
pub fn kernel_name() -> &'static str {
    match isa() {
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

fn has_avx2() -> bool {
    isa() == Isa::Avx2
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
    let k = acts.k;
    let nb = k / QK;
    let t = acts.t;
    let isa = isa();
    let threads = rayon::current_num_threads();
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    let total_rows: usize = jobs.iter().map(|j| j.rows).sum();
    // Chunks small enough to balance busy cores, large enough to amortise scheduling; whole
    // interleaved groups.
    let chunk = (total_rows / (threads * 8)).clamp(16, 512).next_multiple_of(GROUP);
    for (ji, j) in jobs.iter().enumerate() {
        assert_eq!(j.w.len(), j.rows * nb * j.kind.block_bytes(), "weight bytes do not match {}x{k}", j.rows);
        assert_eq!(j.out.len(), j.rows * t);
        if j.rows > layout::grouped_rows(j.rows) && j.kind == BlockKind::Q4_0 {
            acts.prepare_nibble_order();
        }
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
        while r < r1 {
            // An interleaved group, else four rows at a time sharing each activation load, else one.
            let nr = if r + GROUP <= grouped {
                GROUP
            } else if r + 4 <= r1 {
                4
            } else {
                1
            };
            let mut t0 = 0;
            while t0 < t {
                let n = if t - t0 >= 2 { 2 } else { 1 };
                let a2: [ActRow; 2] = [acts.row(t0), acts.row(t0 + n - 1)];
                if nr == GROUP {
                    let mut o = [[0f32; GROUP]; 2];
                    group_dots(kind, isa, &w[r * row_bytes..(r + GROUP) * row_bytes], &a2[..n], nb, &mut o);
                    for (j, orow) in o.iter().enumerate().take(n) {
                        for (i, v) in orow.iter().enumerate() {
                            put(t0 + j, r + i, *v);
                        }
                    }
                } else {
                    let wr: [&[u8]; 4] = std::array::from_fn(|i| {
                        let ri = (r + i.min(nr - 1)) * row_bytes;
                        &w[ri..ri + row_bytes]
                    });
                    let mut o = [[0f32; 2]; 4];
                    block_dots(kind, isa, &wr[..nr], &a2[..n], nb, &mut o);
                    for (i, orow) in o.iter().enumerate().take(nr) {
                        for (j, v) in orow.iter().enumerate().take(n) {
                            put(t0 + j, r + i, *v);
                        }
                    }
                }
                t0 += n;
            }
            r += nr;
        }
    };
    if tasks.len() == 1 || threads == 1 {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// `o[j][r] = dot(row r of an interleaved group, acts[j])` for 1 or 2 activation rows.
fn group_dots(kind: BlockKind, isa: Isa, group: &[u8], acts: &[ActRow], nb: usize, o: &mut [[f32; GROUP]; 2]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: features checked at run time; the group and act rows hold nb blocks each.
        unsafe { avx2::group_dots(kind, group, acts, nb, o) };
        return;
    }
    let _ = isa;
    for (j, a) in acts.iter().enumerate() {
        o[j] = portable::group_dots(kind, group, *a, nb);
    }
}

/// `o[r][j] = dot(w[r], acts[j])` for 1 or 4 row-layout rows and 1 or 2 activation rows.
fn block_dots(kind: BlockKind, isa: Isa, w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: features checked at run time; rows and act rows hold nb blocks each.
        unsafe { avx2::block_dots(kind, w, acts, nb, o) };
        return;
    }
    let _ = isa;
    for (r, row) in w.iter().enumerate() {
        for (j, a) in acts.iter().enumerate() {
            o[r][j] = portable::row_dot(kind, row, *a, nb);
        }
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
// SAFETY: used only for writes to disjoint indices from parallel tasks.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}
