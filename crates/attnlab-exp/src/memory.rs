//! Resident memory of this process on Linux (`/proc/self/status`); `None` elsewhere.

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size in bytes (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// Current resident set size in bytes (VmRSS).
pub fn current_rss_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

/// Resets the peak (VmHWM) to the current resident set (Linux ≥ 4.0); no-op elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Bytes the device's allocator holds now (reserved pools, CubeCL backends such as wgpu and
/// CUDA); `None` where the backend does not report it (CPU).
pub fn device_reserved_bytes(device: &burn::tensor::Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved.max(u.bytes_in_use))
}
