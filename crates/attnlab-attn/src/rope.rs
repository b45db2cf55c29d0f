//! Rotary position embedding (RoFormer, Su et al. 2021), "rotate-half" layout.
//!
//! For a vector x of even size d split into halves (x₁, x₂) and position p:
//! `rope(x, p) = [x₁·cos(pθ) − x₂·sin(pθ), x₂·cos(pθ) + x₁·sin(pθ)]`, θᵢ = base^(−2i/d).
//! The cos/sin tables are built once for `max_seq` positions.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

/// Precomputed cos/sin tables, each `[max_seq, dim / 2]`.
#[derive(Module, Debug)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    dim: usize,
}

impl Rope {
    /// Tables for rotary dimension `dim` (even) and positions `0..max_seq`.
    pub fn new(dim: usize, max_seq: usize, base: f32, device: &Device) -> Self {
        assert!(dim % 2 == 0 && dim > 0, "rope dim must be even and > 0, got {dim}");
        let half = dim / 2;
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for p in 0..max_seq {
            for i in 0..half {
                let theta = (base as f64).powf(-2.0 * i as f64 / dim as f64);
                let angle = p as f64 * theta;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [max_seq, half]), device),
            sin: Tensor::from_data(TensorData::new(sin, [max_seq, half]), device),
            dim,
        }
    }

    /// The cos and sin tables, each `[max_seq, dim / 2]`.
    pub fn tables(&self) -> (Tensor<2>, Tensor<2>) {
        (self.cos.clone(), self.sin.clone())
    }

    /// Rotary dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Largest number of positions the tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates x: `[batch, heads, seq, dim]` as positions `start..start + seq`.
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, _, seq, dim] = x.dims();
        assert_eq!(dim, self.dim, "rope: expected last dim {}, got {dim}", self.dim);
        assert!(start + seq <= self.max_seq(), "rope: positions up to {} exceed the table ({})", start + seq, self.max_seq());
        if attnlab_kernels::fused(&x) {
            return attnlab_kernels::rope(x, self.cos.clone(), self.sin.clone(), start);
        }
        let half = dim / 2;
        // The tables in x's type (f32 tables; a half-precision training forward casts them).
        let cos = self.cos.clone().narrow(0, start, seq).cast(x.dtype()).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, start, seq).cast(x.dtype()).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let r2 = x2 * cos + x1 * sin;
        Tensor::cat(vec![r1, r2], 3)
    }
}
