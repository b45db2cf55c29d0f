//! Scaling benchmark: time and peak memory of one attention layer vs sequence length.
//!
//! A point is one mixer (the experiment's width and heads) on random input `[batch, seq,
//! d_model]`: `infer` times the forward pass, `train` the forward plus the backward of
//! `mean(y²)` (optionally with Burn's balanced gradient checkpointing). One untimed warm-up pass,
//! then the median of `reps` synced passes. Peak memory on CPU is the growth of the process's
//! peak resident set (VmHWM, reset through `/proc/self/clear_refs`) over the resident set before
//! the timed passes; on a GPU (a backend whose allocator reports its pools: wgpu, CUDA) it is the
//! growth of the allocator's reserved bytes over the first pass (its pools grow to the pass's
//! peak and are kept). Each point should run in a fresh process (`attnlab bench scaling` does).

use std::time::Instant;

use attnlab_attn::AttentionConfig;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::memory::{current_rss_bytes, device_reserved_bytes, peak_rss_bytes, reset_peak_rss};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingPoint {
    pub attention: String,
    pub seq: usize,
    pub batch: usize,
    /// `infer` (forward), `train` (forward + backward) or `train-ckpt` (with gradient
    /// checkpointing).
    pub mode: String,
    pub checkpointing: bool,
    pub ms_median: f64,
    /// Peak memory the first pass added, in bytes: resident set on CPU, the allocator's
    /// reserved bytes on a GPU.
    pub peak_bytes: Option<u64>,
}

/// What one point measures.
#[derive(Debug, Clone)]
pub struct ScalingCase {
    pub attention: AttentionConfig,
    pub d_model: usize,
    pub heads: usize,
    pub seq: usize,
    pub batch: usize,
    pub train: bool,
    pub checkpointing: bool,
    pub reps: usize,
}

/// Runs one point on `device` (the plain device; autodiff is added for `train`).
pub fn scaling_point(case: &ScalingCase, device: &Device) -> ScalingPoint {
    let device = match (case.train, case.checkpointing) {
        (false, _) => device.clone(),
        (true, false) => device.clone().autodiff(),
        (true, true) => device.clone().autodiff().gradient_checkpointing(),
    };
    let m = case.attention.init(case.d_model, case.heads, case.seq, 10_000.0, &device);
    let x = Tensor::<3>::random([case.batch, case.seq, case.d_model], Distribution::Normal(0.0, 1.0), &device);
    let pass = || {
        if case.train {
            let x = x.clone().require_grad();
            let grads = m.forward(x.clone()).powi_scalar(2).mean().backward();
            let _ = x.grad(&grads).map(|g| g.sum().into_data());
        } else {
            let _ = m.forward(x.clone()).sum().into_data();
        }
    };
    // Memory from the first pass, before the allocator holds on to any of its buffers.
    device.sync().ok();
    reset_peak_rss();
    let base = current_rss_bytes();
    let gpu_base = device_reserved_bytes(&device);
    pass();
    device.sync().ok();
    let peak = match (gpu_base, device_reserved_bytes(&device), peak_rss_bytes(), base) {
        (Some(before), Some(after), _, _) => Some(after.saturating_sub(before)),
        (_, _, Some(peak), Some(base)) => Some(peak.saturating_sub(base)),
        _ => None,
    };
    let mut times = Vec::with_capacity(case.reps);
    for _ in 0..case.reps.max(1) {
        let t0 = Instant::now();
        pass();
        device.sync().ok();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    ScalingPoint {
        attention: case.attention.label(),
        seq: case.seq,
        batch: case.batch,
        mode: match (case.train, case.checkpointing) {
            (false, _) => "infer",
            (true, false) => "train",
            (true, true) => "train-ckpt",
        }
        .into(),
        checkpointing: case.checkpointing,
        ms_median: times[times.len() / 2],
        peak_bytes: peak,
    }
}
