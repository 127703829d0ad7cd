//! Portable kernels: the same integer sums as the SIMD ones, in plain loops (any CPU; the
//! reference the SIMD kernels are tested against).

use super::acts::ActRow;
use super::layout::GROUP;
use super::{BlockKind, QK};

/// Dot product of one weight row in GGML's layout with one activation row.
pub(super) fn row_dot(kind: BlockKind, row: &[u8], act: ActRow, nb: usize) -> f32 {
    let mut total = 0f32;
    for (b, blk) in row.chunks_exact(kind.block_bytes()).enumerate().take(nb) {
        let dw = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let q = &blk[2..];
        let a = &act.qs[b * QK..(b + 1) * QK];
        match kind {
            BlockKind::Q8_0 => {
                let s: i32 = q.iter().zip(a).map(|(&x, &y)| (x as i8 as i32) * (y as i32)).sum();
                total += dw * act.d[b] * s as f32;
            }
            BlockKind::Q4_0 => {
                let s: i32 =
                    (0..16).map(|j| (q[j] & 0x0F) as i32 * a[j] as i32 + (q[j] >> 4) as i32 * a[j + 16] as i32).sum();
                // Nibbles are stored with an offset of 8: sum((q-8)*a) = sum(q*a) - 8*sum(a).
                total += dw * (act.d[b] * s as f32 - 8.0 * act.dsum[b]);
            }
        }
    }
    total
}

/// Dot products of the 8 rows of one interleaved group with one activation row.
pub(super) fn group_dots(kind: BlockKind, group: &[u8], act: ActRow, nb: usize) -> [f32; GROUP] {
    let qb = kind.block_bytes() - 2;
    let scales = &group[nb * qb * GROUP..];
    let mut total = [0f32; GROUP];
    for b in 0..nb {
        let q = &group[b * qb * GROUP..(b + 1) * qb * GROUP];
        let a = &act.qs[b * QK..(b + 1) * QK];
        // Rows back out of the interleaving first (Q4_0: nibbles as 0..15), so that each
        // row's sum is a plain 32-long i8 dot product, which compilers vectorise.
        let mut w = [[0i8; QK]; GROUP];
        for step in 0..qb / 4 {
            for (r, wr) in w.iter_mut().enumerate() {
                let bytes = &q[step * 4 * GROUP + 4 * r..][..4];
                match kind {
                    BlockKind::Q8_0 => {
                        for (i, &byte) in bytes.iter().enumerate() {
                            wr[4 * step + i] = byte as i8;
                        }
                    }
                    BlockKind::Q4_0 => {
                        for (i, &byte) in bytes.iter().enumerate() {
                            wr[4 * step + i] = (byte & 0x0F) as i8;
                            wr[16 + 4 * step + i] = (byte >> 4) as i8;
                        }
                    }
                }
            }
        }
        let s: [i32; GROUP] =
            std::array::from_fn(|r| w[r].iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum::<i32>());
        for (r, t) in total.iter_mut().enumerate() {
            let o = b * 2 * GROUP + 2 * r;
            let dw = half::f16::from_bits(u16::from_le_bytes([scales[o], scales[o + 1]])).to_f32();
            *t += match kind {
                BlockKind::Q8_0 => dw * act.d[b] * s[r] as f32,
                // Nibbles are stored with an offset of 8: sum((q-8)*a) = sum(q*a) - 8*sum(a).
                BlockKind::Q4_0 => dw * (act.d[b] * s[r] as f32 - 8.0 * act.dsum[b]),
            };
        }
    }
    total
}
