//! Attention masks and the sparsity patterns that produce them.

use burn::tensor::{Bool, Device, Tensor, TensorData};

/// Causal mask for `q_len` new queries against `k_len` keys, where the queries are the last
/// `q_len` positions of the key sequence. `[q_len, k_len]`, **true where attention is not
/// allowed**: query i (absolute position `k_len - q_len + i`) sees keys `j ≤ k_len - q_len + i`.
pub fn causal_mask(q_len: usize, k_len: usize, device: &Device) -> Tensor<2, Bool> {
    assert!(q_len <= k_len, "causal_mask: {q_len} queries but only {k_len} keys");
    // `triu_mask`/`tril_mask` mark the positions *outside* the kept triangle; offset shifts the
    // diagonal right by the number of cached keys.
    Tensor::<2, Bool>::tril_mask([q_len, k_len], (k_len - q_len) as i64, device)
}

/// Which earlier positions a query may see. Every pattern is causal (key ≤ query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// All earlier positions.
    Causal,
    /// The last `window` positions (the query's own included), plus the first `global`
    /// positions of the sequence, which stay visible as attention sinks.
    Window { window: usize, global: usize },
    /// Sparse Transformer (Child et al. 2019), strided pattern factorised over heads: heads
    /// `0..heads/2` are **local** (the last `block` positions, `q − k < block`); heads
    /// `heads/2..` are **strided** (every `stride`-th position back, `(q − k) mod stride = 0`).
    /// Together, two layers connect every pair of positions when `stride ≤ block`.
    Strided { block: usize, stride: usize },
    /// Sparse Transformer (Child et al. 2019), fixed pattern, the same for every head: the
    /// query's own block of `block` positions (`⌊k / block⌋ = ⌊q / block⌋`) and, from every
    /// earlier block, its last `summary` positions (`k mod block ≥ block − summary`), the
    /// "summary" columns through which information crosses blocks.
    Fixed { block: usize, summary: usize },
}

impl Pattern {
    /// True when head `head` of `heads`, at position `q`, may attend to position `k`.
    pub fn allows(&self, head: usize, heads: usize, q: usize, k: usize) -> bool {
        if k > q {
            return false;
        }
        match *self {
            Pattern::Causal => true,
            Pattern::Window { window, global } => q - k < window || k < global,
            Pattern::Strided { block, stride } => {
                if head < heads / 2 {
                    q - k < block
                } else {
                    (q - k) % stride == 0
                }
            }
            Pattern::Fixed { block, summary } => k / block == q / block || k % block >= block - summary,
        }
    }

    /// True when every head sees the same positions.
    pub fn is_head_independent(&self) -> bool {
        !matches!(self, Pattern::Strided { .. })
    }

    /// Mask for queries at positions `q_pos` against keys at `k_pos` (`None` = an empty cache
    /// slot, always masked). `[heads, q_len, k_len]`, or `[1, q_len, k_len]` when the pattern is
    /// head-independent; **true where attention is not allowed**.
    pub fn mask(&self, heads: usize, q_pos: &[usize], k_pos: &[Option<usize>], device: &Device) -> Tensor<3, Bool> {
        let mask_heads = if self.is_head_independent() { 1 } else { heads };
        let mut data = Vec::with_capacity(mask_heads * q_pos.len() * k_pos.len());
        for head in 0..mask_heads {
            for &q in q_pos {
                data.extend(k_pos.iter().map(|k| !k.is_some_and(|k| self.allows(head, heads, q, k))));
            }
        }
        Tensor::from_data(TensorData::new(data, [mask_heads, q_pos.len(), k_pos.len()]), device)
    }
}
