//! `summary.json` and the lines of `metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: a training-loss record or an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricLine {
    Train {
        step: usize,
        loss: f64,
        lr: f64,
        tokens_per_sec: f64,
        /// The `[[train.stages]]` name of the step (runs with stages).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// The step's auxiliary losses by name (unweighted).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        aux: std::collections::BTreeMap<String, f64>,
    },
    Eval {
        step: usize,
        val_loss: f64,
        train_loss: f64,
        /// Exact-match accuracy on the validation set's answers (synthetic tasks only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_accuracy: Option<f64>,
        /// The same per reporting bucket (the needle's depth).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_accuracy_by_bucket: Option<Vec<f64>>,
    },
}

impl MetricLine {
    pub fn step(&self) -> usize {
        match self {
            MetricLine::Train { step, .. } | MetricLine::Eval { step, .. } => *step,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub experiment: String,
    /// `finished`, or `diverged` (a non-finite training loss stopped the run).
    pub status: String,
    /// The step whose loss was NaN or infinite, for `diverged` runs.
    #[serde(default)]
    pub diverged_at_step: Option<usize>,
    pub attention: String,
    pub steps: usize,
    pub seed: u64,
    #[serde(with = "non_finite_as_null")]
    pub best_val_loss: f64,
    #[serde(with = "non_finite_as_null")]
    pub final_val_loss: f64,
    /// Bits per token of the best validation loss (loss / ln 2); bits per char for `char`.
    #[serde(with = "non_finite_as_null")]
    pub best_val_bits_per_token: f64,
    /// Synthetic tasks: best and final exact-match accuracy on the *validation* set's answers
    /// (the set that selects), and the final one per bucket (needle depth, shallow to deep).
    #[serde(default)]
    pub best_val_accuracy: Option<f64>,
    #[serde(default)]
    pub final_val_accuracy: Option<f64>,
    #[serde(default)]
    pub final_val_accuracy_by_bucket: Option<Vec<f64>>,
    /// Synthetic tasks: test-set accuracy of the final model (the reported score), per bucket,
    /// and test accuracy of the model at the evaluation chosen on validation (highest
    /// validation accuracy, earliest on ties), with that evaluation's step.
    #[serde(default)]
    pub final_test_accuracy: Option<f64>,
    #[serde(default)]
    pub final_test_accuracy_by_bucket: Option<Vec<f64>>,
    #[serde(default)]
    pub test_accuracy_at_best_val: Option<f64>,
    /// The same two test scores as macro accuracy (mean per-class recall, MAD's metric).
    #[serde(default)]
    pub test_macro_accuracy_at_best_val: Option<f64>,
    #[serde(default)]
    pub final_test_macro_accuracy: Option<f64>,
    /// `eval.published_protocol`: MAD's published figure — macro test accuracy at the
    /// evaluation with the lowest test loss, up to the first evaluation with test accuracy
    /// ≥ 0.999 (selection on the test set, as the paper's code does), and that step.
    #[serde(default)]
    pub published_test_macro_accuracy: Option<f64>,
    #[serde(default)]
    pub published_step: Option<usize>,
    #[serde(default)]
    pub best_val_step: Option<usize>,
    #[serde(with = "non_finite_as_null")]
    pub final_train_loss: f64,
    #[serde(with = "non_finite_as_null")]
    pub train_tokens_per_sec: f64,
    #[serde(with = "non_finite_as_null")]
    pub ms_per_step_median: f64,
    #[serde(with = "non_finite_as_null")]
    pub ms_per_step_p90: f64,
    pub params: usize,
    pub mixer_params: usize,
    /// Decode-state bytes per token of context, all layers, f32, averaged over a full
    /// `model.max_seq` context (a sliding window's state stops growing at the window), from the
    /// mixers' formulas.
    pub kv_bytes_per_token: usize,
    /// The same, measured from real decode-state tensors.
    pub kv_bytes_per_token_measured: usize,
    /// Forward FLOPs per token at the training block length.
    pub flops_per_token: u64,
    /// The fraction of causal (query, key) pairs scored at the training block length, averaged
    /// over heads and layers (`Gpt::keys_attended`; `None` for recurrent-state models).
    #[serde(default)]
    pub keys_attended: Option<f64>,
    /// Model FLOPs utilisation: 3 · flops_per_token · train_tokens_per_sec / peak_flops (never
    /// above 1, see `peak_exceeded`).
    #[serde(default)]
    pub mfu: Option<f64>,
    /// The device's measured matmul peak (FLOP/s), see `attnlab bench peak`; where the run's
    /// achieved FLOP/s exceeded it, those instead.
    #[serde(default)]
    pub peak_flops: Option<f64>,
    /// The run's achieved FLOP/s exceeded the measured peak (so `mfu` is 1).
    #[serde(default)]
    pub peak_exceeded: bool,
    pub peak_rss_bytes: Option<u64>,
    /// GPU backends: the device allocator's reserved bytes, highest value seen at a step's end
    /// (`memory_pool_usage`); `None` on CPU.
    #[serde(default)]
    pub device_memory_peak_bytes: Option<u64>,
    pub wall_seconds: f64,
    pub device: String,
    /// GPU runs: the part and what its kernels were compiled for (`wgpu<spirv>`/`wgpu<wgsl>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_detail: Option<String>,
    pub data_source: String,
    pub vocab: usize,
    /// The run this one extends (`attnlab train --extend`), and the step it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_from_step: Option<usize>,
}

/// Serde for an `f64` that may be NaN or infinite: written as `null` (JSON has no NaN) and read
/// back from `null` as NaN.
pub mod non_finite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
