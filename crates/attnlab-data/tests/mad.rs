//! The MAD generators against checkers written from `../shared/MAD.md` alone: each checker
//! parses a sample by the specification's layout (token ranges, pairs, pads, blanks) and
//! derives which positions must be scored and what their targets are, then compares with the
//! generator's, over hundreds of samples of a small vocabulary. Special cases (the probe pair,
//! left padding, at least one real pair, blanks never after the last data token), the
//! memorization map, disjoint splits, epochs and bad parameters are tested by name.
//!
//! Planted, and seen to fail: recall scoring a key's first occurrence as well (the scored-set
//! comparison); noisy recall without the exempt slot (`at_least_one_real_pair`, with
//! frac_noise 0.9); fuzzy recall padding on the right (the pad-prefix check); fuzzy eval keys of
//! random size (`fuzzy_recall_eval_keys_have_k_motif_tokens`); selective copying's blanks
//! allowed after the last data token (the last-before-copy check); memorization's map shuffled
//! by the run's stream (`the_memorization_map_is_fixed`); the epoch shuffle reusing one order
//! for every epoch (`epochs_see_each_example_once_in_a_new_order`).

use std::collections::{HashMap, HashSet};

use attnlab_data::tasks::{
    to_batch, Example, Generator, MadCompression, MadFuzzyRecall, MadMemorization, MadNoisyRecall, MadRecall, MadSelectiveCopy, TaskConfig, TaskData,
};
use attnlab_data::Rng;

fn samples(g: &dyn Generator, seed: u64, n: usize, eval: bool) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| if eval { g.generate_eval(&mut rng) } else { g.generate(&mut rng) }).collect()
}

/// Recall (noisy or not) by the specification: two-token slots; a slot whose first token is
/// noise is all noise; keys `[0, V′/2)`, values `[V′/2, V′)`; a key keeps its first value;
/// the last slot's key occurred before; scored = the value of every pair whose key occurred
/// earlier, at the position that reads the key.
fn check_recall(vocab: usize, noise: usize, seq_len: usize, e: &Example) {
    let usable = (vocab - noise) as u32;
    let (keys, values, noise_range) = (0..usable / 2, usable / 2..usable, usable..vocab as u32);
    assert_eq!(e.tokens.len(), seq_len, "the full sequence");
    assert_eq!(e.len(), seq_len - 1, "the model reads seq_len − 1 tokens");
    assert!(e.targets.is_none() && e.train_all, "plain next-token training on every position");
    let mut bound: HashMap<u32, u32> = HashMap::new();
    let mut scored = Vec::new();
    let mut real_pairs = 0;
    for slot in 0..seq_len / 2 {
        let (k, v) = (e.tokens[2 * slot], e.tokens[2 * slot + 1]);
        if noise_range.contains(&k) {
            assert!(noise_range.contains(&v), "slot {slot}: a noise slot is two noise tokens");
            assert!(slot + 1 < seq_len / 2, "the probe slot is never noise");
            continue;
        }
        assert!(keys.contains(&k) && values.contains(&v), "slot {slot}: ({k}, {v}) outside the key/value ranges");
        real_pairs += 1;
        match bound.get(&k) {
            Some(&first) => {
                assert_eq!(v, first, "slot {slot}: key {k} keeps its first value");
                scored.push(2 * slot);
            }
            None => {
                assert!(slot + 1 < seq_len / 2, "the probe's key occurred before");
                bound.insert(k, v);
            }
        }
    }
    assert!(real_pairs >= 2, "at least one real pair and the probe");
    assert_eq!(e.answers, scored, "scored positions");
    for &p in &e.answers {
        assert!(values.contains(&e.target(p)), "a scored target is a value");
    }
}

#[test]
fn recall_layout_and_scored_positions() {
    for (t, seed) in [(MadRecall { vocab: 16, seq_len: 16 }, 1), (MadRecall { vocab: 8, seq_len: 32 }, 2), (MadRecall::default(), 3)] {
        t.validate().unwrap();
        for e in samples(&t, seed, 300, false) {
            check_recall(t.vocab, 0, t.seq_len, &e);
        }
    }
}

#[test]
fn noisy_recall_layout_and_scored_positions() {
    let t = MadNoisyRecall { vocab: 32, noise_vocab: 16, seq_len: 32, frac_noise: 0.5 };
    t.validate().unwrap();
    let all = samples(&t, 4, 400, false);
    for e in &all {
        check_recall(t.vocab, t.noise_vocab, t.seq_len, e);
    }
    let noise_slots: usize = all.iter().map(|e| e.tokens.chunks(2).filter(|s| s[0] >= 16).count()).sum();
    let rate = noise_slots as f64 / (all.len() * 15) as f64;
    // Of the 15 body slots one is exempt, each other is noise with probability 0.5.
    assert!((rate - 0.5 * 14.0 / 15.0).abs() < 0.02, "noise slots at frac_noise: {rate}");
}

#[test]
fn noisy_recall_has_at_least_one_real_pair() {
    let t = MadNoisyRecall { vocab: 24, noise_vocab: 16, seq_len: 8, frac_noise: 0.95 };
    for e in samples(&t, 5, 2000, false) {
        check_recall(t.vocab, t.noise_vocab, t.seq_len, &e);
    }
}

/// Fuzzy recall by the specification: a pad prefix (pad = V−1) then alternating runs of key
/// tokens `[0, ⌊(V−1)/2⌋)` and value tokens; each run 1..=motif tokens, distinct; a key keeps
/// its value; the last pair's key occurred before; scored = every value token of a pair whose
/// key occurred earlier, at the position before it.
fn check_fuzzy(t: &MadFuzzyRecall, e: &Example, eval: bool) -> Vec<usize> {
    let pad = t.vocab as u32 - 1;
    let half = (t.vocab as u32 - 1) / 2;
    assert_eq!(e.tokens.len(), t.seq_len + 1);
    assert!(e.targets.is_none() && e.train_all);
    let pads = e.tokens.iter().take_while(|&&x| x == pad).count();
    assert!(e.tokens[pads..].iter().all(|&x| x != pad), "padding only on the left");
    let mut runs: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, &x) in e.tokens.iter().enumerate().skip(pads) {
        match runs.last_mut() {
            Some((_, run)) if (run[0] < half) == (x < half) => run.push(x),
            _ => runs.push((i, vec![x])),
        }
    }
    assert!(runs.len() % 2 == 0 && runs[0].1[0] < half, "pairs of a key run and a value run");
    let mut bound: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
    let mut scored = Vec::new();
    let mut key_sizes = Vec::new();
    for (j, pair) in runs.chunks(2).enumerate() {
        let ((_, k), (at, v)) = (&pair[0], &pair[1]);
        for (motif, max) in [(k, t.k_motif), (v, t.v_motif)] {
            assert!(!motif.is_empty() && motif.len() <= max, "motif of {} tokens", motif.len());
            assert_eq!(motif.iter().collect::<HashSet<_>>().len(), motif.len(), "distinct tokens in a motif");
        }
        if eval {
            assert_eq!(k.len(), t.k_motif, "validation and test keys have k_motif tokens");
        }
        key_sizes.push(k.len());
        match bound.get(k) {
            Some(first) => {
                assert_eq!(v, first, "a key keeps its value");
                scored.extend((0..v.len()).map(|i| at + i - 1));
            }
            None => {
                assert!(j + 1 < runs.len() / 2, "the final query's key occurred before");
                bound.insert(k.clone(), v.clone());
            }
        }
    }
    assert_eq!(e.answers, scored, "scored positions");
    key_sizes
}

#[test]
fn fuzzy_recall_layout_padding_and_scored_positions() {
    let t = MadFuzzyRecall { vocab: 16, seq_len: 40, k_motif: 3, v_motif: 3 };
    t.validate().unwrap();
    let mut sizes = HashSet::new();
    let mut padded = 0;
    for e in samples(&t, 6, 500, false) {
        sizes.extend(check_fuzzy(&t, &e, false));
        padded += usize::from(e.tokens[0] == t.pad());
    }
    assert_eq!(sizes, HashSet::from([1, 2, 3]), "training keys of every size");
    assert!(padded > 0, "some sequences are left-padded");
}

#[test]
fn fuzzy_recall_eval_keys_have_k_motif_tokens() {
    let t = MadFuzzyRecall::default();
    for e in samples(&t, 7, 200, true) {
        check_fuzzy(&t, &e, true);
    }
    let data = TaskData::new(TaskConfig::MadFuzzyRecall(MadFuzzyRecall { seq_len: 40, ..t }), 64).unwrap();
    for e in data.val.iter().chain(data.test.iter()) {
        check_fuzzy(&MadFuzzyRecall { seq_len: 40, ..MadFuzzyRecall::default() }, e, true);
    }
}

#[test]
fn selective_copy_layout_and_targets() {
    let t = MadSelectiveCopy { vocab: 16, seq_len: 40, num_tokens: 8 };
    t.validate().unwrap();
    let (blank, copy) = (14, 15);
    for e in samples(&t, 8, 500, false) {
        assert_eq!(e.tokens.len(), 40);
        let targets = e.targets.as_ref().expect("explicit targets");
        let c = 40 - 8 - 1;
        assert_eq!(e.tokens[c], copy, "the copy token before the last n positions");
        assert!(e.tokens[c + 1..].iter().all(|&x| x == blank), "blanks after the copy token");
        let data: Vec<u32> = e.tokens[..c].iter().copied().filter(|&x| x != blank).collect();
        assert_eq!(data.len(), 8);
        assert!(data.iter().all(|&x| x < 14));
        assert_ne!(e.tokens[c - 1], blank, "blanks never after the last data token");
        assert_eq!(&targets[c + 1..], &data[..], "the data tokens, in order, at the last n positions");
        assert_eq!(e.answers, (c + 1..40).collect::<Vec<_>>());
        assert!(!e.train_all);
    }
}

#[test]
fn compression_targets_are_the_inputs() {
    let t = MadCompression { vocab: 8, seq_len: 12 };
    for e in samples(&t, 9, 200, false) {
        assert_eq!(e.tokens.len(), 12);
        assert_eq!(e.tokens[11], 7, "the compression token last");
        assert!(e.tokens[..11].iter().all(|&x| x < 7));
        assert_eq!(e.targets.as_deref(), Some(&e.tokens[..]));
        assert_eq!(e.answers, (0..12).collect::<Vec<_>>(), "every position scored");
    }
}

#[test]
fn the_memorization_map_is_fixed() {
    let t = MadMemorization { vocab: 64, seq_len: 16, map_seed: 12345 };
    let map = t.map();
    assert_ne!(map, MadMemorization { map_seed: 1, ..t.clone() }.map(), "another map_seed, another map");
    // One-to-one from keys [0, 31) into values [31, 63).
    assert_eq!(map.len(), 31);
    assert!(map.iter().all(|&v| (31..63).contains(&v)));
    assert_eq!(map.iter().collect::<HashSet<_>>().len(), 31);
    let data = TaskData::new(TaskConfig::MadMemorization(t.clone()), 32).unwrap().with_train_samples(64, 3);
    let other_run = TaskData::new(TaskConfig::MadMemorization(t.clone()), 32).unwrap().with_train_samples(64, 4);
    let train = (0..64).map(|i| data.train_set_example(i)).chain((0..64).map(|i| other_run.train_set_example(i)));
    for e in data.val.iter().chain(data.test.iter()).cloned().chain(train) {
        let targets = e.targets.as_ref().unwrap();
        for pair in 0..8 {
            let (k, ins) = (e.tokens[2 * pair], e.tokens[2 * pair + 1]);
            assert!(k < 31 && ins == 63, "inputs are keys and the insert token");
            assert_eq!(targets[2 * pair + 1], map[k as usize], "the key's value, in every split and run");
        }
        assert!(e.tokens.iter().all(|x| !(31..63).contains(x)), "values never in the inputs");
        assert_eq!(e.answers, (1..16).step_by(2).collect::<Vec<_>>());
    }
}

#[test]
fn train_val_and_test_are_disjoint() {
    for config in [
        TaskConfig::MadRecall(MadRecall { vocab: 8, seq_len: 8 }),
        TaskConfig::MadFuzzyRecall(MadFuzzyRecall { vocab: 16, seq_len: 16, k_motif: 2, v_motif: 2 }),
        TaskConfig::MadSelectiveCopy(MadSelectiveCopy { vocab: 6, seq_len: 12, num_tokens: 3 }),
        TaskConfig::MadCompression(MadCompression { vocab: 4, seq_len: 8 }),
    ] {
        let data = TaskData::new(config.clone(), 200).unwrap().with_train_samples(2000, 1);
        let val: HashSet<&Vec<u32>> = data.val.iter().map(|e| &e.tokens).collect();
        let test: HashSet<&Vec<u32>> = data.test.iter().map(|e| &e.tokens).collect();
        assert!(val.is_disjoint(&test), "{}: val and test overlap", config.kind());
        for i in 0..2000 {
            let e = data.train_set_example(i);
            assert!(!val.contains(&e.tokens) && !test.contains(&e.tokens), "{}: training example {i} is held out", config.kind());
        }
    }
}

#[test]
fn epochs_see_each_example_once_in_a_new_order() {
    let data = TaskData::new(TaskConfig::MadCompression(MadCompression::default()), 16).unwrap().with_train_samples(50, 7);
    let set = data.train_set.unwrap();
    assert_eq!(set.batches_per_epoch(16), 4);
    let epoch = |e: usize| -> Vec<usize> { (0..4).flat_map(|j| set.batch_indices(4 * e + j, 16)).collect() };
    let (first, second) = (epoch(0), epoch(1));
    for order in [&first, &second] {
        let mut sorted = order.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "each example once per epoch");
    }
    assert_ne!(first, second, "reshuffled per epoch");
    assert_eq!(set.batch_indices(3, 16).len(), 2, "the last batch of an epoch holds the rest");
    assert_eq!(data.train_set_example(5), data.train_set_example(5), "example i is fixed");
    // The training batch masks every position for recall (plain next-token training), the
    // evaluation batch only the scored values.
    let recall = TaskData::new(TaskConfig::MadRecall(MadRecall { vocab: 16, seq_len: 16 }), 8).unwrap();
    let e = recall.val[0].clone();
    let mask = |training| to_batch(std::slice::from_ref(&e), training).loss_mask.unwrap();
    assert!(mask(true).iter().all(|&m| m == 1.0));
    let scored: Vec<usize> = mask(false).iter().enumerate().filter(|(_, &m)| m == 1.0).map(|(i, _)| i).collect();
    assert_eq!(scored, e.answers);
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let field = |g: &dyn Generator| g.validate().unwrap_err().field;
    assert_eq!(field(&MadRecall { vocab: 16, seq_len: 127 }), "seq_len", "odd seq_len");
    assert_eq!(field(&MadNoisyRecall { vocab: 17, noise_vocab: 16, ..MadNoisyRecall::default() }), "vocab", "no room for a key and a value");
    assert_eq!(field(&MadNoisyRecall { frac_noise: 1.0, ..MadNoisyRecall::default() }), "frac_noise");
    assert_eq!(field(&MadSelectiveCopy { vocab: 16, seq_len: 33, num_tokens: 16 }), "seq_len", "seq_len ≤ 2n + 1");
    assert!(MadSelectiveCopy { vocab: 16, seq_len: 34, num_tokens: 16 }.validate().is_ok());
    assert_eq!(field(&MadFuzzyRecall { vocab: 6, ..MadFuzzyRecall::default() }), "vocab", "keys of 3 distinct tokens need 3 key tokens");
    assert_eq!(field(&MadFuzzyRecall { vocab: 9, k_motif: 3, v_motif: 5, ..MadFuzzyRecall::default() }), "vocab", "values of 5 distinct tokens");
    assert_eq!(field(&MadMemorization { vocab: 2, ..MadMemorization::default() }), "vocab");
    assert_eq!(field(&MadCompression { vocab: 16, seq_len: 1 }), "seq_len");
}
