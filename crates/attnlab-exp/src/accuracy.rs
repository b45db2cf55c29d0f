//! Accuracy over scored positions: micro (the fraction of scored tokens predicted right) and
//! macro, as torchmetrics' `MulticlassAccuracy` computes it by default (`average = "macro"`),
//! which MAD reports: per class c, recall `tp_c / (tp_c + fn_c)`; a class that is predicted
//! but never a target has `tp + fn = 0` and counts as 0; classes that are neither predicted
//! nor a target are left out of the mean.

use std::collections::BTreeMap;

/// Per-class counts of (prediction, target) pairs.
#[derive(Debug, Clone, Default)]
pub struct Confusion {
    /// class → (true positives, false positives, false negatives)
    classes: BTreeMap<i64, (usize, usize, usize)>,
    right: usize,
    total: usize,
}

impl Confusion {
    /// Counts one scored position.
    pub fn add(&mut self, predicted: i64, target: i64) {
        self.total += 1;
        if predicted == target {
            self.right += 1;
            self.classes.entry(target).or_default().0 += 1;
        } else {
            self.classes.entry(predicted).or_default().1 += 1;
            self.classes.entry(target).or_default().2 += 1;
        }
    }

    /// Scored positions.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Right / scored (`None` when nothing was scored).
    pub fn micro(&self) -> Option<f64> {
        (self.total > 0).then(|| self.right as f64 / self.total as f64)
    }

    /// The mean per-class recall over classes seen as a prediction or a target.
    pub fn macro_accuracy(&self) -> Option<f64> {
        if self.classes.is_empty() {
            return None;
        }
        let recall = |&(tp, _, fn_): &(usize, usize, usize)| if tp + fn_ == 0 { 0.0 } else { tp as f64 / (tp + fn_) as f64 };
        Some(self.classes.values().map(recall).sum::<f64>() / self.classes.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::Confusion;

    /// A hand computation on three classes. Pairs (predicted, target):
    /// (0,0) (0,0) (1,0) (1,1) (2,1) (2,1) — class 0: 2 of 3 right; class 1: 1 of 3 right;
    /// class 2 is predicted twice but never a target: recall 0. Macro = (2/3 + 1/3 + 0) / 3 =
    /// 1/3; micro = 3/6. Planted, and seen to fail: leaving predicted-only classes out (macro
    /// 1/2), and averaging precision instead of recall (macro (1 + 1/2 + 0)/3 = 1/2).
    #[test]
    fn macro_accuracy_matches_a_hand_computation() {
        let mut c = Confusion::default();
        for (p, y) in [(0, 0), (0, 0), (1, 0), (1, 1), (2, 1), (2, 1)] {
            c.add(p, y);
        }
        assert!((c.macro_accuracy().unwrap() - 1.0 / 3.0).abs() < 1e-12, "{:?}", c.macro_accuracy());
        assert_eq!(c.micro(), Some(0.5));
        // Classes neither predicted nor targeted do not exist for the mean: all right → 1.
        let mut all = Confusion::default();
        for y in [3, 5, 5] {
            all.add(y, y);
        }
        assert_eq!(all.macro_accuracy(), Some(1.0));
        assert_eq!(Confusion::default().macro_accuracy(), None);
    }
}
