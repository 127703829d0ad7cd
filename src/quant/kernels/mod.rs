//! Matrix-vector kernels on GGML block formats, the hot loop of quantized decoding.
//!
//! Like llama.cpp, the activation is quantized to Q8_0 once per matmul and every weight
//! block is dotted with it in integer arithmetic (AVX2 `maddubs`), so a decode step reads
//! each weight byte exactly once. AVX2/FMA/F16C is detected at run time; the portable
//! fallback computes the same integer sums.

use half::f16;
use rayon::prelude::*;

/// Elements per Q8_0 / Q4_0 block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block: f16 scale + 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_0 block: f16 scale + 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;

/// The activation side of a quantized matmul: `t` vectors of length `k`, each in Q8_0 blocks.
pub struct QuantizedActs {
    pub k: usize,
    pub t: usize,
    pub qs: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// Sum of the quants of each block, scaled by its `d` (for Q4_0's offset of 8).
    pub dsum: Vec<f32>,
    /// `qs` again in the order the Q4_0 kernel unpacks nibbles, two blocks at a time: for
    /// blocks `b`, `b + 1`, elements 0..16 of both, then 16..32 of both (zeros stand in for a
    /// missing `b + 1`). Copied once per matmul, read for every weight row.
    pub nibble_order: Vec<i8>,
}

impl QuantizedActs {
    /// Quantize `t` rows of `k` floats (row-major); `k` must be a multiple of 32.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        assert!(k % QK == 0 && x.len() % k == 0, "activation length {} not a multiple of block row {k}", x.len());
        let t = x.len() / k;
        let nb = x.len() / QK;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; nb];
        let mut dsum = vec![0f32; nb];
        for b in 0..nb {
            let src = &x[b * QK..(b + 1) * QK];
            let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs[b * QK..(b + 1) * QK].iter_mut().zip(src) {
                let r = (v * inv).round() as i32;
                *q = r as i8;
                sum += r;
            }
            // The stored scale is f16 in llama.cpp's Q8_0; keep f32 here (more precise, no cost).
            d[b] = scale;
            dsum[b] = scale * sum as f32;
        }
        let row_nb = k / QK;
        let stride = Self::nibble_stride(k);
        let mut nibble_order = vec![0i8; t * stride];
        for (src, dst) in qs.chunks_exact(k).zip(nibble_order.chunks_exact_mut(stride)) {
            for b in 0..row_nb {
                let (pair, second) = (b / 2, b % 2);
                let blk = &src[b * QK..(b + 1) * QK];
                dst[pair * 64 + 16 * second..][..16].copy_from_slice(&blk[..16]);
                dst[pair * 64 + 32 + 16 * second..][..16].copy_from_slice(&blk[16..]);
            }
        }
        Self { k, t, qs, d, dsum, nibble_order }
    }

    fn nibble_stride(k: usize) -> usize {
        (k / QK).div_ceil(2) * 64
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.k / QK;
        let stride = Self::nibble_stride(self.k);
        ActRow {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            d: &self.d[i * nb..(i + 1) * nb],
            dsum: &self.dsum[i * nb..(i + 1) * nb],
            nibble_order: &self.nibble_order[i * stride..(i + 1) * stride],
        }
    }
}

/// One activation row of a [`QuantizedActs`], as the kernels read it.
#[derive(Clone, Copy)]
struct ActRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    dsum: &'a [f32],
    nibble_order: &'a [i8],
}

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

/// Repack GGML rows in place into the layout the kernels read: per row, all quants first
/// (`nb` x 32 or 16 bytes), then all `nb` f16 scales. Same size; the scales of 8 consecutive
/// blocks become one vector load instead of 8 scalar conversions.
pub fn repack_rows(kind: BlockKind, bytes: &mut [u8], cols: usize) {
    let nb = cols / QK;
    let bb = kind.block_bytes();
    let qb = bb - 2;
    let row_bytes = nb * bb;
    let mut tmp = vec![0u8; row_bytes];
    for row in bytes.chunks_exact_mut(row_bytes) {
        tmp.copy_from_slice(row);
        for (b, blk) in tmp.chunks_exact(bb).enumerate() {
            row[b * qb..(b + 1) * qb].copy_from_slice(&blk[2..]);
            row[nb * qb + 2 * b..nb * qb + 2 * b + 2].copy_from_slice(&blk[..2]);
        }
    }
}

/// Scale of block `b` in a repacked row.
fn repacked_scale(kind: BlockKind, row: &[u8], nb: usize, b: usize) -> f32 {
    let o = nb * (kind.block_bytes() - 2) + 2 * b;
    f16::from_bits(u16::from_le_bytes([row[o], row[o + 1]])).to_f32()
}

/// Quants of block `b` in a repacked row, as stored (Q8_0: signed bytes; Q4_0: nibbles offset by 8).
fn repacked_quants(kind: BlockKind, row: &[u8], b: usize) -> &[u8] {
    let qb = kind.block_bytes() - 2;
    &row[b * qb..(b + 1) * qb]
}

/// The 32 values of block `b` of a repacked row, dequantized (an embedding lookup).
pub fn dequantize_block(kind: BlockKind, row: &[u8], nb: usize, b: usize, out: &mut [f32]) {
    let d = repacked_scale(kind, row, nb, b);
    let q = repacked_quants(kind, row, b);
    match kind {
        BlockKind::Q8_0 => {
            for (v, &q) in out.iter_mut().zip(q) {
                *v = d * (q as i8) as f32;
            }
        }
        BlockKind::Q4_0 => {
            for j in 0..16 {
                out[j] = d * ((q[j] & 0x0F) as f32 - 8.0);
                out[j + 16] = d * ((q[j] >> 4) as f32 - 8.0);
            }
        }
    }
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
    // Chunks small enough to balance busy cores, large enough to amortise scheduling.
    let chunk = (total_rows / (threads * 8)).clamp(16, 512);
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
        let out_ptr = &outs[ji];
        let mut r = r0;
        while r < r1 {
            // Four rows at a time share each activation load; the tail goes one by one.
            let nr = if r + 4 <= r1 { 4 } else { 1 };
            let wr: [&[u8]; 4] = std::array::from_fn(|i| {
                let ri = (r + i.min(nr - 1)) * row_bytes;
                &w[ri..ri + row_bytes]
            });
            let mut t0 = 0;
            while t0 < t {
                let n = if t - t0 >= 2 { 2 } else { 1 };
                let a2: [ActRow; 2] = [acts.row(t0), acts.row(t0 + n - 1)];
                let mut o = [[0f32; 2]; 4];
                block_dots(kind, isa, &wr[..nr], &a2[..n], nb, &mut o);
                for (i, orow) in o.iter().enumerate().take(nr) {
                    for (j, v) in orow.iter().enumerate().take(n) {
                        // SAFETY: each (t, r) cell of each job is written by exactly one task.
                        unsafe { *out_ptr.0.add((t0 + j) * rows + r + i) = *v };
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

/// `o[r][j] = dot(w[r], acts[j])` for 1 or 4 rows and 1 or 2 activation rows.
fn block_dots(kind: BlockKind, isa: Isa, w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: features checked at run time; rows and act rows hold nb blocks each.
        unsafe { avx2_impl::block_dots(kind, w, acts, nb, o) };
        return;
    }
    let _ = isa;
    for (r, row) in w.iter().enumerate() {
        for (j, a) in acts.iter().enumerate() {
            o[r][j] = portable_dot(kind, row, *a, nb);
        }
    }
}

fn portable_dot(kind: BlockKind, row: &[u8], act: ActRow, nb: usize) -> f32 {
    let (aq, ad, dsum) = (act.qs, act.d, act.dsum);
    let mut total = 0f32;
    for b in 0..nb {
        let dw = repacked_scale(kind, row, nb, b);
        let q = repacked_quants(kind, row, b);
        let a = &aq[b * QK..(b + 1) * QK];
        match kind {
            BlockKind::Q8_0 => {
                let s: i32 = q.iter().zip(a).map(|(&x, &y)| (x as i8 as i32) * (y as i32)).sum();
                total += dw * ad[b] * s as f32;
            }
            BlockKind::Q4_0 => {
                let s: i32 =
                    (0..16).map(|j| (q[j] & 0x0F) as i32 * a[j] as i32 + (q[j] >> 4) as i32 * a[j + 16] as i32).sum();
                // Nibbles are stored with an offset of 8: sum((q-8)*a) = sum(q*a) - 8*sum(a).
                total += dw * (ad[b] * s as f32 - 8.0 * dsum[b]);
            }
        }
    }
    total
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

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked at run time.
        return unsafe { avx2_impl::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += alpha * x` (attention's weighted sum of values).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2_impl {
    use std::arch::x86_64::*;

    use super::{ActRow, BlockKind, QK};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    pub unsafe fn block_dots(kind: BlockKind, w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
        unsafe {
            match (kind, w.len(), acts.len()) {
                (BlockKind::Q4_0, 4, 1) => q4::<4, 1>(w, acts, nb, o),
                (BlockKind::Q4_0, 4, _) => q4::<4, 2>(w, acts, nb, o),
                (BlockKind::Q4_0, _, 1) => q4::<1, 1>(w, acts, nb, o),
                (BlockKind::Q4_0, _, _) => q4::<1, 2>(w, acts, nb, o),
                (BlockKind::Q8_0, 4, 1) => q8::<4, 1>(w, acts, nb, o),
                (BlockKind::Q8_0, 4, _) => q8::<4, 2>(w, acts, nb, o),
                (BlockKind::Q8_0, _, 1) => q8::<1, 1>(w, acts, nb, o),
                (BlockKind::Q8_0, _, _) => q8::<1, 2>(w, acts, nb, o),
            }
        }
    }

    /// The four horizontal sums of `a`, `b`, `c`, `d`, in that order.
    #[inline(always)]
    unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        unsafe {
            let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
            _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
        }
    }

    /// 8 f32 lanes from `n <= 8` values at `p` (zero-padded).
    #[inline(always)]
    unsafe fn load8(p: *const f32, n: usize) -> __m256 {
        unsafe {
            if n == 8 {
                _mm256_loadu_ps(p)
            } else {
                // A masked load: no copy (which would be a `memcpy` call in the hot path).
                let lanes = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
                _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes))
            }
        }
    }

    /// 8 f16 scales at `p` (`n <= 8`, zero-padded) as f32 lanes.
    #[inline(always)]
    unsafe fn scales8(p: *const u8, n: usize) -> __m256 {
        unsafe {
            if n == 8 {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            } else {
                // Converted one by one: a copy loop here would become a `memcpy` call.
                let mut t = [0f32; 8];
                for (i, v) in t.iter_mut().enumerate().take(n) {
                    *v = half::f16::from_bits((p.add(2 * i) as *const u16).read_unaligned()).to_f32();
                }
                _mm256_loadu_ps(t.as_ptr())
            }
        }
    }

    /// Rows are consumed R at a time, as R short interleaved streams, which the hardware
    /// prefetcher does not follow: DRAM latency then dominates decoding (measured: 6.9 GB/s
    /// on one core without this, 22.9 with it, Q8_0). So each call prefetches the R rows two calls
    /// ahead, spread evenly over its blocks. Prefetching past the end of the matrix is
    /// harmless (a prefetch never faults), hence `wrapping_add`.
    #[derive(Clone, Copy)]
    struct Prefetch {
        ahead: *const u8,
        step: usize,
    }

    impl Prefetch {
        fn new(first_row: *const u8, rows: usize, row_bytes: usize, nb: usize) -> Self {
            Self { ahead: first_row.wrapping_add(2 * rows * row_bytes), step: (rows * row_bytes).div_ceil(nb) }
        }

        /// Prefetch the share of blocks `b..b + n`.
        #[inline(always)]
        unsafe fn blocks(self, b: usize, n: usize) {
            let mut o = b * self.step;
            let end = o + n * self.step;
            while o < end {
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ahead.wrapping_add(o) as *const i8) };
                o += 64;
            }
        }
    }

    /// Horizontal sums of `v[r][j]` into `o[r][j]` (four rows at once when R = 4).
    #[inline(always)]
    unsafe fn reduce<const R: usize, const N: usize>(v: [[__m256; N]; R], o: &mut [[f32; 2]; 4]) {
        unsafe {
            for j in 0..N {
                if R == 4 {
                    let mut sums = [0f32; 4];
                    _mm_storeu_ps(sums.as_mut_ptr(), hsum4(v[0][j], v[1][j], v[2][j], v[3][j]));
                    for r in 0..R {
                        o[r][j] = sums[r];
                    }
                } else {
                    for r in 0..R {
                        o[r][j] = hsum(v[r][j]);
                    }
                }
            }
        }
    }

    /// Q8_0: R rows x N acts, one block at a time. Scales are computed 8 blocks at a time
    /// into `scl` and broadcast per block; the inner loop is pure SIMD.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8<const R: usize, const N: usize>(w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
        unsafe {
            let wq: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
            let wd: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(nb * 32));
            let aq: [*const i8; N] = std::array::from_fn(|j| acts[j].qs.as_ptr());
            let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
            let prefetch = Prefetch::new(wq[0], R, nb * 34, nb);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            // Scratch for [r][j][8 lanes]; every lane read is written first in its group.
            // Left uninitialised (zeroing would be a memset per call), so only touched by pointer.
            let mut scratch = std::mem::MaybeUninit::<[[[f32; 8]; N]; R]>::uninit();
            let scl = scratch.as_mut_ptr() as *mut f32;
            let at = |r: usize, j: usize| scl.add((r * N + j) * 8);
            let mut g = 0;
            while g < nb {
                let n8 = (nb - g).min(8);
                for r in 0..R {
                    let dw = scales8(wd[r].add(2 * g), n8);
                    for j in 0..N {
                        _mm256_storeu_ps(at(r, j), _mm256_mul_ps(dw, load8(ad[j].add(g), n8)));
                    }
                }
                for bi in 0..n8 {
                    let b = g + bi;
                    prefetch.blocks(b, 1);
                    let av: [__m256i; N] =
                        std::array::from_fn(|j| _mm256_loadu_si256(aq[j].add(b * QK) as *const __m256i));
                    for r in 0..R {
                        // Signed x signed via maddubs: |w| as unsigned, the sign moved onto a.
                        let q = _mm256_loadu_si256(wq[r].add(b * 32) as *const __m256i);
                        let ax = _mm256_sign_epi8(q, q);
                        for j in 0..N {
                            let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(av[j], q));
                            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                            acc[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*at(r, j).add(bi)), p, acc[r][j]);
                        }
                    }
                }
                g += n8;
            }
            reduce::<R, N>(acc, o);
        }
    }

    /// Q4_0: R rows x N acts, two blocks at a time. The 32 nibble bytes of blocks b, b+1 give
    /// their low nibbles with one AND and their high nibbles with a shift and an AND; the
    /// activations were laid out to match (`nibble_order`), so two `maddubs` and one add make
    /// both blocks' partial sums, scaled by one vector holding each block's scale in its half.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4<const R: usize, const N: usize>(w: &[&[u8]], acts: &[ActRow], nb: usize, o: &mut [[f32; 2]; 4]) {
        unsafe {
            let wq: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
            let wd: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(nb * 16));
            let an: [*const i8; N] = std::array::from_fn(|j| acts[j].nibble_order.as_ptr());
            let ad: [*const f32; N] = std::array::from_fn(|j| acts[j].d.as_ptr());
            let ds: [*const f32; N] = std::array::from_fn(|j| acts[j].dsum.as_ptr());
            let prefetch = Prefetch::new(wq[0], R, nb * 18, nb);
            let mask = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            // Lanes 0..4 take the scale of block 2p, lanes 4..8 that of block 2p + 1.
            let pair_idx: [__m256i; 4] = std::array::from_fn(|p| {
                let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
                _mm256_set_epi32(b, b, b, b, a, a, a, a)
            });
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut off = [[_mm256_setzero_ps(); N]; R];
            // Scratch for [r][j][pair][8 lanes]; every entry read is written first in its group.
            // Left uninitialised (zeroing would be a memset per call), so only touched by pointer.
            let mut scratch = std::mem::MaybeUninit::<[[[[f32; 8]; 4]; N]; R]>::uninit();
            let scl = scratch.as_mut_ptr() as *mut f32;
            let at = |r: usize, j: usize, p: usize| scl.add(((r * N + j) * 4 + p) * 8);
            let mut g = 0;
            while g < nb {
                let n8 = (nb - g).min(8);
                for r in 0..R {
                    let dw = scales8(wd[r].add(2 * g), n8);
                    for j in 0..N {
                        let v = _mm256_mul_ps(dw, load8(ad[j].add(g), n8));
                        for (p, idx) in pair_idx.iter().enumerate() {
                            _mm256_storeu_ps(at(r, j, p), _mm256_permutevar8x32_ps(v, *idx));
                        }
                        off[r][j] = _mm256_fmadd_ps(dw, load8(ds[j].add(g), n8), off[r][j]);
                    }
                }
                // One step: blocks b, b+1 from 32 nibble bytes (`raw`), scales of pair p.
                macro_rules! pair {
                    ($b:expr, $p:expr, $load:expr) => {{
                        let (b, p) = ($b, $p);
                        let alo: [__m256i; N] =
                            std::array::from_fn(|j| _mm256_loadu_si256(an[j].add(b * QK) as *const __m256i));
                        let ahi: [__m256i; N] =
                            std::array::from_fn(|j| _mm256_loadu_si256(an[j].add(b * QK + 32) as *const __m256i));
                        for r in 0..R {
                            let raw: __m256i = $load(wq[r].add(b * 16));
                            let lo = _mm256_and_si256(raw, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                            for j in 0..N {
                                let p16 = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo, alo[j]),
                                    _mm256_maddubs_epi16(hi, ahi[j]),
                                );
                                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                                acc[r][j] = _mm256_fmadd_ps(_mm256_loadu_ps(at(r, j, p)), s, acc[r][j]);
                            }
                        }
                    }};
                }
                for p in 0..n8 / 2 {
                    let b = g + 2 * p;
                    prefetch.blocks(b, 2);
                    pair!(b, p, |w: *const u8| _mm256_loadu_si256(w as *const __m256i));
                }
                if n8 % 2 == 1 {
                    // A lone last block: its activations' other half is zero.
                    pair!(g + n8 - 1, n8 / 2, |w: *const u8| _mm256_zextsi128_si256(_mm_loadu_si128(
                        w as *const __m128i
                    )));
                }
                g += n8;
            }
            // Nibbles are stored with an offset of 8: sum((q-8)*a) = sum(q*a) - 8*sum(a).
            let eight = _mm256_set1_ps(8.0);
            let v: [[__m256; N]; R] =
                std::array::from_fn(|r| std::array::from_fn(|j| _mm256_fnmadd_ps(eight, off[r][j], acc[r][j])));
            reduce::<R, N>(v, o);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        unsafe {
            let n = a.len().min(b.len());
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut i = 0;
            while i + 16 <= n {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            let mut s = hsum(_mm256_add_ps(acc0, acc1));
            while i < n {
                s += a[i] * b[i];
                i += 1;
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantize_q8_0_row(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks(QK) {
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            for v in blk {
                out.push((if d > 0.0 { (v / d).round() } else { 0.0 }) as i8 as u8);
            }
        }
        out
    }

    fn quantize_q4_0_row(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks(QK) {
            let max = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            for j in 0..16 {
                let q0 = ((blk[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                let q1 = ((blk[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
                out.push(q0 | (q1 << 4));
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// SIMD and portable kernels agree, and both approximate the float product.
    #[test]
    fn kernels_match_float_and_each_other() {
        for (t, k) in [(1, 96), (2, 96), (3, 320), (5, 320), (6, 96), (1, 320)] {
            let rows = 37;
            let w = pseudo(rows * k, 1);
            let x = pseudo(t * k, 2);
            let acts = QuantizedActs::quantize(&x, k);
            for (kind, bytes, tol) in [
                (BlockKind::Q8_0, w.chunks(k).flat_map(quantize_q8_0_row).collect::<Vec<_>>(), 0.15),
                (BlockKind::Q4_0, w.chunks(k).flat_map(quantize_q4_0_row).collect::<Vec<_>>(), 0.6),
            ] {
                let mut bytes = bytes;
                // Quantization error of a dot product grows like sqrt(k): tolerances are for k = 96.
                let tol = tol * (k as f32 / 96.0).sqrt();
                repack_rows(kind, &mut bytes, k);
                let mut out = vec![0f32; rows * t];
                matmul_q(kind, &bytes, rows, &acts, &mut out);
                let row_bytes = k / QK * kind.block_bytes();
                for ti in 0..t {
                    for r in 0..rows {
                        let exact: f32 = (0..k).map(|i| w[r * k + i] * x[ti * k + i]).sum();
                        let got = out[ti * rows + r];
                        let pd = portable_dot(kind, &bytes[r * row_bytes..(r + 1) * row_bytes], acts.row(ti), k / QK);
                        assert!(
                            (got - exact).abs() < tol,
                            "{kind:?} k{k} r{r} t{ti}: {got} vs {exact} (portable {pd})"
                        );
                        let portable =
                            [portable_dot(kind, &bytes[r * row_bytes..(r + 1) * row_bytes], acts.row(ti), k / QK)];
                        assert!(
                            (portable[0] - got).abs() < 1e-3 * (1.0 + got.abs()),
                            "{kind:?} simd {got} vs portable {}",
                            portable[0]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f32_matmul_matches() {
        let (rows, k, t) = (5, 40, 3);
        let w = pseudo(rows * k, 3);
        let x = pseudo(t * k, 4);
        let mut out = vec![0f32; rows * t];
        matmul_f32(&w, rows, &x, k, &mut out);
        for ti in 0..t {
            for r in 0..rows {
                let exact: f32 = (0..k).map(|i| w[r * k + i] * x[ti * k + i]).sum();
                assert!((out[ti * rows + r] - exact).abs() < 1e-4);
            }
        }
    }
}
