//! Optimisation as nanoGPT does it: AdamW with weight decay on matrices and embeddings only
//! (`train.decay`), and gradient clipping by **one** norm over every gradient
//! (`torch.nn.utils.clip_grad_norm_`), not Burn's per-parameter `GradientClippingConfig::Norm`.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::spec::{Decay, Precision, TrainConfig};

/// AdamW with the run's betas and `weight_decay` (no clipping: see [`clip_global_norm`]).
pub fn adamw(t: &TrainConfig) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(1e-8)
        .with_weight_decay(t.weight_decay as f32)
}

/// The run's optimizer for `model`: parameters outside the decayed set (by `train.decay`) get
/// AdamW without weight decay. Build it from the model it will step (parameter ids).
pub fn optimizer<M: Module>(t: &TrainConfig, model: &M) -> ModuleOptimizer {
    let config = adamw(t);
    match t.decay {
        Decay::All => config.init(),
        Decay::None => config.with_weight_decay(0.0).init(),
        Decay::Matrices => {
            let vectors = ParamGroup::from_ids(ids_of_rank_below_2(model));
            config.init().with_group(vectors, config.clone().with_weight_decay(0.0).build(), None)
        }
    }
}

/// Ids of the parameters with fewer than two dimensions (gains, biases, λ vectors).
pub fn ids_of_rank_below_2<M: Module>(model: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D < 2 {
                self.0.push(param.id);
            }
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// ‖g‖₂ over every parameter gradient of `model` taken together.
pub fn global_grad_norm<M: Module>(grads: &GradientsParams, model: &M) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares { grads, total: None };
    model.visit(&mut v);
    v.total.map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
}

/// Every gradient of `model` times `factor`.
pub fn scale_grads<M: Module>(mut grads: GradientsParams, model: &M, factor: f32) -> GradientsParams {
    model.visit(&mut Scale { grads: &mut grads, factor });
    grads
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales every gradient by `min(1, max_norm / (‖g‖ + 1e-6))` with ‖g‖ the global norm, as
/// `clip_grad_norm_` does. Returns the gradients and the norm before clipping.
pub fn clip_global_norm<M: Module>(grads: GradientsParams, model: &M, max_norm: f64) -> (GradientsParams, f64) {
    let norm = global_grad_norm(&grads, model);
    (clip_to_norm(grads, model, max_norm, norm), norm)
}

/// [`clip_global_norm`] with the global norm already known.
fn clip_to_norm<M: Module>(grads: GradientsParams, model: &M, max_norm: f64, norm: f64) -> GradientsParams {
    let coef = max_norm / (norm + 1e-6);
    // A non-finite norm scales too (to NaN, as torch does): the divergence check then stops
    // the run instead of stepping on unclipped gradients.
    if coef >= 1.0 { grads } else { scale_grads(grads, model, coef as f32) }
}

/// One optimiser step: global-norm clipping (when `grad_clip > 0`), then AdamW. In f16
/// (`precision`), gradients that overflowed the half type under the loss scale (a non-finite
/// global norm) skip the step, with a warning, as PyTorch's GradScaler does; in f32 and bf16 they
/// go through (NaN weights), and the divergence check stops the run.
pub fn step<M: Module>(optim: &mut ModuleOptimizer, model: M, grads: GradientsParams, lr: f64, grad_clip: f64, precision: Precision) -> M {
    // One norm (one read back from the device) serves the overflow check and the clipping.
    let norm = (grad_clip > 0.0 || precision == Precision::F16).then(|| global_grad_norm(&grads, &model));
    if precision == Precision::F16 && norm.is_some_and(|n| !n.is_finite()) {
        tracing::warn!("f16 gradients overflowed at loss scale {}: optimizer step skipped", precision.loss_scale());
        return model;
    }
    let grads = match norm {
        Some(norm) if grad_clip > 0.0 => clip_to_norm(grads, &model, grad_clip, norm),
        _ => grads,
    };
    optim.step(lr, model, grads)
}
