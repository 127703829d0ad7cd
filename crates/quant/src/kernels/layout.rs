//! How a block-quantized weight matrix is laid out for the kernels, repacked once at load from
//! GGML's rows of `[f16 scale][quants]` blocks. Every layout keeps the matrix's size, and row `r`
//! (or its group) starts at byte `r * row_bytes` as in GGML.
//!
//! - Interleaved groups of 8 rows: per block `b`, the rows' quant bytes in 32-byte steps (8 for
//!   Q8_0, 4 for Q4_0); step `s` holds bytes `4s..4s+4` of each row's quants, row after row. One
//!   load is then 8 rows x 4 weights (Q8_0), or 8 rows x 4 low nibbles (elements `4s..4s+4`)
//!   and, shifted, 4 high nibbles (elements `16+4s..`) (Q4_0). Kernel output lanes are the 8
//!   rows, so there are no horizontal sums, and a group is one weight stream. After all blocks'
//!   quants come the 8 rows' f16 scales of each block (16 bytes per block).
//! - Rows past the last full group (at most 7; none in the usual model shapes) keep GGML's
//!   layout and go through the portable dot product.

use half::f16;

use super::{BlockKind, QK};

/// Rows interleaved in one group.
pub const GROUP: usize = 8;

/// How many leading rows of a `rows`-row matrix are stored in interleaved groups.
pub fn grouped_rows(rows: usize) -> usize {
    rows / GROUP * GROUP
}

/// Repack a GGML matrix (`rows x cols`, in place) into the kernels' layout, which
/// [`BlockAt`] alone defines. Each group stays within its rows' bytes, so the matrix is
/// repacked a group at a time through one scratch copy; rows past the last group stay as
/// they are.
pub fn repack(kind: BlockKind, bytes: &mut [u8], rows: usize, cols: usize) {
    let nb = cols / QK;
    let bb = kind.block_bytes();
    let row_bytes = nb * bb;
    assert_eq!(bytes.len(), rows * row_bytes, "weight bytes do not match {rows}x{cols}");
    let grouped = grouped_rows(rows);
    let mut tmp = vec![0u8; GROUP * row_bytes];
    for r0 in (0..grouped).step_by(GROUP) {
        tmp.copy_from_slice(&bytes[r0 * row_bytes..(r0 + GROUP) * row_bytes]);
        for (i, row) in tmp.chunks_exact(row_bytes).enumerate() {
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let at = BlockAt::new(kind, rows, nb, r0 + i, b);
                bytes[at.scale..at.scale + 2].copy_from_slice(&blk[..2]);
                for (s, run) in blk[2..].chunks_exact(4).enumerate() {
                    let o = at.quant(4 * s);
                    bytes[o..o + 4].copy_from_slice(run);
                }
            }
        }
    }
}

/// Where block `b` of row `r` lives in a repacked matrix: the offset of its scale, and of its
/// quant byte `j` (`j < 32` for Q8_0, `< 16` for Q4_0).
#[derive(Clone, Copy)]
struct BlockAt {
    scale: usize,
    quant_base: usize,
    /// Distance between runs of 4 quant bytes (32 in a group, 4 in GGML's layout).
    run_stride: usize,
}

impl BlockAt {
    fn new(kind: BlockKind, rows: usize, nb: usize, r: usize, b: usize) -> Self {
        let qb = kind.block_bytes() - 2;
        let row_bytes = nb * kind.block_bytes();
        if r < grouped_rows(rows) {
            let base = r / GROUP * GROUP * row_bytes;
            let i = r % GROUP;
            Self {
                scale: base + nb * GROUP * qb + b * 2 * GROUP + 2 * i,
                quant_base: base + b * GROUP * qb + 4 * i,
                run_stride: 4 * GROUP,
            }
        } else {
            let block = r * row_bytes + b * kind.block_bytes();
            Self { scale: block, quant_base: block + 2, run_stride: 4 }
        }
    }

    fn quant(self, j: usize) -> usize {
        self.quant_base + j / 4 * self.run_stride + j % 4
    }
}

/// Scale of block `b` of row `r`.
fn scale(kind: BlockKind, w: &[u8], rows: usize, nb: usize, r: usize, b: usize) -> f32 {
    let o = BlockAt::new(kind, rows, nb, r, b).scale;
    f16::from_bits(u16::from_le_bytes([w[o], w[o + 1]])).to_f32()
}

/// The quant bytes of block `b` of row `r`, as GGML stores them (Q8_0: 32 signed bytes;
/// Q4_0: 16 bytes of nibbles offset by 8, element `j` low and `j + 16` high).
fn quants(kind: BlockKind, w: &[u8], rows: usize, nb: usize, r: usize, b: usize) -> [u8; 32] {
    let at = BlockAt::new(kind, rows, nb, r, b);
    let mut q = [0u8; 32];
    for (j, v) in q.iter_mut().enumerate().take(kind.block_bytes() - 2) {
        *v = w[at.quant(j)];
    }
    q
}

/// The 32 values of block `b` of row `r`, dequantized.
fn dequantize_block(kind: BlockKind, w: &[u8], rows: usize, nb: usize, r: usize, b: usize, out: &mut [f32]) {
    let d = scale(kind, w, rows, nb, r, b);
    let q = quants(kind, w, rows, nb, r, b);
    match kind {
        BlockKind::Q8_0 => {
            for (v, &q) in out.iter_mut().zip(&q) {
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

/// Row `r` of a repacked matrix, dequantized (an embedding lookup).
pub fn dequantize_row(kind: BlockKind, w: &[u8], rows: usize, cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / QK;
    for (b, o) in out.chunks_exact_mut(QK).enumerate() {
        dequantize_block(kind, w, rows, nb, r, b, o);
    }
}
