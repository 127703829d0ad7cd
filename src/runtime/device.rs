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
