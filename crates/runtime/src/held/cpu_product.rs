//! The CPU products of a widening held matrix, written straight into their outputs. Each tile
//! widens into one scratch buffer that lives as long as the thread, and gemm multiplies from
//! it: the forward writes the tile's columns of `x W^T`, the input gradient adds `g_tile W_tile`
//! into its output in place. candle's ops allocated every widened tile afresh (4 MiB of page
//! faults each time), then concatenated the forward's parts and summed the gradient's in extra
//! passes over the activations.

use std::cell::RefCell;

use candle_core::quantized::GgmlDType;
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
            Tile::Dense(d) => d.device().is_cpu() && matches!(d.dtype(), DType::BF16 | DType::F16),
            Tile::Quant(q) => matches!(q.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4_0),
        })
}

/// `x W^T` for `x: [m, cols]`.
pub fn forward(w: &HeldMatrix, x: &Tensor) -> Result<Tensor> {
    let (m, cols) = x.dims2()?;
    check_inner("forward", cols, w.cols)?;
    let mut out = vec![0f32; m * w.rows];
    if m == 0 {
        return Tensor::from_vec(out, (m, w.rows), x.device());
    }
    with_f32(x, |x| {
        each_widened_tile(w, |r0, n, tile| {
            // SAFETY: `x` holds m × cols values (row stride cols); `tile` n × cols (read as its
            // transpose, cols × n); the destination is columns r0..r0+n of the m × rows `out`.
            unsafe {
                gemm(
                    m,
                    n,
                    cols,
                    out.as_mut_ptr().add(r0),
                    1,
                    w.rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    tile.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism(),
                )
            }
        })
    })?;
    Tensor::from_vec(out, (m, w.rows), x.device())
}

/// `g W` for `g: [m, rows]`: the gradient of `x W^T` with respect to `x`.
pub fn input_grad(w: &HeldMatrix, g: &Tensor) -> Result<Tensor> {
    let (m, rows) = g.dims2()?;
    check_inner("input gradient", rows, w.rows)?;
    let mut out = vec![0f32; m * w.cols];
    if m == 0 {
        return Tensor::from_vec(out, (m, w.cols), g.device());
    }
    with_f32(g, |g| {
        each_widened_tile(w, |r0, n, tile| {
            // SAFETY: the left operand is columns r0..r0+n of the m × rows `g`; `tile` holds
            // n × cols values; the destination is the m × cols `out`, added to after the first
            // tile (gemm computes `dst = alpha·dst + beta·lhs·rhs`).
            unsafe {
                gemm(
                    m,
                    w.cols,
                    n,
                    out.as_mut_ptr(),
                    1,
                    w.cols as isize,
                    r0 > 0,
                    g.as_ptr().add(r0),
                    1,
                    rows as isize,
                    tile.as_ptr(),
                    1,
                    w.cols as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism(),
                )
            }
        })
    })?;
    Tensor::from_vec(out, (m, w.cols), g.device())
}

fn check_inner(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        candle_core::bail!("held matmul {what}: inner dimension {got}, the matrix has {want}");
    }
    Ok(())
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
