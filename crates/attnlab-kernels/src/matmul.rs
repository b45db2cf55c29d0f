//! A bounds-checked front for the `gemm` crate (the matrix kernel burn-flex itself uses), for
//! the small per-head products inside fused kernels.

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows × cols` with rows `stride` apart.
    pub fn rows(data: &'a [f32], stride: usize) -> Self {
        Self { data, rs: stride, cs: 1 }
    }

    /// The transpose of a row-major matrix whose rows are `stride` apart.
    pub fn transposed(data: &'a [f32], stride: usize) -> Self {
        Self { data, rs: 1, cs: stride }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// Products at least this large (m·n·k) use both cores; below, threading costs more than it
/// saves (the threshold burn-flex uses).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `dst[m × n] (row-major, contiguous) = A[m × k] · B[k × n]`, or `+=` when `accumulate`.
/// Single-threaded: for the small per-head products that callers parallelise themselves.
pub fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, a: View, b: View, accumulate: bool) {
    assert!(dst.len() >= m * n, "matmul: destination too small for {m}×{n}");
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `dst` holds m·n initialised elements and is exclusively borrowed.
    unsafe { gemm_raw(dst.as_mut_ptr(), m, n, k, a, b, accumulate, gemm::Parallelism::None) }
}

/// `A[m × k] · B[k × n]` as a new row-major vector, threaded when the product is big enough to
/// pay for it. The output is not zero-filled first: gemm writes every element.
pub fn product(m: usize, n: usize, k: usize, a: View, b: View) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let parallelism = if m * n * k >= PARALLEL_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the buffer has room for m·n elements; gemm with `accumulate = false` only writes it.
    unsafe {
        gemm_raw(out.spare_capacity_mut().as_mut_ptr().cast::<f32>(), m, n, k, a, b, false, parallelism);
        out.set_len(m * n);
    }
    out
}

/// # Safety
/// `dst` must be valid for m·n writes (and reads when `accumulate`), and not alias a or b.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(dst: *mut f32, m: usize, n: usize, k: usize, a: View, b: View, accumulate: bool, parallelism: gemm::Parallelism) {
    assert!(a.fits(m, k) && b.fits(k, n), "matmul: operand too small for {m}×{k}·{k}×{n}");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assert keeps every operand index inside its slice; the caller vouches for dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
