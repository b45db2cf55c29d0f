//! Backend choice at run time: `cpu` (burn-flex), `wgpu`, `cuda` (cargo feature).

use burn::tensor::Device;

use crate::error::SpecError;

/// Names accepted by `--device`, given the features this binary was built with.
pub fn device_names() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device for a `--device` name (not yet autodiff).
pub fn parse_device(name: &str) -> Result<Device, SpecError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => Err(SpecError::new(format!(
            "--device = {other:?}: unknown device; allowed: {}",
            device_names().join(", ")
        ))),
    }
}

/// The part and what its kernels are compiled for (e.g. `NVIDIA H200`, `wgpu<spirv>…` or
/// `wgpu<wgsl>…`), for the logs and benchmark tables of GPU runs; `None` on CPU.
pub fn describe(device: &Device) -> Option<String> {
    #[cfg(feature = "wgpu")]
    if let Some(id) = device.identity() {
        return Some(format!("{} ({})", id.name, id.fingerprint));
    }
    let _ = device;
    None
}
