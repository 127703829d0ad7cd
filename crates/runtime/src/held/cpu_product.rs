//! The CPU products of a widening held matrix, written straight into their outputs. Each tile
//! widens into one scratch buffer that lives as long as the thread, and gemm multiplies from
//! it: the forward writes the tile's columns of `x W^T`, the input gradient adds `g_tile W_tile`
//! into its output in place. candle's ops allocated every widened tile afresh (4 MiB of page
//! faults each time), then concatenated the forward's parts and summed the gradient's in extra
//! passes over the activations.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use gemm::{Parallelism, gemm};

use super::{HeldMatrix, Tile, widen};

thread_local! {
    /// One widened tile (about `TILE_F32_BYTES`, up to `MIN_TILE_ROWS` rows of a very wide
    /// matrix), kept so that no multiply faults in fresh pages.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this path multiplies `w` by `x`: a CPU matrix whose every tile widens in parallel,
/// and an f32 input.
pub fn applies(w: &HeldMatrix, x: &Tensor) -> bool {
    x.dtype() == DType::F32
        && x.device().is_cpu()
        && w.device.is_cpu()
        && w.tiles.iter().all(|t| match t {
            Tile::Dense(d) => d.device().is_cpu() && widen::widens_dense(d.dtype()),
            Tile::Quant(q) => widen::widens_quantized(q.dtype()),
        })
}

/// `x W^T` for `x: [m, cols]`.
pub fn forward(w: &HeldMatrix, x: &Tensor) -> Result<Tensor> {
    product(w, x, "forward", w.cols, w.rows, |x, out, m, r0, n, tile| {
        // SAFETY: `x` holds m × cols values; `tile` n × cols, read as its transpose (cols × n:
        // row stride 1, column stride cols); the destination is columns r0..r0+n of the
        // m × rows `out`.
        unsafe {
            gemm_into(m, n, w.cols, out[r0..].as_mut_ptr(), w.rows, false, x.as_ptr(), w.cols, tile.as_ptr(), 1, w.cols)
        }
    })
}

/// `g W` for `g: [m, rows]`: the gradient of `x W^T` with respect to `x`.
pub fn input_grad(w: &HeldMatrix, g: &Tensor) -> Result<Tensor> {
    product(w, g, "input gradient", w.rows, w.cols, |g, out, m, r0, n, tile| {
        // SAFETY: the left operand is columns r0..r0+n of the m × rows `g`; `tile` holds
        // n × cols values; the destination is the m × cols `out`, added to after the first tile.
        unsafe {
            gemm_into(
                m,
                w.cols,
                n,
                out.as_mut_ptr(),
                w.cols,
                r0 > 0,
                g[r0..].as_ptr(),
                w.rows,
                tile.as_ptr(),
                w.cols,
                1,
            )
        }
    })
}

/// The `[m, out_cols]` product of `a: [m, inner]` and `w`, built tile by tile:
/// `tile_product(a, out, m, first_row, rows, tile)` adds one widened tile's part to `out`.
fn product(
    w: &HeldMatrix,
    a: &Tensor,
    what: &str,
    inner: usize,
    out_cols: usize,
    mut tile_product: impl FnMut(&[f32], &mut [f32], usize, usize, usize, &[f32]),
) -> Result<Tensor> {
    let (m, k) = a.dims2()?;
    if k != inner {
        candle_core::bail!("held matmul {what}: inner dimension {k}, the matrix has {inner}");
    }
    let mut out = vec![0f32; m * out_cols];
    if m > 0 {
        with_f32(a, |a| each_widened_tile(w, |r0, n, tile| tile_product(a, &mut out, m, r0, n, tile)))?;
    }
    Tensor::from_vec(out, (m, out_cols), a.device())
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, for an m × k `lhs` and a k × n
/// `rhs`. `dst` and `lhs` are row-major with the given row strides, `rhs` has both strides.
///
/// # Safety
/// Every operand's pointer must address all the elements its shape and strides reach.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    // gemm computes `dst = alpha·dst + beta·lhs·rhs` (dst read only when `accumulate`).
    let alpha = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the caller's.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            alpha,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// Calls `f(first_row, rows, values)` with each tile widened to f32, in row order.
fn each_widened_tile(w: &HeldMatrix, mut f: impl FnMut(usize, usize, &[f32])) -> Result<()> {
    SCRATCH.with_borrow_mut(|scratch| {
        for (i, tile) in w.tiles.iter().enumerate() {
            let r0 = i * w.tile_rows;
            let n = w.tile_rows.min(w.rows - r0);
            if scratch.len() < n * w.cols {
                scratch.resize(n * w.cols, 0.0);
            }
            let values = &mut scratch[..n * w.cols];
            let widened = match tile {
                Tile::Dense(t) => widen::dense_into(t, values)?,
                Tile::Quant(q) => widen::quantized_into(q, values)?,
            };
            if !widened {
                candle_core::bail!("held matmul: tile {i} has a format the CPU path does not widen");
            }
            f(r0, n, values);
        }
        Ok(())
    })
}

/// Runs `f` on the values of a contiguous f32 CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("held matmul: the input is not a contiguous f32 CPU tensor");
    };
    f(&v[a..b])
}

/// The threads candle's own matmul uses.
fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}
