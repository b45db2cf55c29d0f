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

/// `out[i] = f(a[i])`, in parallel chunks, with AVX2+FMA code where the CPU has them.
pub fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    map_n(a.len(), |start, out| {
        let a = &a[start..start + out.len()];
        for (o, &x) in out.iter_mut().zip(a) {
            *o = f(x);
        }
    })
}

/// `out[i] = f(a[i], b[i])`, as [`map1`].
pub fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: operands differ in length");
    map_n(a.len(), |start, out| {
        let (a, b) = (&a[start..start + out.len()], &b[start..start + out.len()]);
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    })
}

/// Runs `fill(start, chunk)` over chunks of a new `len`-element vector.
fn map_n(len: usize, fill: impl Fn(usize, &mut [f32]) + Sync + Send + Copy) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| fill_fast(fill, i * CHUNK, chunk));
    out
}

/// Calls `fill` compiled for AVX2+FMA when the CPU has them (checked once, cached by std).
#[inline(always)]
fn fill_fast(fill: impl Fn(usize, &mut [f32]) + Copy, start: usize, chunk: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features this function is compiled for.
            return unsafe { fill_avx2(fill, start, chunk) };
        }
    }
    fill(start, chunk)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_avx2(fill: impl Fn(usize, &mut [f32]), start: usize, chunk: &mut [f32]) {
    fill(start, chunk)
}
