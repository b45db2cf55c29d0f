//! The GPT: tokens `[batch, seq]` → logits `[batch, seq, vocab]`.

use attnlab_attn::linear::INIT_STD;
use attnlab_attn::{Attention, AuxLoss, AuxRequest, State};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::autoencoder::Decoder;
use crate::block::Block;
use crate::config::{Exit, Head, ModelConfig, Positions};
use crate::mlp::Mlp;

/// Burn's seeded generator is global to the process: whoever seeds it and draws (a model's
/// initial weights, a training step's dropout masks) holds this lock meanwhile.
pub static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Module, Debug)]
pub struct Gpt {
    /// `[vocab, d_model]`, also the LM head (tied).
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    pub max_seq: usize,
    /// `model.dropout` (training only).
    pub dropout: f64,
    /// `model.head = "autoencoder"`: the compression decoder that replaces the LM head.
    pub decoder: Option<Decoder>,
    /// `model.loops` = R: the layer stack applied R times with shared weights (Ouro), the
    /// final norm between loops.
    pub loops: usize,
    /// `model.exit = "learned"`: Ouro's exit gate `d → 1` (with bias) on each loop's normed state.
    pub exit_gate: Option<Linear>,
    /// `model.positions = "learned"`: absolute position embeddings `[max_seq, d_model]`, added
    /// to the token embeddings ([`Gpt::embed_tokens`]).
    pub positions: Option<Embedding>,
}

/// Parameter counts (the tied embedding counted once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamCounts {
    pub total: usize,
    /// All attention/mixer parameters of all layers.
    pub mixer: usize,
    pub embedding: usize,
}

impl Gpt {
    /// A new model; `config.vocab` must be set and `config.validate()` must pass.
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        assert!(config.vocab > 0, "model.vocab must be set before building the model");
        let d = config.d_model;
        let blocks = (0..config.layers)
            .map(|layer| Block {
                attn_norm: RmsNormConfig::new(d).init(device),
                attn: config.layer_attention(layer).init_layer(d, config.heads, config.max_seq, config.rope_base, layer, device),
                mlp_norm: RmsNormConfig::new(d).init(device),
                mlp: Mlp::new(config.mlp, d, config.mlp_hidden(), device),
            })
            .collect();
        Self {
            embed: EmbeddingConfig::new(config.vocab, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD })
                .init(device),
            blocks,
            norm: RmsNormConfig::new(d).init(device),
            max_seq: config.max_seq,
            dropout: config.dropout,
            decoder: (config.head == Head::Autoencoder).then(|| Decoder::new(d, config.vocab, device)),
            loops: config.loops,
            exit_gate: (config.exit == Exit::Learned).then(|| {
                LinearConfig::new(d, 1).with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD }).init(device)
            }),
            positions: (config.positions == Positions::Learned).then(|| {
                EmbeddingConfig::new(config.max_seq, d).with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD }).init(device)
            }),
        }
    }

    /// The input of the first layer: the embeddings of `tokens` `[batch, seq]` at positions
    /// `start..start + seq`, plus the learned position embeddings of those positions when the
    /// model has them → `[batch, seq, d_model]`.
    pub fn embed_tokens(&self, tokens: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let h = self.embed.forward(tokens);
        match &self.positions {
            None => h,
            Some(p) => {
                let t = h.dims()[1];
                assert!(start + t <= self.max_seq, "positions {start}..{} exceed model.max_seq = {}", start + t, self.max_seq);
                h + p.weight.val().narrow(0, start, t).unsqueeze_dim(0)
            }
        }
    }

    /// [`Gpt::new`] whose initial weights depend only on `seed`. Burn's seeded generator is
    /// global to the process and initialises parameters lazily (on first use): seeding,
    /// building and touching every parameter happen under one lock, so models built on
    /// parallel threads (runs of a sweep, tests) do not draw from each other's sequence.
    pub fn seeded(config: &ModelConfig, seed: u64, device: &Device) -> Self {
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        let model = Self::new(config, device);
        model.visit(&mut Touch);
        model
    }

    /// Final norm and tied LM head: `[b, t, d]` → `[b, t, vocab]`.
    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        attnlab_kernels::linear(attnlab_kernels::rms_norm(&self.norm, h), self.embed.weight.val().transpose())
    }

    /// Causal forward. tokens: `[batch, seq]` → logits `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let seq = tokens.dims()[1];
        assert!(seq <= self.max_seq, "sequence of {seq} tokens exceeds model.max_seq = {}", self.max_seq);
        let p = self.dropout;
        let mut h = crate::block::dropout(self.embed_tokens(tokens, 0), p);
        for r in 0..self.loops {
            if r > 0 {
                h = self.between_loops(h);
            }
            h = self.blocks.iter().fold(h, |h, b| b.forward(h, p));
        }
        self.logits(h)
    }

    /// [`Gpt::forward`] with the auxiliary losses `aux` asks for: each the **mean over the
    /// layers (and loops) that return it** (LoLCATs: the mean over layers of their attention-
    /// transfer MSE). A loss no layer returns is absent.
    pub fn forward_aux(&self, tokens: Tensor<2, Int>, aux: &AuxRequest) -> (Tensor<3>, Vec<(AuxLoss, Tensor<1>)>) {
        let seq = tokens.dims()[1];
        assert!(seq <= self.max_seq, "sequence of {seq} tokens exceeds model.max_seq = {}", self.max_seq);
        let p = self.dropout;
        let mut h = crate::block::dropout(self.embed_tokens(tokens, 0), p);
        let mut sums: Vec<(AuxLoss, Tensor<1>, usize)> = Vec::new();
        for r in 0..self.loops {
            if r > 0 {
                h = self.between_loops(h);
            }
            for block in &self.blocks {
                let (next, losses) = block.forward_aux(h, p, aux);
                h = next;
                for (name, value) in losses {
                    match sums.iter_mut().find(|(n, _, _)| *n == name) {
                        Some((_, sum, count)) => {
                            *sum = sum.clone() + value;
                            *count += 1;
                        }
                        None => sums.push((name, value, 1)),
                    }
                }
            }
        }
        (self.logits(h), sums.into_iter().map(|(name, sum, count)| (name, sum / count as f32)).collect())
    }

    /// The auxiliary losses some layer of this model can return.
    pub fn aux_losses(&self) -> Vec<AuxLoss> {
        // A learned exit trains through every loop's logits (`forward_loops`), which carries no
        // mixer losses: its model offers stage II's loss only.
        if self.exit_gate.is_some() {
            return vec![AuxLoss::ExitImprovement];
        }
        let mut all: Vec<AuxLoss> = self.blocks.iter().flat_map(|b| b.attn.aux_losses()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// This model with the weights of the trained model `source` it is made from: embedding,
    /// norms, MLPs, and each layer's trained mixer as the part it extends — a LoLCATs layer
    /// ([`attnlab_attn::Lolcats`]) takes a grouped-query layer's W_qkv, W_o and RoPE as its
    /// `base`, a DSA layer ([`attnlab_attn::Dsa`]) takes an MLA layer as its `mla` (or, on
    /// grouped-query attention, a grouped-query layer as its `gqa`). The new parts
    /// (feature maps, γ, adapters; the indexer) stay as initialised. Err names the first layer
    /// that does not fit.
    pub fn with_source_weights(mut self, source: Gpt) -> Result<Gpt, String> {
        if source.blocks.len() != self.blocks.len() || source.embed.weight.dims() != self.embed.weight.dims() {
            return Err(format!(
                "the source model has {} layers and embedding {:?}; this model {} and {:?}",
                source.blocks.len(),
                source.embed.weight.dims(),
                self.blocks.len(),
                self.embed.weight.dims()
            ));
        }
        let table = |m: &Gpt| m.positions.as_ref().map(|p| p.weight.dims());
        if table(&source) != table(&self) {
            return Err(format!(
                "the source model's position embeddings ({}, {:?}) differ from this model's ({}, {:?}): model.positions and model.max_seq must match",
                positions_name(&source),
                table(&source),
                positions_name(&self),
                table(&self)
            ));
        }
        self.embed = source.embed;
        self.positions = source.positions;
        self.norm = source.norm;
        for (l, (mine, theirs)) in self.blocks.iter_mut().zip(source.blocks).enumerate() {
            match (&mut mine.attn, theirs.attn) {
                (Attention::Lolcats(lolcats), Attention::GroupedQuery(base)) => {
                    if base.qkv.weight.dims() != lolcats.base.qkv.weight.dims() || base.kv_heads != lolcats.base.kv_heads {
                        return Err(format!(
                            "layer {l}: the softmax layer's W_qkv is {:?} ({} K/V heads), the lolcats layer's {:?} ({} K/V heads)",
                            base.qkv.weight.dims(),
                            base.kv_heads,
                            lolcats.base.qkv.weight.dims(),
                            lolcats.base.kv_heads
                        ));
                    }
                    lolcats.base = base;
                }
                (Attention::Dsa(dsa), Attention::Latent(mla)) if dsa.mla.is_some() => {
                    let own = dsa.mla();
                    if (mla.kv_latent, mla.rope_dim, mla.q_up.weight.dims()) != (own.kv_latent, own.rope_dim, own.q_up.weight.dims()) {
                        return Err(format!("layer {l}: the MLA layer's latent sizes differ from the DSA layer's"));
                    }
                    dsa.mla = Some(mla);
                }
                (Attention::Dsa(dsa), Attention::GroupedQuery(base)) if dsa.gqa.is_some() => {
                    let own = dsa.gqa.as_ref().expect("gqa");
                    if (base.kv_heads, base.qkv.weight.dims()) != (own.kv_heads, own.qkv.weight.dims()) {
                        return Err(format!(
                            "layer {l}: the source's K/V heads and W_qkv ({}, {:?}) differ from the DSA layer's ({}, {:?})",
                            base.kv_heads,
                            base.qkv.weight.dims(),
                            own.kv_heads,
                            own.qkv.weight.dims()
                        ));
                    }
                    dsa.gqa = Some(base);
                }
                (mine, _) => return Err(format!("layer {l}: a {} layer cannot start from the source's layer (lolcats from mha/mqa/gqa, dsa from mla, or from mha/mqa/gqa when it has kv_heads)", mine_kind(mine))),
            }
            mine.attn_norm = theirs.attn_norm;
            mine.mlp_norm = theirs.mlp_norm;
            mine.mlp = theirs.mlp;
        }
        Ok(self)
    }

    /// Every loop's logits `[b, t, vocab]` and exit-gate logits `[b, t]` (a learned exit only;
    /// the forward of a looped model that trains its exit, [`crate::looped::exit_loss`]).
    pub fn forward_loops(&self, tokens: Tensor<2, Int>) -> Vec<(Tensor<3>, Tensor<2>)> {
        let gate = self.exit_gate.as_ref().expect("forward_loops needs model.exit = \"learned\"");
        let seq = tokens.dims()[1];
        assert!(seq <= self.max_seq, "sequence of {seq} tokens exceeds model.max_seq = {}", self.max_seq);
        let p = self.dropout;
        let mut h = crate::block::dropout(self.embed_tokens(tokens, 0), p);
        let mut out = Vec::with_capacity(self.loops);
        for r in 0..self.loops {
            if r > 0 {
                h = self.between_loops(h);
            }
            h = self.blocks.iter().fold(h, |h, b| b.forward(h, p));
            let normed = attnlab_kernels::rms_norm(&self.norm, h.clone());
            let [b, t, _] = normed.dims();
            let g = gate.forward(normed.clone()).reshape([b, t]);
            out.push((attnlab_kernels::linear(normed, self.embed.weight.val().transpose()), g));
        }
        out
    }

    /// Every layer's attention, when this is a plain LM (one loop, the LM head) whose layers
    /// are all causal grouped-query attention (mha, mqa, gqa and their gated / q/k-norm
    /// variants): the models an inference-time method over global attention runs on (Star
    /// Attention, decode-time key selection). `method` names the method in the error.
    pub fn causal_grouped_layers(&self, method: &str) -> Result<Vec<&attnlab_attn::GroupedQuery>, String> {
        if self.loops != 1 {
            return Err(format!("{method}: model.loops = {}: allowed: 1 (a plain LM)", self.loops));
        }
        if self.decoder.is_some() {
            return Err(format!("{method}: model.head = \"autoencoder\": allowed: \"lm\""));
        }
        if self.positions.is_some() {
            return Err(format!("{method}: model.positions = \"learned\": allowed: \"none\" (not built for learned position embeddings)"));
        }
        self.blocks
            .iter()
            .enumerate()
            .map(|(l, b)| match &b.attn {
                Attention::GroupedQuery(m) if m.pattern == attnlab_attn::Pattern::Causal => Ok(m),
                _ => Err(format!("{method}: layer {l} is not global causal softmax attention; allowed kinds: mha, mqa, gqa (and their gated / qk-norm variants)")),
            })
            .collect()
    }

    /// Logits `[b, t, vocab]` under Q-exit at threshold `q` (a learned exit only): each token's
    /// logits from the loop [`crate::looped::q_exit`] picks, and that loop (1-based) per token
    /// `[b·t]`.
    pub fn forward_q_exit(&self, tokens: Tensor<2, Int>, q: f64) -> (Tensor<3>, Vec<usize>) {
        let [b, t] = tokens.dims();
        let loops = self.forward_loops(tokens);
        let gates: Vec<Vec<f32>> = loops.iter().map(|(_, g)| g.clone().into_data().convert::<f32>().try_into_vec::<f32>().expect("gate logits")).collect();
        let chosen = crate::looped::q_exit(&gates, q);
        let device = loops[0].0.device();
        let mut out: Option<Tensor<3>> = None;
        for (r, (logits, _)) in loops.into_iter().enumerate() {
            let pick: Vec<f32> = chosen.iter().map(|&c| f32::from(u8::from(c == r))).collect();
            let pick = Tensor::<3>::from_data(burn::tensor::TensorData::new(pick, [b, t, 1]), &device);
            let part = logits * pick;
            out = Some(out.map_or(part.clone(), |acc| acc + part));
        }
        (out.expect("at least one loop"), chosen.into_iter().map(|c| c + 1).collect())
    }

    /// The next loop's input: the final norm of the previous loop's output (Ouro: no
    /// re-injection of the embedding).
    fn between_loops(&self, h: Tensor<3>) -> Tensor<3> {
        attnlab_kernels::rms_norm(&self.norm, h)
    }

    /// Logits `[b, t, vocab]` from the last layer's hidden states `[b, t, d]`: the LM head at
    /// every position, or the compression decoder reading the last position only.
    pub fn logits(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.decoder {
            Some(decoder) => {
                let t = h.dims()[1];
                decoder.forward(Decoder::bottleneck(h), t, &self.norm)
            }
            None => self.head(h),
        }
    }

    /// One empty decode state per layer for `batch` sequences of up to `capacity` tokens.
    pub fn init_states(&self, batch: usize, capacity: usize, device: &Device) -> Vec<State> {
        (0..self.loops).flat_map(|_| self.blocks.iter().map(|b| b.attn.init_state(batch, capacity, device))).collect()
    }

    /// Incremental forward: tokens `[batch, new]` → logits `[batch, new, vocab]`.
    pub fn step(&self, tokens: Tensor<2, Int>, states: &mut [State]) -> Tensor<3> {
        assert!(self.decoder.is_none(), "model.head = \"autoencoder\" decodes the whole sequence from its last position: it has no token-by-token decode");
        assert_eq!(states.len(), self.loops * self.blocks.len(), "one decode state per loop and layer");
        let mut h = self.embed_tokens(tokens, states[0].len());
        // Loop r, layer l reads state r·L + l.
        for (r, loop_states) in states.chunks_mut(self.blocks.len()).enumerate() {
            if r > 0 {
                h = self.between_loops(h);
            }
            h = self.blocks.iter().zip(loop_states.iter_mut()).fold(h, |h, (b, s)| b.step(h, s));
        }
        self.head(h)
    }

    pub fn param_counts(&self) -> ParamCounts {
        let mixer = self.blocks.iter().map(|b| b.attn.num_params()).sum();
        ParamCounts { total: self.num_params(), mixer, embedding: self.embed.num_params() }
    }

    /// Decode-state bytes of one sequence at `context` tokens, all layers and loops (one state
    /// per loop and layer: R× the stack's; analytic, f32).
    pub fn state_bytes(&self, context: usize) -> usize {
        self.loops * self.blocks.iter().map(|b| b.attn.state_bytes(context)).sum::<usize>()
    }

    /// [`Attention::keys_attended`] averaged over the layers that score keys one by one (`None`
    /// when none does).
    pub fn keys_attended(&self, context: usize) -> Option<f64> {
        let fractions: Vec<f64> = self.blocks.iter().filter_map(|b| b.attn.keys_attended(context)).collect();
        (!fractions.is_empty()).then(|| fractions.iter().sum::<f64>() / fractions.len() as f64)
    }

    /// Forward FLOPs per token at `context`: mixers + MLPs (2 per weight, × `loops`) + LM head.
    /// Training costs ≈ 3× this (forward + backward).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let [vocab, d] = self.embed.weight.dims();
        let blocks: u64 = self
            .blocks
            .iter()
            .map(|b| b.attn.flops_per_token(context) + 2 * b.mlp.num_params() as u64)
            .sum();
        let decoder = self.decoder.as_ref().map_or(0, |dec| 2 * (dec.fc1.num_params() + dec.fc2.num_params()) as u64);
        // A learned exit reads the LM head (and the gate) after every loop.
        let heads = if self.exit_gate.is_some() { self.loops as u64 * (2 * (vocab * d + d) as u64) } else { 2 * (vocab * d) as u64 };
        self.loops as u64 * blocks + heads + decoder
    }
}

/// `model.positions` of a model, for messages.
fn positions_name(m: &Gpt) -> &'static str {
    if m.positions.is_some() {
        "learned"
    } else {
        "none"
    }
}

/// A mixer's kind for messages.
fn mine_kind(a: &Attention) -> &'static str {
    match a {
        Attention::Lolcats(_) => "lolcats",
        Attention::Dsa(_) => "dsa",
        _ => "softmax or recurrent",
    }
}
