//! Decode state: what a mixer keeps between `step` calls.
//!
//! Caches are preallocated for `capacity` tokens and filled in place; `len` tokens are live.

use std::ops::Range;

use burn::tensor::Tensor;

use crate::F32_BYTES;

/// Key/value cache of grouped-query attention.
/// k, v: `[batch, kv_heads, capacity, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub len: usize,
}

/// Latent cache of multi-head latent attention (MLA): only the compressed KV and the shared
/// rotary key. c_kv: `[batch, capacity, kv_latent]`, k_rope: `[batch, capacity, rope_dim]`.
#[derive(Debug, Clone)]
pub struct LatentCache {
    pub c_kv: Tensor<3>,
    pub k_rope: Tensor<3>,
    pub len: usize,
}

/// The decode state of one mixer.
#[derive(Debug, Clone)]
pub enum State {
    Kv(KvCache),
    Latent(LatentCache),
}

impl State {
    /// Tokens held so far.
    pub fn len(&self) -> usize {
        match self {
            State::Kv(c) => c.len,
            State::Latent(c) => c.len,
        }
    }

    /// True when no token has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens the state can hold.
    pub fn capacity(&self) -> usize {
        match self {
            State::Kv(c) => c.k.dims()[2],
            State::Latent(c) => c.c_kv.dims()[1],
        }
    }

    /// Bytes per sequence per token, measured from the real state tensors
    /// (elements of every state tensor / (batch · capacity) · bytes per element).
    pub fn bytes_per_token(&self) -> usize {
        let (tensors, batch, capacity): (Vec<usize>, usize, usize) = match self {
            State::Kv(c) => {
                let [b, _, cap, _] = c.k.dims();
                (vec![c.k.shape().num_elements(), c.v.shape().num_elements()], b, cap)
            }
            State::Latent(c) => {
                let [b, cap, _] = c.c_kv.dims();
                (vec![c.c_kv.shape().num_elements(), c.k_rope.shape().num_elements()], b, cap)
            }
        };
        tensors.iter().sum::<usize>() * F32_BYTES / (batch * capacity)
    }
}

/// Writes `values` into `cache[ranges]` without a second handle on the cache, so the backend can
/// update the buffer in place instead of copying the whole cache every step.
pub fn write_in_place<const D: usize>(cache: &mut Tensor<D>, ranges: [Range<usize>; D], values: Tensor<D>) {
    let placeholder = Tensor::empty([0; D], &cache.device());
    let owned = std::mem::replace(cache, placeholder);
    *cache = owned.slice_assign(ranges, values);
}
