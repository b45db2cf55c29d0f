//! Helpers shared by the trainer tests.
#![allow(dead_code)]

use attnlab_exp::{ExperimentSpec, PreparedRun, TrainOptions};
use burn::tensor::Device;

/// CPU training into `out`, no progress bars, optionally stopping after `stop_at` steps.
pub fn cpu_opts(out: &std::path::Path, stop_at: Option<usize>) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), device: Device::flex(), device_name: "cpu".into(), progress: false, stop_at, multi: None }
}

/// A 2-layer, 12-step run on the built-in corpus, checkpointed every 4 steps, named `name`,
/// with `sets` applied.
pub fn tiny_run(name: &str, sets: &[&str]) -> PreparedRun {
    let spec = format!(
        "name = \"{name}\"\n[data]\ncorpus = \"builtin\"\n[model]\nd_model = 32\nlayers = 2\nheads = 4\nmax_seq = 32\n\
         [train]\nsteps = 12\nbatch = 4\nblock = 16\nwarmup = 2\ncheckpoint_every = 4\nlog_every = 1\n[eval]\nevery = 6\nbatches = 2\n"
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    ExperimentSpec::from_toml_str(&spec, "tiny.toml", &sets).unwrap().prepare("tiny.toml").unwrap()
}
