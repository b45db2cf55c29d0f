//! The small GPT: token embedding (tied to the LM head), N pre-norm blocks
//! `x + Mixer(RMSNorm(x))`, `x + MLP(RMSNorm(x))`, a final RMSNorm, and generation through the
//! mixers' decode states.

pub mod autoencoder;
pub mod block;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod looped;
pub mod mlp;
pub mod sparse_decode;
pub mod star;

pub use config::{Exit, Head, MlpKind, ModelConfig, Positions};
pub use generate::{generate, generate_cropped, Sampling};
pub use gpt::{Gpt, ParamCounts, RNG_LOCK};
