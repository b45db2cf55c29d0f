//! Optimisation as nanoGPT does it: one gradient norm over all parameters, and weight decay on
//! matrices only.
//!
//! Mutations planted and seen to fail: per-tensor clipping (each gradient scaled to norm ≤ c on
//! its own, Burn's `GradientClippingConfig::Norm`) fails `clipping_scales_every_gradient_by_one_global_factor`;
//! decaying every parameter (the old behaviour, `Decay::All` in place of the group) fails
//! `matrices_decay_and_gains_do_not`.

use attnlab_attn::AttentionConfig;
use attnlab_exp::optim::{clip_global_norm, global_grad_norm, optimizer};
use attnlab_exp::spec::{Decay, TrainConfig};
use attnlab_model::{Gpt, ModelConfig};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

#[derive(Module, Debug)]
struct Three {
    a: Param<Tensor<1>>,
    b: Param<Tensor<2>>,
    c: Param<Tensor<1>>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Gradients `[3, 4]` (norm 5), `[[0, 12], [0, 0]]` (norm 12) and `[84]` (norm 84): global norm
/// √(25 + 144 + 7056) = 85.
fn three() -> (Three, GradientsParams) {
    let dev = Device::flex();
    let p1 = |v: Vec<f32>| Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &dev));
    let m = Three { a: p1(vec![1.0, 1.0]), b: Param::from_tensor(Tensor::<2>::ones([2, 2], &dev)), c: p1(vec![1.0]) };
    let mut grads = GradientsParams::new();
    grads.register(m.a.id, Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 4.0], [2]), &dev));
    grads.register(m.b.id, Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 12.0, 0.0, 0.0], [2, 2]), &dev));
    grads.register(m.c.id, Tensor::<1>::from_data(TensorData::new(vec![84.0f32], [1]), &dev));
    (m, grads)
}

#[test]
fn clipping_scales_every_gradient_by_one_global_factor() {
    let (m, grads) = three();
    assert!((global_grad_norm(&grads, &m) - 85.0).abs() < 1e-4);
    let (clipped, norm) = clip_global_norm(grads, &m, 1.0);
    assert!((norm - 85.0).abs() < 1e-4, "norm before clipping {norm}");
    let f = 1.0 / (85.0 + 1e-6);
    let want_a = [3.0 * f, 4.0 * f];
    let want_b = [0.0, 12.0 * f, 0.0, 0.0];
    let want_c = [84.0 * f];
    let close = |got: Vec<f32>, want: &[f64]| got.iter().zip(want).all(|(g, w)| (*g as f64 - w).abs() < 1e-6);
    assert!(close(values(clipped.get::<1>(m.a.id).unwrap()), &want_a), "a");
    assert!(close(values(clipped.get::<2>(m.b.id).unwrap()), &want_b), "b");
    assert!(close(values(clipped.get::<1>(m.c.id).unwrap()), &want_c), "c");
    assert!((global_grad_norm(&clipped, &m) - 1.0).abs() < 1e-5, "the clipped global norm is max_norm");
}

#[test]
fn clipping_leaves_gradients_under_the_limit_alone() {
    let (m, grads) = three();
    let (clipped, _) = clip_global_norm(grads, &m, 100.0);
    assert_eq!(values(clipped.get::<1>(m.c.id).unwrap()), vec![84.0]);
    assert_eq!(values(clipped.get::<1>(m.a.id).unwrap()), vec![3.0, 4.0]);
}

/// Every parameter of a model with its zero gradient, shape rank and value.
struct Params {
    grads: GradientsParams,
    list: Vec<(ParamId, usize, Vec<f32>)>,
}

impl ModuleVisitor for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val();
        // Gradients live on the inner (non-autodiff) device.
        self.grads.register(param.id, Tensor::<D>::zeros(v.shape(), &Device::flex()));
        self.list.push((param.id, D, values(v)));
    }
}

fn params_after_one_step(attention: AttentionConfig, decay: Decay) -> Vec<(usize, Vec<f32>, Vec<f32>)> {
    let dev = Device::flex().autodiff();
    let config = ModelConfig { vocab: 11, d_model: 16, layers: 2, heads: 2, max_seq: 8, attention, ..ModelConfig::default() };
    let model = attnlab_exp::trainer::seeded_model(&config, 1, &dev);
    let mut p = Params { grads: GradientsParams::new(), list: vec![] };
    model.visit(&mut p);
    let t = TrainConfig { weight_decay: 0.5, decay, ..TrainConfig::default() };
    let mut optim = optimizer(&t, &model);
    let stepped: Gpt = optim.step(0.1, model, p.grads);
    struct After(Vec<(ParamId, Vec<f32>)>);
    impl ModuleVisitor for After {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, values(param.val())));
        }
    }
    let mut after = After(vec![]);
    stepped.visit(&mut after);
    p.list.into_iter().zip(after.0).map(|((id, rank, before), (id2, a))| {
        assert_eq!(id, id2);
        (rank, before, a)
    }).collect()
}

/// With a zero gradient AdamW's update is zero, so a parameter changes only by decay:
/// `w ← w (1 − lr · weight_decay)` = `0.95 w` here.
#[test]
fn matrices_decay_and_gains_do_not() {
    let kinds = [AttentionConfig::Mla { kv_latent: Some(8), q_latent: Some(8), rope_dim: Some(4), rope: true }, AttentionConfig::Differential {}];
    for attention in kinds {
        let params = params_after_one_step(attention.clone(), Decay::Matrices);
        let vectors = params.iter().filter(|(r, ..)| *r == 1).count();
        assert!(vectors >= 3, "{attention:?}: norm gains and mixer vectors expected, found {vectors}");
        for (rank, before, after) in params {
            let factor = if rank >= 2 { 0.95 } else { 1.0 };
            for (b, a) in before.iter().zip(&after) {
                assert!((b * factor - a).abs() <= 1e-6 * b.abs().max(1.0), "{attention:?} rank {rank}: {b} → {a}, want ×{factor}");
            }
        }
    }
}

#[test]
fn decay_all_and_none_do_what_they_say() {
    for (decay, f1, f2) in [(Decay::All, 0.95, 0.95), (Decay::None, 1.0, 1.0)] {
        for (rank, before, after) in params_after_one_step(AttentionConfig::Mha {}, decay) {
            let factor = if rank >= 2 { f2 } else { f1 };
            for (b, a) in before.iter().zip(&after) {
                assert!((b * factor - a).abs() <= 1e-6 * b.abs().max(1.0), "{decay:?} rank {rank}: {b} → {a}");
            }
        }
    }
}
