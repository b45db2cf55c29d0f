//! Learning rate: linear warm-up then cosine decay, as nanoGPT's `get_lr`.
//!
//! `lr(s) = lr_max·(s+1)/warmup` for s < warmup; then with `p = (s − warmup)/(steps − warmup)`,
//! `lr(s) = lr_min + ½(1 + cos πp)(lr_max − lr_min)`. A closed form of the step, so a resumed
//! run needs no scheduler state.

pub fn lr_at(step: usize, steps: usize, warmup: usize, lr_max: f64, lr_min: f64) -> f64 {
    if step < warmup {
        return lr_max * (step + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f64 / span as f64).min(1.0);
    lr_min + 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) * (lr_max - lr_min)
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warmup_then_cosine_to_min() {
        assert!((lr_at(0, 100, 10, 1e-3, 1e-4) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1e-3, 1e-4) - 1e-3).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1e-3, 1e-4) - 1e-3).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1e-3, 1e-4) - 5.5e-4).abs() < 1e-9);
        assert!((lr_at(100, 100, 10, 1e-3, 1e-4) - 1e-4).abs() < 1e-12);
    }
}
