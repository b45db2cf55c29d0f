//! Mean, sample standard deviation, Student-t confidence intervals over seeds (one kind of
//! spread, used everywhere in reports: the 95% interval of a mean, and Welch's interval of a
//! difference of means) and the Wilson interval of a success count.

use statrs::distribution::{ContinuousCDF, StudentsT};

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

/// The `p` quantile of Student's t with `df` degrees of freedom (statrs); NaN unless df is
/// finite and > 0.
pub fn t_quantile(df: f64, p: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |t| t.inverse_cdf(p))
}

/// Half-width of the 95% confidence interval of the mean of `xs` (Student's t, n − 1 degrees
/// of freedom); `None` for fewer than two values (one seed gives no interval).
pub fn ci95(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    (n >= 2 && xs.iter().all(|x| x.is_finite())).then(|| t_quantile((n - 1) as f64, 0.975) * std(xs) / (n as f64).sqrt())
}

/// Welch's 95% interval of mean(a) − mean(b): `(difference, half-width)`; `None` unless both
/// have at least two values. With no spread in either (every seed equal) the half-width is 0.
pub fn welch95(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 || !a.iter().chain(b).all(|x| x.is_finite()) {
        return None;
    }
    let (va, vb) = (std(a).powi(2) / a.len() as f64, std(b).powi(2) / b.len() as f64);
    let d = mean(a) - mean(b);
    if va + vb == 0.0 {
        // Every seed equal on both sides (common for quantised accuracies): no spread to
        // judge a difference against, so no interval rather than a point that "excludes 0".
        return None;
    }
    let df = (va + vb).powi(2) / (va.powi(2) / (a.len() - 1) as f64 + vb.powi(2) / (b.len() - 1) as f64);
    let t = t_quantile(df, 0.975);
    t.is_finite().then(|| (d, t * (va + vb).sqrt()))
}
