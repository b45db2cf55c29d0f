//! Adamas' key codes (Yan et al. 2025, "Adamas: Hadamard Sparse Attention for Efficient
//! Long-Context Inference"; `../shared/MECHANISMS.md` §8; FibonaccciYan/Adamas): a decode-time
//! estimate of which keys a query attends to, from 2 bits per dimension.
//!
//! After RoPE, queries and keys are rotated by the orthonormal Sylvester–Hadamard transform
//! `x̃ = H x / √d_h` (d_h a power of two; dot products preserved), and each coordinate is
//! bucketed by the thresholds {−τ, 0, τ} into a code 0..3, a boundary value going to the lower
//! bucket (`torch.bucketize(right = False)`: −τ → 0, 0 → 1, τ → 2). The estimate of key j for a
//! query is the L1 distance `‖code(q̃) − code(k̃_j)‖₁`; the `budget` keys at the smallest
//! distance are attended exactly ([`crate::key_selection`]). Codes are stored packed, four to a
//! byte (d_h/4 bytes per key and KV head), and compared with a byte-pair table of true L1
//! distances (not the released CUDA kernel's XOR/popcount estimate, which puts codes 1 and 2 at
//! distance 3). τ is calibrated per layer (one standard deviation of the transformed prefill
//! keys; attnlab's activations are not a 7B model's) and recorded; queries use the same τ.

use std::sync::OnceLock;

/// The orthonormal fast Walsh–Hadamard transform of `x` in place (length a power of two):
/// `x ← H x / √n` with H the Sylvester matrix (`H_{2n} = [[H, H], [H, −H]]`).
pub fn hadamard(x: &mut [f32]) {
    let n = x.len();
    assert!(n.is_power_of_two(), "hadamard: length {n} is not a power of two");
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (x[i], x[i + h]);
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= norm);
}

/// The 2-bit code of a coordinate: 0 for `x ≤ −τ`, 1 for `−τ < x ≤ 0`, 2 for `0 < x ≤ τ`, 3 above.
pub fn code(x: f32, tau: f32) -> u8 {
    u8::from(x > -tau) + u8::from(x > 0.0) + u8::from(x > tau)
}

/// Codes of a transformed vector, packed four to a byte (code i in bits 2·(i mod 4)..).
pub fn pack(codes: &[u8]) -> Vec<u8> {
    codes.chunks(4).map(|c| c.iter().enumerate().fold(0u8, |byte, (i, &v)| byte | (v << (2 * i)))).collect()
}

/// The packed codes of vector `x` (transformed in place by [`hadamard`] first).
pub fn encode(x: &mut [f32], tau: f32) -> Vec<u8> {
    hadamard(x);
    pack(&x.iter().map(|&v| code(v, tau)).collect::<Vec<_>>())
}

/// L1 distance of every pair of packed bytes (four codes each): `TABLE[a·256 + b]`.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..65_536u32)
            .map(|ab| {
                let (a, b) = ((ab >> 8) as u8, ab as u8);
                (0..4).map(|i| ((a >> (2 * i)) & 3).abs_diff((b >> (2 * i)) & 3)).sum()
            })
            .collect()
    })
}

/// The L1 distance of two packed code vectors.
pub fn l1_packed(a: &[u8], b: &[u8]) -> u32 {
    let t = table();
    a.iter().zip(b).map(|(&x, &y)| u32::from(t[(usize::from(x) << 8) | usize::from(y)])).sum()
}
