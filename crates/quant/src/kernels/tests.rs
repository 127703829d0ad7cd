use half::f16;

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

/// GGML's own dequantization of a native (not repacked) block, the ground truth for layouts.
fn ggml_dequant(kind: BlockKind, blk: &[u8]) -> Vec<f32> {
    let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
    match kind {
        BlockKind::Q8_0 => blk[2..].iter().map(|&q| d * (q as i8) as f32).collect(),
        BlockKind::Q4_0 => {
            let q = &blk[2..];
            let lo = q.iter().map(|&b| d * ((b & 0x0F) as f32 - 8.0));
            lo.chain(q.iter().map(|&b| d * ((b >> 4) as f32 - 8.0))).collect()
        }
    }
}

fn quantized(kind: BlockKind, w: &[f32], k: usize) -> Vec<u8> {
    match kind {
        BlockKind::Q8_0 => w.chunks(k).flat_map(quantize_q8_0_row).collect(),
        BlockKind::Q4_0 => w.chunks(k).flat_map(quantize_q4_0_row).collect(),
    }
}

/// Every kernel family this machine has agrees with the portable kernels, and all approximate
/// the float product: row counts with and without a partial group, odd block counts (a lone
/// last block, partial scale groups), 1 to 4 activation rows at a time (t = 5, 6: a remainder).
#[test]
fn kernels_match_float_and_each_other() {
    for (t, k, rows) in [(1, 96, 37), (2, 96, 8), (3, 320, 37), (5, 320, 16), (6, 96, 5), (1, 320, 43)] {
        let w = pseudo(rows * k, 1);
        let x = pseudo(t * k, 2);
        let acts = QuantizedActs::quantize(&x, k);
        let nb = k / QK;
        for (kind, tol) in [(BlockKind::Q8_0, 0.15), (BlockKind::Q4_0, 0.6)] {
            let mut bytes = quantized(kind, &w, k);
            // Quantization error of a dot product grows like sqrt(k): tolerances are for k = 96.
            let tol = tol * (k as f32 / 96.0).sqrt();
            repack(kind, &mut bytes, rows, k);
            let row_bytes = nb * kind.block_bytes();
            let grouped = layout::grouped_rows(rows);
            for isa in available_isas() {
                let mut out = vec![0f32; rows * t];
                matmul_q_group_on(isa, &mut [MatJob { kind, w: &bytes, rows, out: &mut out }], &acts);
                for ti in 0..t {
                    for r in 0..rows {
                        let exact: f32 = (0..k).map(|i| w[r * k + i] * x[ti * k + i]).sum();
                        let got = out[ti * rows + r];
                        let portable = if r < grouped {
                            let g = r / GROUP * GROUP;
                            let group = &bytes[g * row_bytes..(g + GROUP) * row_bytes];
                            portable::group_dots(kind, group, acts.row(ti), nb)[r - g]
                        } else {
                            portable::row_dot(kind, &bytes[r * row_bytes..(r + 1) * row_bytes], acts.row(ti), nb)
                        };
                        let at = format!("{isa:?} {kind:?} k{k} r{r} t{ti}");
                        assert!((got - exact).abs() < tol, "{at}: {got} vs {exact}");
                        assert!(
                            (portable - got).abs() < 1e-3 * (1.0 + got.abs()),
                            "{at}: {got} vs portable {portable}"
                        );
                    }
                }
            }
        }
    }
}

/// Every layout gives back GGML's values for every block of every row (embedding lookups
/// and the portable kernels read through it).
#[test]
fn repacked_rows_dequantize_like_ggml() {
    for (rows, k) in [(19, 96), (8, 64), (3, 32)] {
        let w = pseudo(rows * k, 5);
        for kind in [BlockKind::Q8_0, BlockKind::Q4_0] {
            let native = quantized(kind, &w, k);
            let mut bytes = native.clone();
            repack(kind, &mut bytes, rows, k);
            let bb = kind.block_bytes();
            let mut got = vec![0f32; k];
            for r in 0..rows {
                dequantize_row(kind, &bytes, rows, k, r, &mut got);
                let want: Vec<f32> = native[r * k / QK * bb..(r + 1) * k / QK * bb]
                    .chunks(bb)
                    .flat_map(|b| ggml_dequant(kind, b))
                    .collect();
                assert_eq!(got, want, "{kind:?} {rows}x{k} row {r}");
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

/// SIMD activation quantization gives the portable bytes, scale and sum, ties included
/// (a block whose max is 127 has scale 1, so x.5 values are exact ties).
#[test]
fn activation_quantization_matches_portable() {
    let mut ties: Vec<f32> = vec![127.0, -0.5, 0.5, 2.5, -3.5, 0.49999997, -0.49999997, 126.5, -126.5, 0.0, -0.0, 1e-9];
    ties.resize(QK, 7.5);
    let mut blocks = vec![ties, vec![0.0; QK], vec![-1e-30; QK]];
    blocks.extend((0..50).map(|s| pseudo(QK, 100 + s).iter().map(|v| v * (s as f32 + 0.3)).collect()));
    for src in blocks {
        let acts = QuantizedActs::quantize(&src, QK);
        let mut q = [0i8; QK];
        let (scale, sum) = acts::quantize_block_portable(&src, &mut q);
        assert_eq!(acts.qs, q, "quants of {src:?}");
        assert_eq!((acts.d[0], acts.dsum[0]), (scale, scale * sum as f32));
    }
}

fn close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// The SIMD attention, softmax and SiLU paths agree with the portable loops: head counts
/// with and without a remainder of four, head sizes that fill eight registers and that do not.
#[test]
fn vector_ops_match_portable() {
    for (heads, hd, n, stride) in [(7, 64, 37, 128), (4, 128, 5, 256), (3, 24, 9, 24), (1, 8, 1, 8)] {
        let q = pseudo(heads * hd, 11);
        let kv = pseudo(n * stride, 12);
        let mut fast = vec![0f32; heads * n];
        let mut slow = fast.clone();
        vector::attention_scores(&q, hd, &kv, stride, n, 0.125, &mut fast);
        vector::attention_scores_portable(&q, hd, &kv, stride, n, 0.125, &mut slow);
        close(&fast, &slow, 1e-5, "scores");
        let w = pseudo(heads * n, 13);
        let (mut fast, mut slow) = (pseudo(heads * hd, 14), pseudo(heads * hd, 14));
        vector::attention_values(&w, n, &kv, stride, hd, &mut fast);
        vector::attention_values_portable(&w, n, &kv, stride, hd, &mut slow);
        close(&fast, &slow, 1e-5, "values");
    }
    for n in [1, 7, 8, 29, 300] {
        let x: Vec<f32> = pseudo(n, 15).iter().map(|v| v * 40.0).collect();
        let (mut fast, mut slow) = (x.clone(), x.clone());
        vector::softmax(&mut fast);
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        vector::softmax_portable(&mut slow, max);
        close(&fast, &slow, 1e-6, "softmax");
        assert!((fast.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let up = pseudo(n, 16);
        let mut g: Vec<f32> = x.iter().map(|v| v * 3.0).chain([-200.0, 200.0, 0.0]).collect();
        let up: Vec<f32> = up.into_iter().chain([1.0, 1.0, 1.0]).collect();
        let mut slow = g.clone();
        vector::silu_mul(&mut g, &up);
        vector::silu_mul_portable(&mut slow, &up);
        close(&g, &slow, 1e-6, "silu");
    }
}
