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

/// Ring-buffer key/value cache of sliding-window attention: the first `global` positions, then
/// the last `window` positions in slots `global + (p − global) mod window`.
/// k, v: `[batch, kv_heads, slots, head_dim]` with `slots = min(capacity, global + window)`;
/// `positions[slot]` is the position held by a slot (`None` while empty).
#[derive(Debug, Clone)]
pub struct WindowCache {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub positions: Vec<Option<usize>>,
    pub window: usize,
    pub global: usize,
    pub capacity: usize,
    pub len: usize,
}

impl WindowCache {
    /// The slot of position `p`.
    pub fn slot(&self, p: usize) -> usize {
        if p < self.global {
            p
        } else {
            self.global + (p - self.global) % self.window
        }
    }
}

/// Fixed-size state of a recurrent mixer (linear attention, Gated DeltaNet, KDA): the matrix
/// memory s `[batch, heads, d_k, d_v]` and, with short convolutions, their tail `[batch, K − 1,
/// channels]` (the last pre-conv inputs). Neither grows with the context.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    pub s: Tensor<4>,
    pub conv: Option<Tensor<3>>,
    /// Tokens fed so far.
    pub len: usize,
    /// Tokens the caller asked room for (a recurrent state has no limit; kept for `capacity`).
    pub capacity: usize,
}

/// LoLCATs' decode state ([`crate::lolcats`]): the window's last ≤ 2W keys and values (ring,
/// slot p mod 2W) k, v `[batch, kv_heads, slots, d_h]`, `positions[slot]` (`None` = empty or
/// folded), and the linear state `s = Σ φ(k)vᵀ` `[batch, heads, d_φ, d_h]`, `z = Σ φ(k)`
/// `[batch, heads, d_φ, 1]`.
#[derive(Debug, Clone)]
pub struct LolcatsState {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub positions: Vec<Option<usize>>,
    pub s: Tensor<4>,
    pub z: Tensor<4>,
    pub len: usize,
    pub capacity: usize,
}

/// DSA's decode state: MLA's latent cache (or, on grouped-query attention, its KV cache) and
/// the indexer key of every position, keys `[batch, capacity, d_I]`.
#[derive(Debug, Clone)]
pub struct DsaState {
    pub latent: Option<LatentCache>,
    pub kv: Option<KvCache>,
    pub keys: Tensor<3>,
}

impl DsaState {
    /// Tokens held so far.
    pub fn len(&self) -> usize {
        self.latent.as_ref().map_or_else(|| self.kv.as_ref().map_or(0, |c| c.len), |c| c.len)
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room in tokens.
    pub fn capacity(&self) -> usize {
        self.keys.dims()[1]
    }

    /// Elements of every state tensor.
    fn elements(&self) -> usize {
        let latent = self.latent.as_ref().map_or(0, |c| c.c_kv.shape().num_elements() + c.k_rope.shape().num_elements());
        let kv = self.kv.as_ref().map_or(0, |c| c.k.shape().num_elements() + c.v.shape().num_elements());
        latent + kv + self.keys.shape().num_elements()
    }
}

/// Multi-Token Attention's decode state ([`crate::mta`]): the KV cache and the last
/// `min(keep, capacity)` post-RoPE queries `[batch, heads, kept, d_h]`, right-aligned (the
/// last row is the newest position; rows before position 0 are zeros). `None` without a
/// convolution on the query axis.
#[derive(Debug, Clone)]
pub struct MtaState {
    pub kv: KvCache,
    pub queries: Option<Tensor<4>>,
}

/// Mixture of Sparse Attention's decode state ([`crate::mosa`], prefix routing): the dense
/// heads' KV cache, K/V of the chosen tokens per MoSA head `[batch, E, ⌈capacity/ρ⌉, h′]`
/// (`chosen[n·E + e]` slots filled), and every token's router scores, token-major
/// (`scores[(p·batch + n)·E + e]`), room for `capacity` tokens.
#[derive(Debug, Clone)]
pub struct MosaState {
    pub dense: Option<KvCache>,
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub chosen: Vec<usize>,
    pub scores: Vec<f32>,
    pub capacity: usize,
    pub len: usize,
}

/// The decode state of one mixer.
#[derive(Debug, Clone)]
pub enum State {
    Kv(KvCache),
    Window(WindowCache),
    Latent(LatentCache),
    Recurrent(RecurrentState),
    Lolcats(LolcatsState),
    Dsa(DsaState),
    Mta(MtaState),
    Mosa(MosaState),
}

impl State {
    /// Tokens held so far.
    pub fn len(&self) -> usize {
        match self {
            State::Kv(c) => c.len,
            State::Window(c) => c.len,
            State::Latent(c) => c.len,
            State::Recurrent(c) => c.len,
            State::Lolcats(c) => c.len,
            State::Dsa(c) => c.len(),
            State::Mta(c) => c.kv.len,
            State::Mosa(c) => c.len,
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
            State::Window(c) => c.capacity,
            State::Latent(c) => c.c_kv.dims()[1],
            State::Recurrent(c) => c.capacity,
            State::Lolcats(c) => c.capacity,
            State::Dsa(c) => c.capacity(),
            State::Mta(c) => c.kv.k.dims()[2],
            State::Mosa(c) => c.capacity,
        }
    }

    /// Bytes the state holds for one sequence, measured from its real tensors
    /// (elements of every state tensor / batch · bytes per element).
    pub fn bytes(&self) -> usize {
        let (elements, batch) = match self {
            State::Kv(c) => (c.k.shape().num_elements() + c.v.shape().num_elements(), c.k.dims()[0]),
            State::Window(c) => (c.k.shape().num_elements() + c.v.shape().num_elements(), c.k.dims()[0]),
            State::Latent(c) => (c.c_kv.shape().num_elements() + c.k_rope.shape().num_elements(), c.c_kv.dims()[0]),
            State::Recurrent(c) => (c.s.shape().num_elements() + c.conv.as_ref().map_or(0, |t| t.shape().num_elements()), c.s.dims()[0]),
            State::Lolcats(c) => ([&c.k, &c.v, &c.s, &c.z].iter().map(|t| t.shape().num_elements()).sum(), c.k.dims()[0]),
            State::Dsa(c) => (c.elements(), c.keys.dims()[0]),
            State::Mta(c) => (c.kv.k.shape().num_elements() + c.kv.v.shape().num_elements() + c.queries.as_ref().map_or(0, |q| q.shape().num_elements()), c.kv.k.dims()[0]),
            // The scores' room for `capacity` tokens counts (reserved up front: capacity · batch · E).
            State::Mosa(c) => {
                let dense = c.dense.as_ref().map_or(0, |d| d.k.shape().num_elements() + d.v.shape().num_elements());
                (dense + c.k.shape().num_elements() + c.v.shape().num_elements() + c.capacity * c.chosen.len(), c.k.dims()[0])
            }
        };
        elements * F32_BYTES / batch
    }
}

/// Writes `values` into `cache[ranges]` without a second handle on the cache, so the backend can
/// update the buffer in place instead of copying the whole cache every step.
pub fn write_in_place<const D: usize>(cache: &mut Tensor<D>, ranges: [Range<usize>; D], values: Tensor<D>) {
    let placeholder = Tensor::empty([0; D], &cache.device());
    let owned = std::mem::replace(cache, placeholder);
    *cache = owned.slice_assign(ranges, values);
}
