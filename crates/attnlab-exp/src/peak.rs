//! The device's measured peak: matmul throughput in the dtype training computes in, the
//! denominator of MFU.
//!
//! [`peak_flops`] times square `n × n · n × n` matmuls (2·n³ FLOPs) at growing sizes
//! ([`SIZES`]: 256 up to 8192, doubling while one product still takes under
//! [`GROW_BELOW_S`], so a GPU reaches the sizes where its matmul kernels saturate and a slow
//! device stops early), each after one warm-up (autotune picks its kernel there), synced, the
//! best of `reps`; the peak is the best over sizes. It is measured once per process, device name
//! and dtype, and cached. A single 1024³ f32 product, as measured before, undershot a GPU's
//! usable peak by 2–5×, and the MFU of a 6×384 model then printed 160–210%.
//!
//! MFU = 3 · forward FLOPs per token · tokens/s / peak (forward + backward ≈ 3× forward, as
//! nanoGPT's `estimate_mfu`). It is never above 100%: where a model's achieved FLOP/s exceed the
//! measured peak, [`mfu`] uses the achieved figure as the peak and says so ([`Mfu::exceeded`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor, TensorData};

/// Matmul sides tried for the peak, smallest first.
pub const SIZES: [usize; 6] = [256, 512, 1024, 2048, 4096, 8192];

/// A larger size is tried only while one product at this size took less than this (seconds).
pub const GROW_BELOW_S: f64 = 0.05;

static CACHE: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);

/// FLOP/s of the best of `reps` `n³` matmuls in `dtype` on `device`, and the best time (s).
pub fn measure_matmul(device: &Device, n: usize, reps: usize, dtype: DType) -> (f64, f64) {
    // Host-made values: drawing from Burn's RNG would shift the global random stream under
    // another thread that just seeded it to initialise a model.
    let values: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32 - 48.0) / 48.0).collect();
    let a = Tensor::<2>::from_data(TensorData::new(values.clone(), [n, n]), device).cast(dtype);
    let b = Tensor::<2>::from_data(TensorData::new(values, [n, n]), device).cast(dtype);
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
    (2.0 * (n as f64).powi(3) / best, best)
}

/// One size of a peak sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizePeak {
    pub n: usize,
    pub flops: f64,
    pub seconds: f64,
}

/// The sweep `peak_flops` does: every size of [`SIZES`] up to `max_n`, growing while a product
/// takes under [`GROW_BELOW_S`]. `time(n)` returns (FLOP/s, seconds) of size `n`.
pub fn sweep_sizes(max_n: usize, mut time: impl FnMut(usize) -> (f64, f64)) -> Vec<SizePeak> {
    let mut out = Vec::new();
    for n in SIZES.into_iter().filter(|&n| n <= max_n) {
        let (flops, seconds) = time(n);
        out.push(SizePeak { n, flops, seconds });
        if seconds >= GROW_BELOW_S {
            break;
        }
    }
    out
}

/// The best of a sweep (0 for an empty one).
pub fn best(sweep: &[SizePeak]) -> f64 {
    sweep.iter().map(|s| s.flops).fold(0.0, f64::max)
}

/// The sizes and FLOP/s of the peak sweep in `dtype` on `device`.
pub fn peak_sweep(device: &Device, dtype: DType, reps: usize) -> Vec<SizePeak> {
    sweep_sizes(usize::MAX, |n| measure_matmul(device, n, reps, dtype))
}

/// The peak of `device` (named `name`) in `dtype`, measured on first use in this process.
pub fn peak_flops(device: &Device, name: &str, dtype: DType) -> f64 {
    let key = format!("{name}/{dtype:?}");
    let mut cache = CACHE.lock().expect("peak cache");
    *cache.get_or_insert_with(HashMap::new).entry(key).or_insert_with(|| best(&peak_sweep(device, dtype, 10)))
}

/// Model FLOPs utilisation, never above 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mfu {
    /// Achieved / peak, with the peak raised to the achieved FLOP/s where those exceed it.
    pub value: f64,
    /// The achieved FLOP/s (3 · forward FLOPs/token · tokens/s) exceeded the measured peak.
    pub exceeded: bool,
    /// The peak used (FLOP/s): the measured one, or the achieved figure where that is larger.
    pub peak: f64,
}

/// MFU of training at `tokens_per_sec` with `forward_flops_per_token` against `peak` FLOP/s.
pub fn mfu(forward_flops_per_token: u64, tokens_per_sec: f64, peak: f64) -> Mfu {
    let achieved = 3.0 * forward_flops_per_token as f64 * tokens_per_sec;
    let exceeded = achieved > peak;
    let used = if exceeded { achieved } else { peak };
    Mfu { value: if used > 0.0 { achieved / used } else { f64::NAN }, exceeded, peak: used }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planted and seen failing: the sweep keeping the first (or the last) size instead of the
    /// best; growing past a size that took too long (a slow device would time 8192³); MFU
    /// returned as the raw ratio (2.0 here) when the achieved FLOP/s exceed the peak.
    #[test]
    fn sweep_grows_while_fast_and_keeps_the_best() {
        // A device whose throughput rises to 2048 and falls after; 4096 takes too long.
        let timing = |n: usize| match n {
            256 => (1e9, 0.001),
            512 => (4e9, 0.002),
            1024 => (9e9, 0.01),
            2048 => (12e9, 0.03),
            4096 => (10e9, 0.2),
            _ => panic!("size {n} should not be timed"),
        };
        let sweep = sweep_sizes(usize::MAX, timing);
        assert_eq!(sweep.iter().map(|s| s.n).collect::<Vec<_>>(), vec![256, 512, 1024, 2048, 4096]);
        assert_eq!(best(&sweep), 12e9);
        assert_eq!(sweep_sizes(1024, timing).len(), 3);

        let m = mfu(1_000, 1e6, 1.5e9); // achieved 3e9 > 1.5e9
        assert!(m.exceeded);
        assert_eq!((m.value, m.peak), (1.0, 3e9));
        let m = mfu(1_000, 1e6, 12e9);
        assert!(!m.exceeded);
        assert!((m.value - 0.25).abs() < 1e-12);
    }
}
