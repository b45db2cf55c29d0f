//! f64 token-by-token references of the recurrent family (the rules written out the slow way).

/// `x σ(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln(1 + eˣ)`.
pub fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `v / √(Σv² + 1e-6)`.
pub fn l2(v: &[f64]) -> Vec<f64> {
    let n = (v.iter().map(|x| x * x).sum::<f64>() + 1e-6).sqrt();
    v.iter().map(|x| x / n).collect()
}

/// One head's inputs: q, k `[t][d_k]`, v `[t][d_v]`, β `[t]` (`None`: additive rule), per-channel
/// log-decays g `[t][d_k]` (`None`: no decay). The caller scales q.
#[derive(Clone, Debug)]
pub struct HeadSeq {
    pub q: Vec<Vec<f64>>,
    pub k: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
    pub beta: Option<Vec<f64>>,
    pub g: Option<Vec<Vec<f64>>>,
}

/// The rule token by token from S = 0 (`d_k × d_v`): decay the key rows of S by e^{g_t}, then
/// `v' = β (v − Sᵀk)` (delta) or `v' = v` (additive), `S += k v'ᵀ`, `o = Sᵀ q`. With
/// `memoryless`, S is reset to zero before every token (to measure how much the output owes to
/// the state). Returns (o `[t][d_v]`, final S).
pub fn rule_loop(seq: &HeadSeq, memoryless: bool) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (dk, dv) = (seq.k[0].len(), seq.v[0].len());
    let mut s = vec![vec![0.0; dv]; dk];
    let mut out = Vec::new();
    for t in 0..seq.q.len() {
        if memoryless {
            s = vec![vec![0.0; dv]; dk];
        }
        if let Some(g) = &seq.g {
            for (c, row) in s.iter_mut().enumerate() {
                row.iter_mut().for_each(|x| *x *= g[t][c].exp());
            }
        }
        let k = &seq.k[t];
        let v_new: Vec<f64> = match &seq.beta {
            Some(beta) => (0..dv).map(|j| beta[t] * (seq.v[t][j] - (0..dk).map(|c| s[c][j] * k[c]).sum::<f64>())).collect(),
            None => seq.v[t].clone(),
        };
        for c in 0..dk {
            for j in 0..dv {
                s[c][j] += k[c] * v_new[j];
            }
        }
        out.push((0..dv).map(|j| (0..dk).map(|c| s[c][j] * seq.q[t][c]).sum()).collect());
    }
    (out, s)
}

/// Depthwise causal conv of `pre` `[t][channels]` with weights `w` `[channels, kernel]` (tap
/// kernel − 1 on the current input), zeros before the sequence.
pub fn short_conv(pre: &[Vec<f64>], w: &[f64], kernel: usize) -> Vec<Vec<f64>> {
    let ch = pre[0].len();
    (0..pre.len())
        .map(|t| {
            (0..ch)
                .map(|c| (0..kernel).filter(|j| t + j + 1 >= kernel).map(|j| w[c * kernel + j] * pre[t + j + 1 - kernel][c]).sum())
                .collect()
        })
        .collect()
}

/// Rows `[t][width]` of a row-major matrix.
pub fn rows(m: &[f64], t: usize, width: usize) -> Vec<Vec<f64>> {
    (0..t).map(|p| m[p * width..(p + 1) * width].to_vec()).collect()
}

/// Columns `from..from + len` of every row.
pub fn take(rows: &[Vec<f64>], from: usize, len: usize) -> Vec<Vec<f64>> {
    rows.iter().map(|r| r[from..from + len].to_vec()).collect()
}
