//! Training a looped model with a learned exit: the step minimises Ouro's objective but reports
//! the last loop's cross-entropy, the quantity evaluation measures and other runs log.
//!
//! Planted, and seen to fail: the objective reported instead of the last loop's CE.

mod common;

use attnlab_data::Rng;
use attnlab_exp::trainer::{accumulated_grads, batch_loss, seeded_model};
use burn::tensor::Device;
use common::tiny_run;

#[test]
fn a_learned_exit_reports_the_last_loops_cross_entropy() {
    let device = Device::flex().autodiff();
    for sets in [vec!["model.loops=3", "model.exit=learned", "model.exit_entropy=0.5"], vec!["model.loops=3"]] {
        let run = tiny_run("exit", &sets);
        let model = seeded_model(&run.spec.model, 0, &device);
        let (_, reported) = accumulated_grads(&model, &run, &mut Rng::new(3), 0, &device);
        let t = &run.spec.train;
        let batch = run.data.train_batch(&mut Rng::new(3), t.batch, t.block, 0);
        let last = batch_loss(&model, batch, &device).into_scalar::<f32>() as f64;
        assert!((reported - last).abs() < 1e-5 * last, "{sets:?}: reported {reported}, last loop's CE {last}");
    }
}
