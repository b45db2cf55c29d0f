//! Micro-benchmarks of every attention kind on CPU (burn-flex): one mixer at the baby width
//! (d_model 128, 4 heads), batch 4, T ∈ {64, 256}; `forward` is inference, `train` is forward
//! plus the backward of mean(y²). Whole-model and sweep-level numbers come from
//! `attnlab bench train|decode|scaling`.
//!
//!     cargo bench -p attnlab-attn [-- FILTER]

use attnlab_attn::burn::tensor::{Device, Distribution, Tensor};
use attnlab_attn::{Attention, AttentionConfig};

fn main() {
    divan::main();
}

const KINDS: &[&str] = &["mha", "gqa-2", "mqa", "mla-32", "swa-16", "strided-16/8", "tiled-64", "gated", "diff", "linear", "gdn", "kda"];

fn config(kind: &str) -> AttentionConfig {
    match kind {
        "mha" => AttentionConfig::Mha {},
        "gqa-2" => AttentionConfig::Gqa { kv_heads: 2 },
        "mqa" => AttentionConfig::Mqa {},
        "mla-32" => AttentionConfig::Mla { kv_latent: Some(32), q_latent: None, rope_dim: Some(8), rope: true },
        "swa-16" => AttentionConfig::SlidingWindow { window: 16, global_tokens: 0, kv_heads: None },
        "strided-16/8" => AttentionConfig::StridedSparse { block: 16, stride: 8, kv_heads: None },
        "tiled-64" => AttentionConfig::Tiled { block_q: 64, block_k: 64, kv_heads: None },
        "gated" => AttentionConfig::Gated { kv_heads: None, gate_bias: None, partial_rope: None, qk_norm: false },
        "diff" => AttentionConfig::Differential {},
        "linear" | "gdn" | "kda" => {
            let kind = match kind {
                "gdn" => "gated_deltanet",
                other => other,
            };
            toml_config(&format!("kind = \"{kind}\""))
        }
        other => panic!("unknown kind {other}"),
    }
}

/// A config with every field at its default, as TOML would give it.
fn toml_config(text: &str) -> AttentionConfig {
    toml::from_str(text).expect("a valid attention config")
}

fn setup(kind: &str, t: usize, device: &Device) -> (Attention, Tensor<3>) {
    let m = config(kind).init(128, 4, 256, 10_000.0, device);
    let x = Tensor::random([4, t, 128], Distribution::Normal(0.0, 1.0), device);
    (m, x)
}

#[divan::bench(args = KINDS, consts = [64, 256])]
fn forward<const T: usize>(bencher: divan::Bencher, kind: &str) {
    let device = Device::flex();
    let (m, x) = setup(kind, T, &device);
    bencher.bench_local(|| m.forward(x.clone()).into_data());
}

#[divan::bench(args = KINDS, consts = [64, 256])]
fn train<const T: usize>(bencher: divan::Bencher, kind: &str) {
    let device = Device::flex().autodiff();
    let (m, x) = setup(kind, T, &device);
    bencher.bench_local(|| {
        let x = x.clone().require_grad();
        let grads = m.forward(x.clone()).powi_scalar(2).mean().backward();
        x.grad(&grads).map(|g| g.into_data())
    });
}

/// Log-linear Gated DeltaNet's two training forms, forward + backward of mean(y²): the dense
/// O(T²) form (GDN's effective attention weighed per pair) and the chunked O(T log T) one (the
/// forward), at T = 256 and 1024 (levels for 1024 positions).
#[divan::bench(args = ["dense", "chunked"], consts = [256, 1024])]
fn log_linear_gdn_train<const T: usize>(bencher: divan::Bencher, form: &str) {
    let device = Device::flex().autodiff();
    let Attention::LogLinearGdn(m) = toml_config("kind = \"log_linear\"\nbase = \"gated_deltanet\"").init(128, 4, 1024, 10_000.0, &device) else { unreachable!() };
    let x = Tensor::random([4, T, 128], Distribution::Normal(0.0, 1.0), &device);
    bencher.bench_local(|| {
        let x = x.clone().require_grad();
        let lambda = m.lambda(x.clone());
        let y = if form == "dense" { m.forward_dense(x.clone(), lambda) } else { m.forward_chunked(x.clone(), lambda, m.base.chunk) };
        let grads = y.powi_scalar(2).mean().backward();
        x.grad(&grads).map(|g| g.into_data())
    });
}
