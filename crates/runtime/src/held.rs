//! Frozen base weights held compactly: bf16 or f16, or GGML's Q8_0 / Q4_0 blocks (QLoRA), in
//! row tiles. The forward pass and the input gradient widen one tile at a time to f32 (on the
//! CPU on every core, [`widen`]) and multiply there, so no f32 copy of a whole frozen matrix is
//! ever resident, and the math is exactly that of the dequantized matrix in f32. LoRA weights,
//! optimiser state, norms, biases and the loss stay f32 (master weights).
//!
//! Why GGML's Q8_0 / Q4_0 rather than bitsandbytes' NF4: they are the formats the project's
//! quantize stage, serving decoder and llama.cpp already run, candle quantizes and dequantizes
//! them on the CPU and on CUDA, and the measured LoRA loss against the f32 base is in the README
//! (`cargo bench --bench qlora`). One block is 32 weights and one f16 scale (Q8_0: 8.5 bits a
//! weight, Q4_0: 4.5), so a quantized matrix needs a multiple of 32 columns.

use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

mod cpu_product;
mod widen;

/// A quantized format for the frozen linear layers (manifest: `base_quant = "q4_0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseQuant {
    Q8_0,
    Q4_0,
}

impl BaseQuant {
    pub fn name(self) -> &'static str {
        match self {
            BaseQuant::Q8_0 => "q8_0",
            BaseQuant::Q4_0 => "q4_0",
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            BaseQuant::Q8_0 => GgmlDType::Q8_0,
            BaseQuant::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

/// A manifest `dtype` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    F32,
    Bf16,
    F16,
    /// bf16 on CUDA, f32 on the CPU ([`HoldSpec::resolve_dtype`]).
    Auto,
}

impl DtypeChoice {
    pub fn name(self) -> &'static str {
        match self {
            DtypeChoice::F32 => "f32",
            DtypeChoice::Bf16 => "bf16",
            DtypeChoice::F16 => "f16",
            DtypeChoice::Auto => "auto",
        }
    }
}

/// Weights a quantized block covers: columns of a quantized matrix come in multiples of it.
pub const QUANT_BLOCK: usize = 32;

/// How a model's frozen weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSpec {
    /// Dense frozen weights (embedding, output head, and linear layers without `quant`): F32,
    /// BF16 or F16. Also the dtype merged outputs are written in.
    pub dtype: DType,
    /// The frozen linear layers in a quantized format instead.
    pub quant: Option<BaseQuant>,
}

impl HoldSpec {
    /// Everything f32: the runtime's behaviour before held formats existed, byte for byte.
    pub const F32: HoldSpec = HoldSpec { dtype: DType::F32, quant: None };

    /// A `dtype` value: "f32", "bf16" or "f16".
    pub fn parse_dtype(s: &str) -> anyhow::Result<DType> {
        match s {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            other => bail!("dtype: unknown `{other}` (expected \"f32\", \"bf16\", \"f16\" or \"auto\")"),
        }
    }

    /// `"auto"`: bf16 on CUDA (half the memory, the dtype base models ship in), f32 on the CPU,
    /// where candle's bf16 matmul is slow and memory is rarely what stops a run.
    pub fn resolve_dtype(s: &str, device: &Device) -> anyhow::Result<DType> {
        match s {
            "auto" => Ok(if device.is_cuda() { DType::BF16 } else { DType::F32 }),
            other => Self::parse_dtype(other),
        }
    }

    /// Whether nothing is held compactly.
    pub fn is_f32(&self) -> bool {
        self.dtype == DType::F32 && self.quant.is_none()
    }

    /// config.json's `torch_dtype` for a model written in this spec's dtype.
    pub fn torch_dtype(&self) -> &'static str {
        match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        }
    }

    /// "f32", "bf16", "bf16 + q4_0", … for progress lines and metrics.
    pub fn label(&self) -> String {
        let d = match self.dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => "f32",
        };
        match self.quant {
            Some(q) => format!("{d} + {}", q.name()),
            None => d.into(),
        }
    }
}

/// f32 bytes one widened tile may take: small enough to stay in cache-sized pieces and out of
/// the peak, big enough that the matmul per tile is not dominated by call overhead.
const TILE_F32_BYTES: usize = 4 << 20;

/// The fewest rows a tile has (when the matrix has them): see [`tile_rows`].
const MIN_TILE_ROWS: usize = 256;

enum Tile {
    /// F32, BF16 or F16 rows.
    Dense(Tensor),
    Quant(QTensor),
}

/// A frozen `[rows, cols]` matrix in row tiles.
pub struct HeldMatrix {
    rows: usize,
    cols: usize,
    tile_rows: usize,
    tiles: Vec<Tile>,
    device: Device,
}

impl HeldMatrix {
    /// Hold `w` (`[rows, cols]`, any float dtype, any device) on `device` as `spec` says: its
    /// quantized format when it has one, else its dense dtype. `name` is for errors.
    pub fn hold(name: &str, w: &Tensor, spec: HoldSpec, device: &Device) -> anyhow::Result<Self> {
        let (rows, cols) = w.dims2().with_context(|| format!("weight `{name}` is not a matrix"))?;
        if let Some(q) = spec.quant
            && cols % QUANT_BLOCK != 0
        {
            bail!(
                "weight `{name}` has {cols} columns, not a multiple of {QUANT_BLOCK}, so it cannot be held as {}: \
                 drop `base_quant` for this model (dtype = \"bf16\" still halves its memory)",
                q.name()
            );
        }
        let tile_rows = tile_rows(rows, cols);
        let mut tiles = Vec::with_capacity(rows.div_ceil(tile_rows));
        for r0 in (0..rows).step_by(tile_rows) {
            let part = w.narrow(0, r0, tile_rows.min(rows - r0))?;
            tiles.push(match spec.quant {
                Some(q) => {
                    // A compact copy: candle quantizes a storage from its start, whatever the
                    // view's offset.
                    let cpu = part.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.force_contiguous()?;
                    Tile::Quant(QTensor::quantize_onto(&cpu, q.ggml(), device)?)
                }
                // A compact copy: a tile owns its rows, so the source matrix can be dropped.
                None => Tile::Dense(part.to_device(device)?.to_dtype(spec.dtype)?.force_contiguous()?),
            });
        }
        Ok(HeldMatrix { rows, cols, tile_rows, tiles, device: device.clone() })
    }

    /// Row-tile views of a dense matrix already on its device (the embedding a tied head
    /// shares): no copy. An f32 matrix is one tile, so nothing is widened and the math is one
    /// matmul, as it was before held formats existed.
    pub fn views(w: &Tensor) -> anyhow::Result<Self> {
        let (rows, cols) = w.dims2()?;
        let w = w.contiguous()?;
        let tile_rows = if w.dtype() == DType::F32 { rows.max(1) } else { tile_rows(rows, cols) };
        let mut tiles = Vec::new();
        for r0 in (0..rows).step_by(tile_rows) {
            tiles.push(Tile::Dense(w.narrow(0, r0, tile_rows.min(rows - r0))?));
        }
        Ok(HeldMatrix { rows, cols, tile_rows, tiles, device: w.device().clone() })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Whether a multiply creates widened copies (anything but f32 rows).
    fn widens(&self) -> bool {
        self.tiles.iter().any(|t| !matches!(t, Tile::Dense(d) if d.dtype() == DType::F32))
    }

    /// Bytes the held matrix occupies (views count their rows).
    pub fn bytes(&self) -> usize {
        self.tiles
            .iter()
            .map(|t| match t {
                Tile::Dense(d) => d.elem_count() * d.dtype().size_in_bytes(),
                Tile::Quant(q) => q.storage_size_in_bytes(),
            })
            .sum()
    }

    fn tile_f32(&self, i: usize) -> candle_core::Result<Tensor> {
        match &self.tiles[i] {
            Tile::Dense(t) if t.device().is_cpu() && t.dtype() != DType::F32 => widen::dense(t),
            Tile::Dense(t) => t.to_dtype(DType::F32),
            Tile::Quant(q) if self.device.is_cpu() => widen::quantized(q),
            Tile::Quant(q) => q.dequantize(&self.device),
        }
    }

    /// The whole matrix in f32 (merging an adapter into it).
    pub fn to_f32(&self) -> anyhow::Result<Tensor> {
        let parts = (0..self.tiles.len()).map(|i| self.tile_f32(i)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// `x W^T` for `x: [m, cols]`. Only f32 rows are sure to stay differentiable through `x`:
    /// a widening matrix's CPU product is computed outside candle's ops, and elsewhere its
    /// widened tiles would stay in the graph. Pass a detached `x` ([`held_linear`] does).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if cpu_product::applies(self, x) {
            return cpu_product::forward(self, x);
        }
        if self.tiles.len() == 1 {
            return x.matmul(&self.tile_f32(0)?.t()?);
        }
        let parts = (0..self.tiles.len())
            .map(|i| x.matmul(&self.tile_f32(i)?.t()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    /// `g W` for `g: [m, rows]`: the gradient of `x W^T` with respect to `x`.
    pub fn input_grad(&self, g: &Tensor) -> candle_core::Result<Tensor> {
        if cpu_product::applies(self, g) {
            return cpu_product::input_grad(self, g);
        }
        if self.tiles.len() == 1 {
            return g.matmul(&self.tile_f32(0)?);
        }
        let mut acc: Option<Tensor> = None;
        for i in 0..self.tiles.len() {
            let r0 = i * self.tile_rows;
            let n = self.tile_rows.min(self.rows - r0);
            let part = g.narrow(1, r0, n)?.contiguous()?.matmul(&self.tile_f32(i)?)?;
            acc = Some(match acc {
                Some(a) => (a + part)?,
                None => part,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("held matrix without rows".into()))
    }
}

/// Rows per tile: one widened tile is about [`TILE_F32_BYTES`], but never fewer than
/// [`MIN_TILE_ROWS`] rows. A wide matrix (a 7B's down projection, 18944 columns) would otherwise
/// get 55-row tiles: each tile's matmul repacks the whole input, and the forward took 1.6–1.8×
/// the plain f32 matmul's time, the input gradient 1.2–1.3×; at 256 rows (a 19 MiB tile) 1.2–1.4×
/// and 1.0×.
fn tile_rows(rows: usize, cols: usize) -> usize {
    (TILE_F32_BYTES / (4 * cols.max(1))).max(MIN_TILE_ROWS).clamp(1, rows.max(1))
}

/// Routes the gradient of a held matmul to its input. Its forward returns its second operand
/// (the product, computed outside the graph tile by tile); its backward gives the first operand
/// `grad W` and the product nothing. The graph so keeps only the input and the shared handle to
/// the held matrix, never a widened tile.
struct HeldGrad(Arc<HeldMatrix>);

fn copy_of(layout: &Layout) -> candle_core::Result<()> {
    match layout.contiguous_offsets() {
        Some((0, end)) if end == layout.shape().elem_count() => Ok(()),
        _ => candle_core::bail!("held matmul: the product must be a fresh contiguous tensor"),
    }
}

impl CustomOp2 for HeldGrad {
    fn name(&self) -> &'static str {
        "held-matmul"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_of(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy_of(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.0.input_grad(grad)?), None))
    }
}

/// `x W^T` for `x: [..., cols]` through a held matrix. With `grad`, gradients flow to `x`
/// through [`HeldGrad`], which keeps no widened tile. Without, f32 rows stay differentiable
/// by candle's own ops (exactly the matmul they always were), while a widening matrix takes a
/// detached input: otherwise a generation whose activations carry a graph (LoRA variables
/// are in it) would keep every widened tile of every layer alive until its logits go.
pub fn held_linear(x: &Tensor, w: &Arc<HeldMatrix>, grad: bool) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let cols = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.contiguous()?.reshape((rows, cols))?;
    let y = match grad {
        true => x2.apply_op2(&w.forward(&x2.detach())?.contiguous()?, HeldGrad(w.clone()))?,
        false if w.widens() => w.forward(&x2.detach())?,
        false => w.forward(&x2)?,
    };
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.rows);
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn specs() -> [HoldSpec; 4] {
        [
            HoldSpec { dtype: DType::BF16, quant: None },
            HoldSpec { dtype: DType::F16, quant: None },
            HoldSpec { dtype: DType::F32, quant: Some(BaseQuant::Q8_0) },
            HoldSpec { dtype: DType::F32, quant: Some(BaseQuant::Q4_0) },
        ]
    }

    /// Several tiles (rows × cols × 4 > 4 MiB) so the tile loops run.
    fn tiled(rows: usize, cols: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_and_input_gradient_are_those_of_the_widened_matrix() {
        let w = tiled(1200, 1024);
        for spec in specs() {
            let held = Arc::new(HeldMatrix::hold("w", &w, spec, &Device::Cpu).unwrap());
            assert!(held.tiles.len() > 1, "{}: the test needs several tiles", spec.label());
            let dense = held.to_f32().unwrap();
            assert_eq!(dense.dims(), &[1200, 1024]);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 1024), &Device::Cpu).unwrap()).unwrap();
            let y = held_linear(x.as_tensor(), &held, true).unwrap();
            let reference = x.as_tensor().broadcast_matmul(&dense.t().unwrap()).unwrap();
            let d = max_diff(&y, &reference);
            assert!(d < 1e-3, "{}: forward differs by {d}", spec.label());
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let expected = (reference * 2.0).unwrap().broadcast_matmul(&dense).unwrap();
            let rel = max_diff(gx, &expected) / expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(rel < 1e-4, "{}: input gradient differs by {rel} (relative)", spec.label());
            // One row (a generation step) and none.
            let one = Tensor::randn(0f32, 1.0, (1, 1024), &Device::Cpu).unwrap();
            let d = max_diff(&held.forward(&one).unwrap(), &one.matmul(&dense.t().unwrap()).unwrap());
            assert!(d < 1e-3, "{}: one-row forward differs by {d}", spec.label());
            let none = Tensor::zeros((0, 1200), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(held.input_grad(&none).unwrap().dims(), &[0, 1024]);
        }
    }

    #[test]
    fn held_formats_stay_close_to_the_original_and_are_smaller() {
        let w = tiled(256, 512);
        let f32_bytes = 256 * 512 * 4;
        // Relative max error a format keeps, and the bytes it may take: bf16 has 8 mantissa
        // bits, f16 11, Q8_0 an int8 per weight, Q4_0 sixteen levels per 32-weight block.
        for (spec, tol, bytes) in [
            (specs()[0], 4e-3, f32_bytes / 2),
            (specs()[1], 1e-3, f32_bytes / 2),
            (specs()[2], 1e-2, f32_bytes * 9 / 32),
            (specs()[3], 0.2, f32_bytes * 5 / 32),
        ] {
            let held = HeldMatrix::hold("w", &w, spec, &Device::Cpu).unwrap();
            let err =
                max_diff(&held.to_f32().unwrap(), &w) / w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < tol, "{}: relative error {err} ≥ {tol}", spec.label());
            assert!(held.bytes() <= bytes, "{}: {} bytes > {bytes}", spec.label(), held.bytes());
        }
    }

    #[test]
    fn a_quantized_matrix_needs_whole_blocks_of_columns() {
        let w = tiled(4, 40);
        let err = HeldMatrix::hold("model.layers.0.mlp.up_proj.weight", &w, specs()[3], &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("up_proj") && err.contains("40 columns"), "{err}");
    }

    #[test]
    fn manifest_values_parse_and_unknown_ones_are_named() {
        assert_eq!(serde_json::from_value::<BaseQuant>("q4_0".into()).unwrap(), BaseQuant::Q4_0);
        assert!(serde_json::from_value::<BaseQuant>("nf4".into()).unwrap_err().to_string().contains("nf4"));
        assert_eq!(HoldSpec::resolve_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
        assert_eq!(HoldSpec::parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(HoldSpec::parse_dtype("f64").unwrap_err().to_string().contains("f64"));
    }
}
