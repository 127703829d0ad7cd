//! The floating-point code path a device computes with: what a model stage's output bytes
//! depend on beyond its inputs, params and seed. Stages record it in their metrics (the engine's
//! `COMPUTE_METRIC`) so `avatar run --check` compares like with like.
//!
//! On the CPU, candle's matrix multiplies go through the `gemm` crate, which picks its
//! microkernel at run time: AVX-512 on an x86-64 that has it (the workspace enables gemm's
//! `x86-v4` feature, which candle leaves off), FMA (AVX2 + FMA) on other x86-64, plain scalar
//! code on one without FMA, NEON on aarch64. The AVX-512 kernels use wider tiles, so their sums
//! differ from the FMA kernels' in the last bits; fused and unfused multiply-adds round
//! differently. gemm also splits an inner dimension above 512 into blocks sized from the L1
//! data cache's geometry (512 on a 32 KiB 8-way L1d, 1024 on a 48 KiB 12-way one), which changes
//! the order of the sums. Both are in the name, so two machines with the same name produce the
//! same bytes. candle's other CPU ops are plain Rust loops in a fixed order (its AVX paths are
//! compile-time only, off in a default build), and the thread count changes no sum: gemm
//! parallelises over rows and columns only.

use candle_core::Device;

/// "cuda", or e.g. "x86_64 avx512f, L1d 48K/12" for the CPU.
pub fn float_path(device: &Device) -> String {
    if device.is_cuda() {
        return "cuda".into();
    }
    format!("{} {}, L1d {}", std::env::consts::ARCH, cpu_kernel(), l1d().unwrap_or_else(|| "unknown".into()))
}

/// The gemm microkernel family this CPU runs.
fn cpu_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        // gemm-common's own dispatch order.
        if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "fma"
        } else {
            "scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") { "neon" } else { "scalar" }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Size and associativity of the first CPU's L1 data cache, as Linux reports them ("48K/12").
fn l1d() -> Option<String> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).ok().map(|s| s.trim().to_string());
        if read("level").as_deref() == Some("1") && read("type").as_deref() == Some("Data") {
            return Some(format!("{}/{}", read("size")?, read("ways_of_associativity")?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_path_names_architecture_kernel_and_cache() {
        let p = super::float_path(&candle_core::Device::Cpu);
        assert!(p.starts_with(std::env::consts::ARCH), "{p}");
        assert!(p.contains(", L1d "), "{p}");
        assert_eq!(p, super::float_path(&candle_core::Device::Cpu), "stable within a process");
    }
}
