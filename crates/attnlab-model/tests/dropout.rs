//! `dropout` against its definition: on an autodiff device it zeroes a fraction ≈ p of the
//! elements and scales the rest by exactly 1/(1 − p) (so the mean is kept); without autodiff
//! (evaluation, decode) and at p = 0 it is the identity.
//! Planted, and seen to fail: the survivors not rescaled; dropout applied in evaluation.

use attnlab_model::block::dropout;
use burn::tensor::{Device, Tensor};

#[test]
fn dropout_zeroes_about_p_and_rescales_the_rest() {
    let (n, p) = (100_000usize, 0.2);
    let device = Device::flex().autodiff();
    device.seed(7);
    let x: Tensor<1> = Tensor::ones([n], &device);
    let y: Vec<f32> = dropout(x, p).into_data().try_into_vec::<f32>().unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((zeros - p).abs() < 0.01, "dropped fraction {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6), "survivors are 1/(1 − p)");
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 0.02, "mean {mean}");

    let plain = Device::flex();
    let x: Tensor<1> = Tensor::ones([16], &plain);
    assert_eq!(dropout(x.clone(), p).into_data().try_into_vec::<f32>().unwrap(), vec![1.0; 16], "no dropout without autodiff");
    let x: Tensor<1> = Tensor::ones([16], &device);
    assert_eq!(dropout(x, 0.0).into_data().try_into_vec::<f32>().unwrap(), vec![1.0; 16]);
}
