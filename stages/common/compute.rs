//! The model stages name the floating-point code path they computed on in their metrics, so
//! `avatar run --check` on another kind of machine says why it did not compare them instead of
//! failing (see avatar_runtime::compute).

use avatar_engine::Metrics;
use avatar_engine::record::COMPUTE_METRIC;
use candle_core::Device;

/// Record `device`'s code path, and the quantized decoder's kernels when the stage used them.
pub fn record(metrics: &mut Metrics, device: &Device, quant_kernels: bool) {
    let mut path = avatar_runtime::compute::float_path(device);
    if quant_kernels {
        // The AVX-512 VNNI kernels compute the AVX2 kernels' sums in the same order: the CI
        // demo's eval wrote the same bytes with both (AVATAR_KERNELS=avx2), and other bytes
        // with the portable loops.
        let kernels = match avatar_quant::kernels::kernel_name() {
            "avx512-vnni" | "avx2" => "avx2",
            other => other,
        };
        path.push_str(&format!("; kernels {kernels}"));
    }
    metrics.insert(COMPUTE_METRIC.into(), path.into());
}

/// [`record`] for a stage that has the manifest's device name rather than a device.
pub fn record_named(metrics: &mut Metrics, device: &str, quant_kernels: bool) -> anyhow::Result<()> {
    record(metrics, &avatar_runtime::device::select_device(device)?, quant_kernels);
    Ok(())
}
