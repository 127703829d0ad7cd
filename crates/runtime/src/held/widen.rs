//! Widening a held CPU tile to f32 on every core. candle's own conversions (`to_dtype`,
//! `QTensor::dequantize`) run on one thread, and a held matmul widens each tile twice per step
//! (forward and input gradient): on a 2-core machine that was a fifth of a Q8_0 LoRA step. The
//! values are candle's, bit for bit (the same products; the tests compare them).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values one parallel task widens.
const TASK: usize = 64 * 1024;

/// A bf16 or f16 CPU tensor in f32.
pub fn dense(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    let mut out = vec![0f32; t.elem_count()];
    if !dense_into(&t, &mut out)? {
        return t.to_dtype(DType::F32);
    }
    Tensor::from_vec(out, t.shape().clone(), t.device())
}

/// Widens a contiguous bf16 or f16 CPU tensor into `out` (as long as the tensor); false, with
/// `out` untouched, for any other tensor.
pub fn dense_into(t: &Tensor, out: &mut [f32]) -> Result<bool> {
    let (storage, layout) = t.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else { return Ok(false) };
    if out.len() != b - a {
        candle_core::bail!("widen: {} values into {}", b - a, out.len());
    }
    match &*storage {
        Storage::Cpu(CpuStorage::BF16(v)) => widen_each(&v[a..b], out, |v| v.to_f32()),
        Storage::Cpu(CpuStorage::F16(v)) => widen_each(&v[a..b], out, |v| v.to_f32()),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Whether [`dense_into`] widens a CPU tensor of this dtype.
pub fn widens_dense(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `out[i] = widen(values[i])`, in parallel tasks of [`TASK`] values.
fn widen_each<T: Copy + Sync>(values: &[T], out: &mut [f32], widen: impl Fn(T) -> f32 + Sync) {
    out.par_chunks_mut(TASK).zip(values.par_chunks(TASK)).for_each(|(o, v)| {
        o.iter_mut().zip(v).for_each(|(o, &v)| *o = widen(v));
    });
}

/// Widens one 32-value block from its bytes.
type BlockWidener = fn(&[u8], &mut [f32]);

/// A Q8_0 or Q4_0 CPU tensor dequantized, as `QTensor::dequantize` computes it.
pub fn quantized(q: &QTensor) -> Result<Tensor> {
    let mut out = vec![0f32; q.shape().elem_count()];
    if !quantized_into(q, &mut out)? {
        return q.dequantize(&candle_core::Device::Cpu);
    }
    Tensor::from_vec(out, q.shape().clone(), &candle_core::Device::Cpu)
}

/// Dequantizes a Q8_0 or Q4_0 CPU tensor into `out` (as long as the tensor); false, with
/// `out` untouched, for other formats.
pub fn quantized_into(q: &QTensor, out: &mut [f32]) -> Result<bool> {
    let Some((block_bytes, widen_block)) = block_format(q.dtype()) else { return Ok(false) };
    let data = q.data()?;
    let n = q.shape().elem_count();
    if data.len() != n / 32 * block_bytes || !n.is_multiple_of(32) || out.len() != n {
        candle_core::bail!("widen: {} bytes for {n} values of {:?} into {}", data.len(), q.dtype(), out.len());
    }
    let blocks = TASK / 32;
    out.par_chunks_mut(blocks * 32).zip(data.par_chunks(blocks * block_bytes)).for_each(|(o, d)| {
        o.chunks_exact_mut(32).zip(d.chunks_exact(block_bytes)).for_each(|(o, d)| widen_block(d, o));
    });
    Ok(true)
}

/// Whether [`quantized_into`] dequantizes this format.
pub fn widens_quantized(format: GgmlDType) -> bool {
    block_format(format).is_some()
}

/// A format's bytes per 32-value block and its block widener.
fn block_format(format: GgmlDType) -> Option<(usize, BlockWidener)> {
    match format {
        GgmlDType::Q8_0 => Some((34, q8_0)),
        GgmlDType::Q4_0 => Some((18, q4_0)),
        _ => None,
    }
}

fn scale(block: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
}

/// GGML's Q8_0 block: an f16 scale, then 32 signed bytes.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = scale(block);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// GGML's Q4_0 block: an f16 scale, then 16 bytes; element `j` is the low nibble of byte `j`
/// and element `j + 16` its high nibble, each offset by 8.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = scale(block);
    for (j, &b) in block[2..18].iter().enumerate() {
        out[j] = ((b & 0x0F) as i16 - 8) as f32 * d;
        out[j + 16] = ((b >> 4) as i16 - 8) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn widened_tiles_equal_candles_conversions_bit_for_bit() {
        // More values than one task, so the parallel split runs.
        let x = Tensor::randn(0f32, 1.0, (300, 512), &Device::Cpu).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            a.len() == b.len() && a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        for dtype in [DType::BF16, DType::F16] {
            let t = x.to_dtype(dtype).unwrap();
            assert!(same(&dense(&t).unwrap(), &t.to_dtype(DType::F32).unwrap()), "{dtype:?}");
        }
        for kind in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&x, kind).unwrap();
            assert!(same(&quantized(&q).unwrap(), &q.dequantize(&Device::Cpu).unwrap()), "{kind:?}");
        }
    }
}
