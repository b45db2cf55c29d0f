//! Branch-free `exp` and `σ` that the compiler vectorises (libm's `expf` is a scalar call per
//! element), plus the chunked parallel map every fused kernel uses.
//!
//! `exp(x) = 2^k · e^r` with `k = round(x / ln 2)`, `r = x − k ln 2 ∈ [−ln2/2, ln2/2]`, `e^r` by a
//! degree-6 Taylor polynomial (relative error < 2·10⁻⁷ on that interval) and `2^k` written into
//! the exponent bits. Inputs are clamped to [−87, 88] (f32's normal range).

use rayon::prelude::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding it rounds an f32 in (−2²², 2²²) to the nearest integer, which lands in the
/// low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `eˣ` for f32, branch-free.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND_MAGIC;
    let k = shifted - ROUND_MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    p * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// `σ(x) = 1 / (1 + e^{−x})`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Elements per parallel task: large enough that scheduling costs little, small enough that
/// both cores get work on the MLP's activations (`batch·seq·hidden` ≈ 4·10⁵).
const CHUNK: usize = 1 << 14;

/// Whether this CPU runs the AVX2+FMA versions (checked once by std, then cached).
#[inline(always)]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `$body` compiled for AVX2+FMA when the CPU has them, else for the baseline target.
/// `$body` is inlined into each version (closures inherit the enclosing target features).
macro_rules! with_avx2 {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::vector_math::has_avx2() {
                // SAFETY: the CPU supports the features `fast` is compiled for.
                unsafe { fast(#[inline(always)] || $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use with_avx2;

/// `out[i] = f(a[i])`, in parallel chunks, vectorised.
pub fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).for_each(|(out, a)| {
        with_avx2!(out.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x)))
    });
    out
}

/// `out[i] = f(a[i], b[i])`, as [`map1`].
pub fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: operands differ in length");
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(out, (a, b))| {
        with_avx2!(out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = f(x, y)))
    });
    out
}

/// `max(x)·scale` over a row, in 8 independent lanes so that it vectorises.
#[inline(always)]
pub fn scaled_max(x: &[f32], scale: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l] * scale);
        }
    }
    tail.iter().fold(lanes.iter().cloned().fold(f32::NEG_INFINITY, f32::max), |m, &v| m.max(v * scale))
}

/// `x ← exp(x·scale − shift)` in place; returns the sum of the new values (8 lanes).
#[inline(always)]
pub fn exp_shifted_sum(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    x.iter_mut().for_each(|v| *v = exp(*v * scale - shift));
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
