//! Attention masks.

use burn::tensor::{Bool, Device, Tensor};

/// Causal mask for `q_len` new queries against `k_len` keys, where the queries are the last
/// `q_len` positions of the key sequence. `[q_len, k_len]`, **true where attention is not
/// allowed**: query i (absolute position `k_len - q_len + i`) sees keys `j ≤ k_len - q_len + i`.
pub fn causal_mask(q_len: usize, k_len: usize, device: &Device) -> Tensor<2, Bool> {
    assert!(q_len <= k_len, "causal_mask: {q_len} queries but only {k_len} keys");
    // `triu_mask`/`tril_mask` mark the positions *outside* the kept triangle; offset shifts the
    // diagonal right by the number of cached keys.
    Tensor::<2, Bool>::tril_mask([q_len, k_len], (k_len - q_len) as i64, device)
}
