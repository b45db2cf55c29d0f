//! Mean, sample standard deviation and the Wilson interval of a success count.

/// Mean of `xs` (NaN when empty).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1); 0 for a single value.
pub fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// 95% Wilson score interval of a binomial proportion with `k` successes in `n` trials
/// (`(0, 1)` for n = 0). Unlike the normal approximation it stays inside [0, 1] and is not
/// empty at k = 0 or k = n.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054);
    let centre = (k + z * z / 2.0) / (n + z * z);
    let half = z / (n + z * z) * (k * (n - k) / n + z * z / 4.0).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}
