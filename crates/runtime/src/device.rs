//! Device selection: `"auto"` picks CUDA when the crate was built with `--features cuda` and a
//! GPU answers, else the CPU.

use anyhow::{Context, bail};
use candle_core::Device;

/// Resolve a manifest device string to a candle device.
pub fn select_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(true),
        "auto" | "" => cuda(false),
        other => bail!("unknown device `{other}`: expected \"auto\", \"cpu\" or \"cuda\""),
    }
}

#[cfg(feature = "cuda")]
fn cuda(required: bool) -> anyhow::Result<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Ok(d),
        Err(e) if required => Err(e).context("device = \"cuda\" but no CUDA GPU could be opened"),
        Err(_) => Ok(Device::Cpu),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(required: bool) -> anyhow::Result<Device> {
    if required {
        return Err(anyhow::anyhow!("this avatar binary was built without CUDA"))
            .context("device = \"cuda\": rebuild with `cargo build --release --features cuda`");
    }
    Ok(Device::Cpu)
}

/// Run candle's CPU elementwise kernels on the calling thread (`CANDLE_NUM_THREADS=1`) unless
/// the user chose otherwise; matrix multiplies keep their own thread pool (`RAYON_NUM_THREADS`),
/// pinned here to the count candle picks by default, so that it is worked out once.
///
/// candle 0.11 parallelises elementwise ops over a spin-waiting barrier pool. On a 2-core machine
/// shared with anything else, a worker that gets descheduled stalls every op: measured with
/// `cargo bench --bench sft` at load ~5, a LoRA step on a 0.5B-shaped model took 14.7 s with the
/// pool and 4.9 s without it (26 tok/s); the scratch model went from ~300–460 to ~800–930 tok/s.
///
/// Without `RAYON_NUM_THREADS`, candle works the count out again on every matmul by parsing
/// /proc/cpuinfo (one line per core per field): 58 µs a call on this 2-core machine, 1.6 % of a
/// 0.5B LoRA step's CPU samples, all on the thread that waits for the matmul's workers. Set, it
/// reads the variable (0.2 µs). rayon's own pool then has candle's count of threads too
/// (physical cores, not SMT siblings).
///
/// # Safety
/// Sets environment variables: call it first thing in `main`, before any other thread exists
/// and before any candle op runs (the pool reads the variable once).
pub unsafe fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads().to_string();
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads) };
    }
}

/// Whether `device = "auto"` picks CUDA: built with `--features cuda` and a GPU answers.
pub fn cuda_available() -> bool {
    cfg!(feature = "cuda") && candle_core::utils::cuda_is_available()
}

/// "cpu" or "cuda": the device class that enters stage keys.
pub fn device_class(device: &Device) -> &'static str {
    if device.is_cuda() { "cuda" } else { "cpu" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_resolve_and_unknown_is_an_error() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(select_device("auto").is_ok());
        let err = select_device("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
    }
}
