//! What several bench binaries read alike (each includes this file with `#[path]`).

/// A `/proc/self/status` figure in MiB: `"VmHWM:"` (peak RSS) or `"VmRSS:"`; NaN off Linux.
pub fn proc_status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
