//! Fused causal softmax attention for the CubeCL backends (wgpu), with a FlashAttention-2-style
//! backward: the `T × T` scores are never stored, the backward recomputes them from Q, K, V and
//! the saved log-sum-exp.
//!
//! Shapes and positions as the CPU kernel ([`crate::causal_attention`]): q `[batch, groups, rows, d]`,
//! k `[batch, groups, keys, d]`, v `[batch, groups, keys, d_v]`; query row ρ sits at position
//! `offset + ρ mod t` (grouped-query attention stacks a group's heads along the rows, so K/V are
//! never repeated), key j at position j; row ρ sees keys `j ≤ pos(ρ)`, with a sliding window only
//! `pos(ρ) − window < j` plus the first `sinks` positions.
//!
//! Kernels (one GPU thread per row, f32 accumulation whatever the input type, f32 or f16):
//! - forward: per row an online softmax over its visible keys (Milakov & Gimelshein 2018):
//!   `m ← max(m, s)`, `ℓ ← ℓ·e^{m_old − m} + e^{s − m}`, `acc ← acc·e^{m_old − m} + e^{s − m} v_j`;
//!   `O = acc / ℓ`, `L = m + ln ℓ` (f32, kept for the backward).
//! - backward (Dao 2023, Alg. 2, recomputing `P = exp(S − L)`): one thread per query row writes
//!   `D = rowsum(dO ⊙ O)` and `dQ = Σ_j P (dP − D) K·scale` with `dP = dO Vᵀ`; then one thread
//!   per key writes `dV = Σ_ρ P dO` and `dK = Σ_ρ P (dP − D) Q·scale` over the rows that see it.
//!   No atomics; memory saved for the backward is O, L and the inputs, linear in the sequence.
//!
//! This is the plain, untiled form: keys are read from global memory (through the caches) row by
//! row, with no shared-memory tiles or cooperative-matrix products, so its speed on a real GPU is
//! whatever that gives; what it guarantees is the memory (no score matrix) and one kernel for
//! the whole attention instead of Burn's composed matmul/mask/softmax/matmul chain.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor};
use burn::backend::{backend_extension, Backend, Dispatch, DispatchDevice, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor};
use cubecl::prelude::CubeCount;
use cubecl::{calculate_cube_count_elemwise, CubeDim};

use kernels::{dkdv_kernel, dq_kernel, forward_kernel};

use crate::causal_attention::Dims;

/// The CubeCL kernels (their own module: CubeCL's `Tensor` is not Burn's).
mod kernels {
    use cubecl::prelude::*;

    /// Start of the window of position p: keys `lo..=p` (the sinks `0..min(sinks, lo)` besides).
    #[cube]
    fn window_start(p: usize, window: usize) -> usize {
        let mut lo = 0;
        if p + 1 > window {
            lo = p + 1 - window;
        }
        lo
    }

    /// End of the sink keys of a window starting at `lo`.
    #[cube]
    fn sinks_end(lo: usize, sinks: usize) -> usize {
        let mut end = sinks;
        if lo < sinks {
            end = lo;
        }
        end
    }

    /// The i-th visible key of a row: the sinks first, then the window.
    #[cube]
    fn visible_key(i: usize, sinks_end: usize, lo: usize) -> usize {
        let mut j = i;
        if i >= sinks_end {
            j = lo + i - sinks_end;
        }
        j
    }

    /// `q[qa..qa + d] · k[ka..ka + d]` in f32.
    #[cube]
    fn dot<E: Float>(q: &Tensor<E>, qa: usize, k: &Tensor<E>, ka: usize, #[comptime] d: usize) -> f32 {
        let mut s = f32::new(0.0);
        for c in 0..d {
            s += f32::cast_from(q[qa + c]) * f32::cast_from(k[ka + c]);
        }
        s
    }

    #[cube(launch, address_type = "dynamic")]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_kernel<E: Float>(
        q: &Tensor<E>,
        k: &Tensor<E>,
        v: &Tensor<E>,
        o: &mut Tensor<E>,
        lse: &mut Tensor<f32>,
        rows: usize,
        keys: usize,
        t: usize,
        offset: usize,
        scale: f32,
        window: usize,
        sinks: usize,
        #[comptime] d: usize,
        #[comptime] dv: usize,
        #[define(E)] _dtype: ElemType,
    ) {
        let row = ABSOLUTE_POS;
        if row >= lse.len() {
            terminate!();
        }
        let h = row / rows;
        let p = offset + (row % rows) % t;
        let lo = window_start(p, window);
        let se = sinks_end(lo, sinks);
        let k0 = h * keys * d;
        let v0 = h * keys * dv;
        let mut acc = Array::<f32>::new(dv);
        for c in 0..dv {
            acc[c] = f32::new(0.0);
        }
        // Every row sees at least its own key, which replaces this start value.
        let mut m = f32::new(-3.0e38);
        let mut l = f32::new(0.0);
        for i in 0..se + p + 1 - lo {
            let j = visible_key(i, se, lo);
            let s = dot::<E>(q, row * d, k, k0 + j * d, d) * scale;
            let mut m_new = m;
            if s > m {
                m_new = s;
            }
            let corr = (m - m_new).exp();
            let w = (s - m_new).exp();
            l = l * corr + w;
            for c in 0..dv {
                acc[c] = acc[c] * corr + w * f32::cast_from(v[v0 + j * dv + c]);
            }
            m = m_new;
        }
        for c in 0..dv {
            o[row * dv + c] = E::cast_from(acc[c] / l);
        }
        lse[row] = m + l.ln();
    }

    /// One thread per query row: `D = rowsum(dO ⊙ O)` (written for the key kernel) and dQ.
    #[cube(launch, address_type = "dynamic")]
    #[allow(clippy::too_many_arguments)]
    pub fn dq_kernel<E: Float>(
        q: &Tensor<E>,
        k: &Tensor<E>,
        v: &Tensor<E>,
        o: &Tensor<E>,
        d_o: &Tensor<E>,
        lse: &Tensor<f32>,
        delta: &mut Tensor<f32>,
        dq: &mut Tensor<E>,
        rows: usize,
        keys: usize,
        t: usize,
        offset: usize,
        scale: f32,
        window: usize,
        sinks: usize,
        #[comptime] d: usize,
        #[comptime] dv: usize,
        #[define(E)] _dtype: ElemType,
    ) {
        let row = ABSOLUTE_POS;
        if row >= lse.len() {
            terminate!();
        }
        let h = row / rows;
        let p = offset + (row % rows) % t;
        let lo = window_start(p, window);
        let se = sinks_end(lo, sinks);
        let k0 = h * keys * d;
        let v0 = h * keys * dv;
        let dl = dot::<E>(d_o, row * dv, o, row * dv, dv);
        delta[row] = dl;
        let l = lse[row];
        let mut acc = Array::<f32>::new(d);
        for c in 0..d {
            acc[c] = f32::new(0.0);
        }
        for i in 0..se + p + 1 - lo {
            let j = visible_key(i, se, lo);
            let prob = (dot::<E>(q, row * d, k, k0 + j * d, d) * scale - l).exp();
            let ds = prob * (dot::<E>(d_o, row * dv, v, v0 + j * dv, dv) - dl) * scale;
            for c in 0..d {
                acc[c] += ds * f32::cast_from(k[k0 + j * d + c]);
            }
        }
        for c in 0..d {
            dq[row * d + c] = E::cast_from(acc[c]);
        }
    }

    /// One thread per key: dK and dV over the rows that see it (reads the D of [`dq_kernel`]).
    #[cube(launch, address_type = "dynamic")]
    #[allow(clippy::too_many_arguments)]
    pub fn dkdv_kernel<E: Float>(
        q: &Tensor<E>,
        k: &Tensor<E>,
        v: &Tensor<E>,
        d_o: &Tensor<E>,
        lse: &Tensor<f32>,
        delta: &Tensor<f32>,
        dk: &mut Tensor<E>,
        dvv: &mut Tensor<E>,
        rows: usize,
        keys: usize,
        t: usize,
        offset: usize,
        scale: f32,
        window: usize,
        sinks: usize,
        #[comptime] d: usize,
        #[comptime] dv: usize,
        #[define(E)] _dtype: ElemType,
    ) {
        let key = ABSOLUTE_POS;
        if key >= dk.len() / d {
            terminate!();
        }
        let h = key / keys;
        let j = key % keys;
        let mut acc_k = Array::<f32>::new(d);
        let mut acc_v = Array::<f32>::new(dv);
        for c in 0..d {
            acc_k[c] = f32::new(0.0);
        }
        for c in 0..dv {
            acc_v[c] = f32::new(0.0);
        }
        // Positions that see key j: from j (or the first query) on; a key outside the sinks
        // only until it leaves the window.
        let last = offset + t - 1;
        let mut end = last;
        if j >= sinks && j + window - 1 < last {
            end = j + window - 1;
        }
        let mut first = offset;
        if j > offset {
            first = j;
        }
        for i in 0..rows / t {
            for p in first..end + 1 {
                let row = h * rows + i * t + p - offset;
                let prob = (dot::<E>(q, row * d, k, key * d, d) * scale - lse[row]).exp();
                for c in 0..dv {
                    acc_v[c] += prob * f32::cast_from(d_o[row * dv + c]);
                }
                let ds = prob * (dot::<E>(d_o, row * dv, v, key * dv, dv) - delta[row]) * scale;
                for c in 0..d {
                    acc_k[c] += ds * f32::cast_from(q[row * d + c]);
                }
            }
        }
        for c in 0..d {
            dk[key * d + c] = E::cast_from(acc_k[c]);
        }
        for c in 0..dv {
            dvv[key * dv + c] = E::cast_from(acc_v[c]);
        }
    }
}

/// The fused op's two halves as a backend extension: the CubeCL backend runs the kernels,
/// fusion defers them like any op, and autodiff (over either) pairs the forward with the backward.
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait GpuAttentionBackend: Backend {
    /// `(O, L)`: the attention output and each row's log-sum-exp `[batch, groups, rows]` (f32).
    /// `window`/`sinks` as in [`Dims`] (`usize::MAX`, 0: plain causal).
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = forward_meta)]
    fn gpu_attention_forward(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(dQ, dK, dV)` from the forward's inputs, its `(O, L)` and the output gradient dO.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = backward_meta)]
    fn gpu_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        t: usize,
        offset: usize,
        scale: f32,
        window: usize,
        sinks: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

#[allow(clippy::too_many_arguments)]
fn forward_meta(q: &TensorSpec, _k: &TensorSpec, v: &TensorSpec, _t: &usize, _offset: &usize, _scale: &f32, _window: &usize, _sinks: &usize) -> (TensorSpec, TensorSpec) {
    let mut o = q.shape.clone();
    o[3] = v.shape[3];
    let lse = Shape::from([q.shape[0], q.shape[1], q.shape[2]]);
    (TensorSpec::new(o, q.dtype), TensorSpec::new(lse, DType::F32))
}

#[allow(clippy::too_many_arguments)]
fn backward_meta(q: &TensorSpec, k: &TensorSpec, v: &TensorSpec, _o: &TensorSpec, _lse: &TensorSpec, _d_o: &TensorSpec, _t: &usize, _offset: &usize, _scale: &f32, _window: &usize, _sinks: &usize) -> (TensorSpec, TensorSpec, TensorSpec) {
    (q.clone(), k.clone(), v.clone())
}

/// A new contiguous tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let bytes = shape.num_elements() * dtype.size();
    let handle = like.client.empty(bytes);
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, dtype)
}

/// The kernels' launch geometry for `n` threads and the scalar arguments they share.
struct Launch {
    dims: Dims,
    /// `window`, `sinks` clamped to the key count (they travel as 32-bit integers on wgpu).
    window: usize,
    sinks: usize,
}

impl Launch {
    #[allow(clippy::too_many_arguments)]
    fn of(q: &CubeTensor, k: &CubeTensor, v: &CubeTensor, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> Self {
        let dims = Dims::of(&q.shape(), &k.shape(), &v.shape(), t, offset, scale).windowed(window, sinks);
        assert!(q.dtype == k.dtype && k.dtype == v.dtype, "gpu attention: q, k, v dtypes {:?} {:?} {:?} differ", q.dtype, k.dtype, v.dtype);
        assert!(matches!(q.dtype, DType::F32 | DType::F16), "gpu attention: f32 or f16 tensors, got {:?}", q.dtype);
        Self { dims, window: window.min(dims.keys + 1), sinks: sinks.min(dims.keys) }
    }

    fn geometry(client: &cubecl::client::Client, n: usize) -> (CubeCount, CubeDim) {
        let cube_dim = CubeDim::new(client, n);
        (calculate_cube_count_elemwise(client, n, cube_dim), cube_dim)
    }
}

fn contiguous(x: CubeTensor) -> CubeTensor {
    burn_cubecl::kernel::into_contiguous(x)
}

impl GpuAttentionBackend for CubeBackend {
    fn gpu_attention_forward(q: CubeTensor, k: CubeTensor, v: CubeTensor, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (CubeTensor, CubeTensor) {
        let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
        let Launch { dims, window, sinks } = Launch::of(&q, &k, &v, t, offset, scale, window, sinks);
        let mut shape = q.shape();
        shape[3] = dims.dv;
        let o = empty(&q, shape.clone(), q.dtype);
        let lse = empty(&q, Shape::from([shape[0], shape[1], shape[2]]), DType::F32);
        let n = dims.heads * dims.rows;
        let (count, cube_dim) = Launch::geometry(&q.client, n);
        let (client, dtype) = (q.client.clone(), dtype_to_storage_type(q.dtype));
        let address = q.required_address_type().max(k.required_address_type()).max(v.required_address_type()).max(o.required_address_type());
        forward_kernel::launch(
            &client, count, cube_dim, address,
            q.into_tensor_arg(), k.into_tensor_arg(), v.into_tensor_arg(), o.clone().into_tensor_arg(), lse.clone().into_tensor_arg(),
            dims.rows, dims.keys, dims.t, dims.offset, dims.scale, window, sinks, dims.d, dims.dv, dtype,
        );
        (o, lse)
    }

    fn gpu_attention_backward(q: CubeTensor, k: CubeTensor, v: CubeTensor, o: CubeTensor, lse: CubeTensor, d_o: CubeTensor, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (q, k, v, o, lse, d_o) = (contiguous(q), contiguous(k), contiguous(v), contiguous(o), contiguous(lse), contiguous(d_o));
        let Launch { dims, window, sinks } = Launch::of(&q, &k, &v, t, offset, scale, window, sinks);
        assert!(o.dtype == q.dtype && d_o.dtype == q.dtype && lse.dtype == DType::F32, "gpu attention backward: o {:?}, dO {:?}, lse {:?} for q {:?}", o.dtype, d_o.dtype, lse.dtype, q.dtype);
        assert!(o.shape() == d_o.shape() && o.shape()[3] == dims.dv && lse.shape().num_elements() == dims.heads * dims.rows, "gpu attention backward: o {:?}, dO {:?}, lse {:?} do not match q {:?}", o.shape(), d_o.shape(), lse.shape(), q.shape());
        let (dq, dk, dvv) = (empty(&q, q.shape(), q.dtype), empty(&k, k.shape(), k.dtype), empty(&v, v.shape(), v.dtype));
        let delta = empty(&q, lse.shape(), DType::F32);
        let (client, dtype) = (q.client.clone(), dtype_to_storage_type(q.dtype));
        let address = [&q, &k, &v, &o, &d_o, &dq, &dk, &dvv].iter().map(|x| x.required_address_type()).max().expect("tensors");
        let (count, cube_dim) = Launch::geometry(&client, dims.heads * dims.rows);
        dq_kernel::launch(
            &client, count, cube_dim, address,
            q.clone().into_tensor_arg(), k.clone().into_tensor_arg(), v.clone().into_tensor_arg(), o.into_tensor_arg(), d_o.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(), delta.clone().into_tensor_arg(), dq.clone().into_tensor_arg(),
            dims.rows, dims.keys, dims.t, dims.offset, dims.scale, window, sinks, dims.d, dims.dv, dtype,
        );
        let (count, cube_dim) = Launch::geometry(&client, dims.heads * dims.keys);
        dkdv_kernel::launch(
            &client, count, cube_dim, address,
            q.into_tensor_arg(), k.into_tensor_arg(), v.into_tensor_arg(), d_o.into_tensor_arg(), lse.into_tensor_arg(), delta.into_tensor_arg(),
            dk.clone().into_tensor_arg(), dvv.clone().into_tensor_arg(),
            dims.rows, dims.keys, dims.t, dims.offset, dims.scale, window, sinks, dims.d, dims.dv, dtype,
        );
        (dq, dk, dvv)
    }
}

/// What the backward needs besides q, k, v (which autodiff checkpoints).
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    nodes: [NodeId; 3],
    o: FloatTensor<B>,
    lse: FloatTensor<B>,
    t: usize,
    offset: usize,
    scale: f32,
    window: usize,
    sinks: usize,
}

#[derive(Debug)]
struct GpuAttentionBackward<B>(std::marker::PhantomData<B>);

impl<B: GpuAttentionBackend> Backward<B, 3> for GpuAttentionBackward<B> {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Saved<B>, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let Saved { nodes, o, lse, t, offset, scale, window, sinks } = ops.state;
        let [q, k, v]: [FloatTensor<B>; 3] = nodes.map(|id| checkpointer.retrieve_node_output(id));
        let d_o = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::gpu_attention_backward(q, k, v, o, lse, d_o, t, offset, scale, window, sinks);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: GpuAttentionBackend, C: CheckpointStrategy> GpuAttentionBackend for Autodiff<B, C> {
    fn gpu_attention_forward(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let backward = GpuAttentionBackward::<B>(std::marker::PhantomData);
        match backward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let nodes = [prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v)];
                let (o, lse) = B::gpu_attention_forward(q.primitive().clone(), k.primitive().clone(), v.primitive().clone(), t, offset, scale, window, sinks);
                let saved = Saved { nodes, o: o.clone(), lse: lse.clone(), t, offset, scale, window, sinks };
                (prep.finish(saved, o), FloatTensor::<Self>::new(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (o, lse) = B::gpu_attention_forward(q.into_primitive(), k.into_primitive(), v.into_primitive(), t, offset, scale, window, sinks);
                (prep.finish(o), FloatTensor::<Self>::new(lse))
            }
        }
    }

    /// Not differentiable itself (no second derivatives): computed on the inner tensors.
    fn gpu_attention_backward(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, o: FloatTensor<Self>, lse: FloatTensor<Self>, d_o: FloatTensor<Self>, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v, o, lse, d_o] = [q, k, v, o, lse, d_o].map(|x| x.into_primitive());
        let (dq, dk, dv) = B::gpu_attention_backward(q, k, v, o, lse, d_o, t, offset, scale, window, sinks);
        (FloatTensor::<Self>::new(dq), FloatTensor::<Self>::new(dk), FloatTensor::<Self>::new(dv))
    }
}

/// Whether `x` takes the fused GPU attention: f32 or f16 data on a CubeCL (wgpu) device, unless
/// the environment sets `ATTNLAB_FUSED=0` (the composed ops then run, to compare or debug).
pub fn gpu_fused<const D: usize>(x: &Tensor<D>) -> bool {
    crate::fusion_enabled() && matches!(x.dtype(), DType::F32 | DType::F16) && matches!(x.device().inner().as_dispatch(), DispatchDevice::Cube(_))
}

/// Fused causal attention on the GPU (see the module docs). q: `[batch, groups, rows, d]`,
/// k: `[batch, groups, keys, d]`, v: `[batch, groups, keys, d_v]` → `[batch, groups, rows, d_v]`.
/// `window = Some((w, sinks))` limits each query to its last w keys plus the first `sinks`.
/// Only for tensors where [`gpu_fused`] is true.
pub fn gpu_causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, t: usize, offset: usize, scale: f32, window: Option<(usize, usize)>) -> Tensor<4> {
    gpu_causal_attention_lse(q, k, v, t, offset, scale, window).0
}

/// [`gpu_causal_attention`] and each row's log-sum-exp `[batch, groups, rows]` (f32). The
/// log-sum-exp is a constant to autodiff: a loss on it gets no gradient through the kernel.
pub fn gpu_causal_attention_lse(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, t: usize, offset: usize, scale: f32, window: Option<(usize, usize)>) -> (Tensor<4>, Tensor<3>) {
    assert!(gpu_fused(&q), "gpu_causal_attention: the fused kernel needs f32 or f16 tensors on a CubeCL (wgpu) device");
    let (window, sinks) = window.unwrap_or((usize::MAX, 0));
    // Checked here, at the call: under fusion the kernels run later, when the queue flushes.
    Dims::of(&q.shape(), &k.shape(), &v.shape(), t, offset, scale).windowed(window, sinks);
    assert!(q.dtype() == k.dtype() && k.dtype() == v.dtype(), "gpu_causal_attention: q, k, v dtypes {:?} {:?} {:?} differ", q.dtype(), k.dtype(), v.dtype());
    let (o, lse) = Dispatch::gpu_attention_forward(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), t, offset, scale, window, sinks);
    (Tensor::from_dispatch(o), Tensor::from_dispatch(lse))
}
