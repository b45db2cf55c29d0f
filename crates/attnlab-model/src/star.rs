//! Star Attention over a whole model (Acharya et al. 2025; `../shared/MECHANISMS.md` §7): an
//! inference mode for a model trained with ordinary (global, causal) softmax attention.
//!
//! **Phase 1 (context encoding, [`encode`]).** The context of T_c tokens is cut into blocks of
//! `block` tokens (the last one shorter: attnlab does not pad, which equals the reference's
//! padding at the end of the last block once that padding's KV is dropped). Blocks go to the
//! hosts in contiguous groups (`tensor_split`: the first `n_blocks mod n` hosts take one more);
//! the query host is the last. Each block after the first runs through the **whole model** as
//! `[anchor ; block]`: the anchor is the first `anchor` context tokens at their own positions
//! `0..a`, the block keeps its positions (RoPE positions jump); the anchor's KV is discarded.
//! Block 0 runs alone. `anchor = 0` means no anchor (block-local attention; the reference
//! instead reads `anchor ≤ 0` as `anchor = block`). Hosts are threads.
//! Single-process equivalent: one forward with `allowed(i, j) = j ≤ i ∧ (blk(j) = blk(i) ∨ j < a)`.
//!
//! **Phase 2 (query and generation, [`decode`]).** New tokens (positions from T_c) attend to
//! every cached key through [`attnlab_attn::star`]: each host answers (o_h, ℓ_h) for its shard,
//! merged exactly; the non-attention parts (norms, MLPs, LM head) run once on the merged
//! output (the reference replicates them on every rank). Only the query host stores new K/V.
//!
//! Cost: KV bytes equal global attention's, sharded; phase 1 pushes T_c + (n_blocks − 1)·a
//! tokens through every layer, attention O(T_c·(a + b)) instead of O(T_c²).
//!
//! Kinds: grouped-query attention with the causal pattern (mha, mqa, gqa; gated, q/k-norm and
//! partial-RoPE variants) in every layer, one loop, the LM head.

use attnlab_attn::star::{attend_hosts, Shard};
use attnlab_attn::GroupedQuery;
use attnlab_kernels::rms_norm;
use burn::tensor::{Int, Tensor};

use crate::gpt::Gpt;

/// `eval.inference = { kind = "star", block, anchor, hosts }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StarSettings {
    /// Context tokens per block (≥ 1).
    pub block: usize,
    /// Anchor tokens (≤ block; 0 = no anchor).
    pub anchor: usize,
    /// Hosts (threads), ≥ 1; the last one is the query host.
    pub hosts: usize,
}

/// The KV cache after phase 1: `layers[l][h]` is host h's shard of layer l; `len` tokens in all
/// (context, then query and generated tokens, which the query host holds).
#[derive(Debug, Clone)]
pub struct StarCache {
    pub layers: Vec<Vec<Shard>>,
    pub len: usize,
}

impl StarCache {
    /// Bytes of every shard's keys and values (one sequence per batch row, all rows).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(Shard::bytes).sum()
    }
}

/// Why the settings cannot work, naming the field.
pub fn check_settings(settings: &StarSettings) -> Result<(), String> {
    if settings.block == 0 {
        return Err("eval.inference.block = 0: must be ≥ 1".into());
    }
    if settings.anchor > settings.block {
        return Err(format!("eval.inference.anchor = {}: must be ≤ block = {} (the anchor is cut from block 0)", settings.anchor, settings.block));
    }
    if settings.hosts == 0 {
        return Err("eval.inference.hosts = 0: must be ≥ 1".into());
    }
    Ok(())
}

/// Why a model cannot run Star Attention with these settings, naming what is wrong.
pub fn check(model: &Gpt, settings: &StarSettings) -> Result<(), String> {
    check_settings(settings)?;
    model.causal_grouped_layers("star").map(|_| ())
}

fn layers(model: &Gpt) -> Vec<&GroupedQuery> {
    model.causal_grouped_layers("star").expect("checked by star::check")
}

/// Block boundaries `[start, end)` of a context of `t` tokens.
pub fn blocks(t: usize, block: usize) -> Vec<(usize, usize)> {
    (0..t.div_ceil(block)).map(|i| (i * block, ((i + 1) * block).min(t))).collect()
}

/// Blocks per host, contiguous groups (`tensor_split`): `n_blocks` over `hosts`.
pub fn host_groups(n_blocks: usize, hosts: usize) -> Vec<std::ops::Range<usize>> {
    let (base, extra) = (n_blocks / hosts, n_blocks % hosts);
    let mut start = 0;
    (0..hosts)
        .map(|h| {
            let n = base + usize::from(h < extra);
            start += n;
            start - n..start
        })
        .collect()
}

/// One block's run through the whole model: `[anchor ; block]` (block 0: the block alone).
/// Returns each layer's keys and values of the block's own tokens `[b, g, len, d_h]`.
fn encode_block(model: &Gpt, context: &Tensor<2, Int>, (start, end): (usize, usize), anchor: usize) -> Vec<(Tensor<4>, Tensor<4>)> {
    let anchor = if start == 0 { 0 } else { anchor };
    let len = end - start;
    let mut parts = Vec::new();
    if anchor > 0 {
        parts.push(context.clone().narrow(1, 0, anchor));
    }
    parts.push(context.clone().narrow(1, start, len));
    let segments = [(anchor, 0), (len, start)];
    let mut h = model.embed.forward(Tensor::cat(parts, 1));
    let mut kv = Vec::with_capacity(model.blocks.len());
    for (b, attn) in model.blocks.iter().zip(layers(model)) {
        let (y, k, v) = attn.forward_segments(rms_norm(&b.attn_norm, h.clone()), &segments);
        kv.push((k.narrow(2, anchor, len), v.narrow(2, anchor, len)));
        h = h + y;
        h = h.clone() + b.mlp.forward(rms_norm(&b.mlp_norm, h));
    }
    kv
}

/// Phase 1: encodes `context` `[b, T_c]` block by block on `settings.hosts` threads and returns
/// the sharded cache. Call [`check`] first.
pub fn encode(model: &Gpt, context: Tensor<2, Int>, settings: &StarSettings) -> StarCache {
    let t = context.dims()[1];
    assert!(t <= model.max_seq, "context of {t} tokens exceeds model.max_seq = {}", model.max_seq);
    let blocks = blocks(t, settings.block);
    let groups = host_groups(blocks.len(), settings.hosts);
    let per_host: Vec<Vec<Vec<(Tensor<4>, Tensor<4>)>>> = std::thread::scope(|scope| {
        let hosts: Vec<_> = groups
            .iter()
            .map(|group| {
                let (context, mine) = (&context, &blocks[group.clone()]);
                scope.spawn(move || mine.iter().map(|&blk| encode_block(model, context, blk, settings.anchor)).collect())
            })
            .collect();
        hosts.into_iter().map(|h| h.join().expect("a Star Attention host panicked")).collect()
    });
    let layers = (0..model.blocks.len())
        .map(|l| {
            per_host
                .iter()
                .map(|host_blocks| {
                    let mut shard = Shard::default();
                    for block_kv in host_blocks {
                        let (k, v) = block_kv[l].clone();
                        shard.append(k, v);
                    }
                    shard
                })
                .collect()
        })
        .collect();
    StarCache { layers, len: t }
}

/// Phase 2: new tokens `[b, t_q]` (query or generated) at positions `cache.len..` → logits
/// `[b, t_q, vocab]`; their K/V go to the query host.
pub fn decode(model: &Gpt, cache: &mut StarCache, tokens: Tensor<2, Int>) -> Tensor<3> {
    let tq = tokens.dims()[1];
    assert!(cache.len + tq <= model.max_seq, "{} tokens exceed model.max_seq = {}", cache.len + tq, model.max_seq);
    let mut h = model.embed.forward(tokens);
    for ((b, attn), shards) in model.blocks.iter().zip(layers(model)).zip(cache.layers.iter_mut()) {
        let y = attend_hosts(attn, rms_norm(&b.attn_norm, h.clone()), shards, cache.len);
        h = h + y;
        h = h.clone() + b.mlp.forward(rms_norm(&b.mlp_norm, h));
    }
    cache.len += tq;
    model.logits(h)
}
