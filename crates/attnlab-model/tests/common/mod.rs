//! Helpers shared by the model tests.
#![allow(dead_code)]

use attnlab_attn::burn::tensor::{Device, Int, Tensor, TensorData};

/// Token ids `[b, t]` of a fixed pattern over a vocabulary of 29.
pub fn tokens(b: usize, t: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 7 + 3) % 29) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [b, t]), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}
