//! Portable kernels: the same integer sums as the SIMD ones, in plain loops (any CPU; the
//! reference the SIMD kernels are tested against).

use super::acts::ActRow;
use super::layout::GROUP;
use super::{BlockKind, QK};

/// Dot product of one row-layout weight row with one activation row.
pub(super) fn row_dot(kind: BlockKind, row: &[u8], act: ActRow, nb: usize) -> f32 {
    let qb = kind.block_bytes() - 2;
    let mut total = 0f32;
    for b in 0..nb {
        let o = nb * qb + 2 * b;
        let dw = half::f16::from_bits(u16::from_le_bytes([row[o], row[o + 1]])).to_f32();
        let q = &row[b * qb..(b + 1) * qb];
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
        let mut s = [0i32; GROUP];
        for step in 0..qb / 4 {
            for (r, sr) in s.iter_mut().enumerate() {
                for i in 0..4 {
                    let byte = q[step * 4 * GROUP + 4 * r + i];
                    let e = 4 * step + i;
                    *sr += match kind {
                        BlockKind::Q8_0 => byte as i8 as i32 * a[e] as i32,
                        BlockKind::Q4_0 => (byte & 0x0F) as i32 * a[e] as i32 + (byte >> 4) as i32 * a[e + 16] as i32,
                    };
                }
            }
        }
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
