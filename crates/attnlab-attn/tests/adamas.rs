//! Adamas' codes and the key selectors against the rules written out the slow way: the
//! Hadamard transform as an explicit Sylvester matrix product, codes by comparison with the
//! three thresholds, L1 on unpacked codes, selection by a full sort of every key's distance.
//!
//! Mutations planted and seen to fail:
//! - the unnormalised transform (no 1/√n) → `fast_hadamard_is_the_orthonormal_sylvester_matrix`;
//! - boundary values to the upper bucket (`x ≥ −τ`) → `codes_put_boundaries_in_the_lower_bucket`;
//! - the CUDA kernel's XOR/popcount estimate instead of L1 →
//!   `packed_l1_equals_l1_of_the_codes` (codes 1 and 2 at distance 3);
//! - ties to the oldest key → `selection_is_a_sort_of_all_distances_with_ties_to_the_newest`;
//! - the current token replaced by key 0 → `the_current_token_is_always_attended_and_short_contexts_are_dense`
//!   and the selection tests.

use attnlab_attn::adamas::{code, hadamard, l1_packed, pack};
use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::key_selection::{attend, select, HostCache, Selector};

/// The Sylvester–Hadamard matrix of order n (±1 entries).
fn sylvester(n: usize) -> Vec<Vec<f64>> {
    let mut h = vec![vec![1.0]];
    while h.len() < n {
        let m = h.len();
        let mut next = vec![vec![0.0; 2 * m]; 2 * m];
        for i in 0..m {
            for j in 0..m {
                next[i][j] = h[i][j];
                next[i][j + m] = h[i][j];
                next[i + m][j] = h[i][j];
                next[i + m][j + m] = -h[i][j];
            }
        }
        h = next;
    }
    h
}

/// A deterministic pseudo-random sequence in (−a, a).
fn values(n: usize, seed: u64, a: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

#[test]
fn fast_hadamard_is_the_orthonormal_sylvester_matrix() {
    for n in [4, 8, 32] {
        let x = values(n, n as u64, 3.0);
        let h = sylvester(n);
        let want: Vec<f64> = (0..n).map(|i| (0..n).map(|j| h[i][j] * f64::from(x[j])).sum::<f64>() / (n as f64).sqrt()).collect();
        let mut got = x.clone();
        hadamard(&mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()), "n {n}: {g} vs {w}");
        }
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm(&got) - norm(&x)).abs() < 1e-5 * norm(&x), "n {n}: the norm is preserved");
    }
}

#[test]
fn codes_put_boundaries_in_the_lower_bucket() {
    let tau = 0.75;
    let cases = [(-2.0, 0), (-0.75, 0), (-0.7, 1), (0.0, 1), (0.1, 2), (0.75, 2), (0.76, 3), (9.0, 3)];
    for (x, want) in cases {
        assert_eq!(code(x, tau), want, "code({x})");
    }
}

#[test]
fn packed_l1_equals_l1_of_the_codes() {
    assert_eq!(l1_packed(&pack(&[1, 0, 0, 0]), &pack(&[2, 0, 0, 0])), 1, "codes 1 and 2 are at distance 1");
    for seed in 0..20 {
        let n = 32;
        let a: Vec<u8> = values(n, seed, 2.0).iter().map(|v| (v.abs() * 2.0) as u8 % 4).collect();
        let b: Vec<u8> = values(n, seed + 100, 2.0).iter().map(|v| (v.abs() * 2.0) as u8 % 4).collect();
        let want: u32 = a.iter().zip(&b).map(|(x, y)| u32::from(x.abs_diff(*y))).sum();
        assert_eq!(l1_packed(&pack(&a), &pack(&b)), want);
    }
}

/// A host cache of one sequence and one KV head holding `t` keys of dimension 8.
fn cache(t: usize, tau: f32) -> HostCache {
    let dev = Device::flex();
    let d = 8;
    let k = Tensor::<4>::from_data(TensorData::new(values(t * d, 7, 2.0), [1, 1, t, d]), &dev);
    let v = Tensor::<4>::from_data(TensorData::new(values(t * d, 8, 1.0), [1, 1, t, d]), &dev);
    let mut c = HostCache::new(1, 1, d, tau);
    c.push(k, v);
    c
}

/// Codes of x by the explicit matrix and the threshold comparisons.
fn slow_codes(x: &[f32], tau: f32) -> Vec<u8> {
    let n = x.len();
    let h = sylvester(n);
    (0..n)
        .map(|i| {
            let y = (0..n).map(|j| h[i][j] * f64::from(x[j])).sum::<f64>() / (n as f64).sqrt();
            [-tau, 0.0, tau].iter().filter(|&&b| y > f64::from(b)).count() as u8
        })
        .collect()
}

#[test]
fn cached_codes_are_the_codes_of_the_cached_keys() {
    let c = cache(30, 0.6);
    for j in 0..30 {
        assert_eq!(c.code(0, j), pack(&slow_codes(c.key(0, j), 0.6)).as_slice(), "key {j}");
    }
}

#[test]
fn selection_is_a_sort_of_all_distances_with_ties_to_the_newest() {
    let (t, budget) = (40, 9);
    let c = cache(t, 0.6);
    for seed in 0..10 {
        let q = values(8, 50 + seed, 2.0);
        let qc = slow_codes(&q, 0.6);
        let mut order: Vec<(u32, usize)> = (0..t - 1)
            .map(|j| (slow_codes(c.key(0, j), 0.6).iter().zip(&qc).map(|(a, b)| u32::from(a.abs_diff(*b))).sum(), j))
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut want: Vec<usize> = order.iter().take(budget - 1).map(|x| x.1).collect();
        want.push(t - 1);
        want.sort_unstable();
        assert_eq!(select(&Selector::Adamas { budget }, &c, 0, &q), want, "query {seed}");
        // The oracle: the largest true scores.
        let mut scores: Vec<(f32, usize)> = (0..t - 1).map(|j| (c.key(0, j).iter().zip(&q).map(|(a, b)| a * b).sum(), j)).collect();
        scores.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut oracle: Vec<usize> = scores.iter().take(budget - 1).map(|x| x.1).collect();
        oracle.push(t - 1);
        oracle.sort_unstable();
        assert_eq!(select(&Selector::Oracle { budget }, &c, 0, &q), oracle);
    }
}

#[test]
fn the_current_token_is_always_attended_and_short_contexts_are_dense() {
    let c = cache(20, 0.6);
    let q = values(8, 9, 2.0);
    for selector in [Selector::Adamas { budget: 4 }, Selector::SinkWindow { budget: 4, sinks: 2 }, Selector::Pages { budget: 6, page: 3 }, Selector::Oracle { budget: 4 }] {
        let keys = select(&selector, &c, 0, &q);
        assert!(keys.contains(&19), "{selector:?}: {keys:?}");
        assert!(keys.len() <= selector.budget().unwrap(), "{selector:?}: {keys:?} over budget");
    }
    assert_eq!(select(&Selector::SinkWindow { budget: 5, sinks: 2 }, &c, 0, &q), vec![0, 1, 17, 18, 19]);
    // t ≤ budget: exactly the dense attention.
    let all: Vec<usize> = (0..20).collect();
    for selector in [Selector::Adamas { budget: 20 }, Selector::Pages { budget: 32, page: 4 }] {
        let keys = select(&selector, &c, 0, &q);
        assert_eq!(keys, all);
        assert_eq!(attend(&c, 0, &q, &keys), attend(&c, 0, &q, &all));
    }
}

#[test]
fn pages_are_ranked_by_their_upper_bound() {
    let c = cache(13, 0.6);
    let q = values(8, 21, 2.0);
    // Pages of 4 over the 12 earlier keys: bounds by hand; budget 9 = the current + two pages.
    let bound = |p: usize| -> f32 {
        (0..8)
            .map(|i| {
                let col: Vec<f32> = (p * 4..p * 4 + 4).map(|j| c.key(0, j)[i]).collect();
                let (lo, hi) = (col.iter().cloned().fold(f32::INFINITY, f32::min), col.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
                (q[i] * lo).max(q[i] * hi)
            })
            .sum()
    };
    let mut pages: Vec<usize> = (0..3).collect();
    pages.sort_by(|a, b| bound(*b).total_cmp(&bound(*a)));
    let mut want: Vec<usize> = pages[..2].iter().flat_map(|&p| p * 4..p * 4 + 4).collect();
    want.push(12);
    want.sort_unstable();
    assert_eq!(select(&Selector::Pages { budget: 9, page: 4 }, &c, 0, &q), want);
    // Budget 7: the best page, then the 2 most recent keys of the second best.
    let mut want: Vec<usize> = (pages[0] * 4..pages[0] * 4 + 4).chain([pages[1] * 4 + 2, pages[1] * 4 + 3, 12]).collect();
    want.sort_unstable();
    assert_eq!(select(&Selector::Pages { budget: 7, page: 4 }, &c, 0, &q), want);
}
