//! Experiments: TOML specs (with `--set` overrides), validation before any compute, the
//! training loop, metrics and the on-disk run store.

pub mod accuracy;
pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod export_metrics;
pub mod extend;
pub mod inference;
pub mod interrupt;
pub mod linearize;
pub mod lock;
pub mod memory;
pub mod optim;
pub mod overrides;
pub mod peak;
pub mod scaling;
pub mod schedule;
pub mod spec;
pub mod stages;
pub mod store;
pub mod summary;
pub mod sweep;
pub mod trainer;
pub mod warn;

pub use device::parse_device;
pub use error::SpecError;
pub use spec::{ExperimentSpec, PreparedRun};
pub use summary::Summary;
pub use trainer::{train, RunOutcome, TrainOptions};
