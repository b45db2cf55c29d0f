//! The device's measured peak: f32 matmul throughput, the denominator of MFU.
//!
//! `peak_flops` times an `n × n · n × n` f32 matmul (2·n³ FLOPs) after one warm-up, synced,
//! and keeps the best of `reps` (10 for the cached value). It is measured once per process and device name and cached.
//! MFU = 3 · forward FLOPs per token · tokens/s / peak (forward + backward ≈ 3× forward, as
//! nanoGPT's `estimate_mfu`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

/// Matmul side used for the peak.
pub const PEAK_SIZE: usize = 1024;

static CACHE: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);

/// FLOP/s of the best of `reps` `n³` matmuls on `device`.
pub fn measure_peak_flops(device: &Device, n: usize, reps: usize) -> f64 {
    // Host-made values: drawing from Burn's RNG would shift the global random stream under
    // another thread that just seeded it to initialise a model.
    let values: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32 - 48.0) / 48.0).collect();
    let a = Tensor::<2>::from_data(TensorData::new(values.clone(), [n, n]), device);
    let b = Tensor::<2>::from_data(TensorData::new(values, [n, n]), device);
    let _ = a.clone().matmul(b.clone()).sum().into_data();
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        device.sync().ok();
        let t0 = Instant::now();
        let c = a.clone().matmul(b.clone());
        device.sync().ok();
        best = best.min(t0.elapsed().as_secs_f64());
        drop(c);
    }
    2.0 * (n as f64).powi(3) / best
}

/// The peak of `device` (named `name`), measured on first use in this process.
pub fn peak_flops(device: &Device, name: &str) -> f64 {
    let mut cache = CACHE.lock().expect("peak cache");
    *cache.get_or_insert_with(HashMap::new).entry(name.to_string()).or_insert_with(|| measure_peak_flops(device, PEAK_SIZE, 10))
}

/// Model FLOPs utilisation of training at `tokens_per_sec` with `forward_flops_per_token`.
pub fn mfu(forward_flops_per_token: u64, tokens_per_sec: f64, peak: f64) -> f64 {
    3.0 * forward_flops_per_token as f64 * tokens_per_sec / peak
}
