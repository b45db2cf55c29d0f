//! Helpers shared by the trainer tests.
#![allow(dead_code)]

use attnlab_exp::TrainOptions;
use burn::tensor::Device;

/// CPU training into `out`, no progress bars, optionally stopping after `stop_at` steps.
pub fn cpu_opts(out: &std::path::Path, stop_at: Option<usize>) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), device: Device::flex(), device_name: "cpu".into(), progress: false, stop_at, multi: None }
}
