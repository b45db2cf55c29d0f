//! Task generators: a brute-force checker agrees with every answer, seeds reproduce, train and
//! test sets are disjoint, bad parameters are rejected by name.

use attnlab_data::tasks::{selective_copy, Example, Generator, Mqar, Needle, SelectiveCopy, TaskConfig, TaskData};
use attnlab_data::Rng;

fn examples(g: &dyn Generator, seed: u64, n: usize) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| g.generate(&mut rng)).collect()
}

/// MQAR by brute force: the answer at a query key is the value that followed the same key in
/// the key–value section (the first `2·num_pairs` tokens), and that key occurs there once.
fn check_mqar(t: &Mqar, e: &Example) {
    assert_eq!(e.tokens.len(), t.seq_len + 1);
    assert_eq!(e.answers.len(), t.num_queries);
    let section = &e.tokens[..2 * t.num_pairs];
    for &p in &e.answers {
        assert!(p >= 2 * t.num_pairs && p < t.seq_len, "query at {p} outside the query region");
        let key = e.tokens[p];
        let hits: Vec<usize> = (0..t.num_pairs).filter(|i| section[2 * i] == key).collect();
        assert_eq!(hits.len(), 1, "key {key} must occur exactly once among the pairs");
        assert_eq!(e.tokens[p + 1], section[2 * hits[0] + 1], "answer at {p}");
    }
    let key_range = 1..=(t.vocab as u32 - 1) / 2;
    assert!((0..t.num_pairs).all(|i| key_range.contains(&section[2 * i]) && !key_range.contains(&section[2 * i + 1]) && section[2 * i + 1] < t.vocab as u32));
    // Outside pairs and queries, only filler.
    let used: Vec<usize> = e.answers.iter().flat_map(|&p| [p, p + 1]).collect();
    for p in 2 * t.num_pairs..t.seq_len {
        if !used.contains(&p) {
            assert_eq!(e.tokens[p], 0, "filler expected at {p}");
        }
    }
}

#[test]
fn mqar_answers_agree_with_a_brute_force_lookup() {
    for t in [Mqar::default(), Mqar { vocab: 32, seq_len: 40, num_pairs: 10, num_queries: 10, power_a: 0.01 }, Mqar { vocab: 300, seq_len: 256, num_pairs: 32, num_queries: 16, power_a: 0.5 }] {
        t.validate().unwrap();
        for e in examples(&t, 3, 300) {
            check_mqar(&t, &e);
        }
    }
}

#[test]
fn mqar_queries_cluster_near_the_pairs_by_the_power_law() {
    let t = Mqar { vocab: 64, seq_len: 256, num_pairs: 4, num_queries: 1, power_a: 0.01 };
    let slots: Vec<usize> = examples(&t, 1, 2000).iter().map(|e| (e.answers[0] - 8) / 2).collect();
    let near = slots.iter().filter(|&&s| s < 10).count();
    let far = slots.iter().filter(|&&s| s >= 100).count();
    // With weights ∝ i^(−0.99) over 124 slots, ~55% fall in the first 10 and ~4% at ≥ 100.
    assert!(near > 900 && far < 200, "near {near}, far {far}");
}

#[test]
fn selective_copy_answers_are_the_content_tokens_in_order() {
    let t = SelectiveCopy { vocab: 10, seq_len: 30, num_tokens: 6 };
    for e in examples(&t, 5, 300) {
        let content: Vec<u32> = e.tokens[..30].iter().copied().filter(|&x| x != selective_copy::NOISE).collect();
        assert_eq!(content.len(), 6);
        assert_eq!(e.tokens[30], selective_copy::SEPARATOR);
        let answers: Vec<u32> = e.answers.iter().map(|&p| e.tokens[p + 1]).collect();
        assert_eq!(answers, content);
        assert_eq!(e.tokens.len(), t.len() + 1);
    }
}

fn needle() -> Needle {
    let text: Vec<u32> = (0..5000u32).map(|i| (i * 7 + i / 13) % 20).collect();
    Needle { seq_len: 48, depth_buckets: 4, text, text_vocab: 20 }
}

#[test]
fn needle_answer_is_the_value_after_the_needle_key() {
    let t = needle();
    t.validate().unwrap();
    let mut buckets = [0usize; 4];
    for e in examples(&t, 9, 400) {
        assert_eq!(e.tokens.len(), 49);
        let needles: Vec<usize> = (0..48).filter(|&i| e.tokens[i] == t.needle_id()).collect();
        assert_eq!(needles.len(), 1);
        let [p] = e.answers[..] else { panic!("one answer") };
        assert_eq!(e.tokens[p - 1], t.query_id());
        assert_eq!(e.tokens[p], e.tokens[needles[0] + 1], "the query repeats the needle's key");
        assert_eq!(e.tokens[p + 1], e.tokens[needles[0] + 2], "the answer is the needle's value");
        let depth = needles[0] as f64 / 44.0;
        assert_eq!(e.bucket, Some(((depth * 4.0) as usize).min(3)), "bucket of depth {depth}");
        buckets[e.bucket.unwrap()] += 1;
    }
    assert!(buckets.iter().all(|&n| n > 60), "depths cover every bucket: {buckets:?}");
}

#[test]
fn seeds_reproduce_and_differ() {
    let t = Mqar::default();
    assert_eq!(examples(&t, 4, 20), examples(&t, 4, 20));
    assert_ne!(examples(&t, 4, 20), examples(&t, 5, 20));
}

/// Planted: generating validation without rejecting test examples, and a training stream that
/// rejects only the test set, each fail here.
#[test]
fn train_val_and_test_are_disjoint() {
    // A tiny space (one content token at one of 12 positions: 12 distinct sequences) forces
    // collisions, which must be rejected.
    let config = TaskConfig::SelectiveCopy(SelectiveCopy { vocab: 3, seq_len: 12, num_tokens: 1 });
    let data = TaskData::new(config, 4).unwrap();
    assert_eq!((data.val.len(), data.test.len()), (4, 4));
    assert!(!data.val.iter().any(|v| data.test.iter().any(|t| t.tokens == v.tokens)), "validation overlaps test");
    let mut rng = Rng::new(1);
    for _ in 0..500 {
        let e = data.train_example(&mut rng);
        assert!(!data.test.iter().any(|t| t.tokens == e.tokens), "training example in the test set");
        assert!(!data.val.iter().any(|t| t.tokens == e.tokens), "training example in the validation set");
    }
}

#[test]
fn a_task_too_small_for_disjoint_sets_is_an_error_naming_it() {
    // 4 distinct sequences: 400 test draws cover them all, so validation cannot be disjoint.
    let config = TaskConfig::SelectiveCopy(SelectiveCopy { vocab: 3, seq_len: 4, num_tokens: 1 });
    let err = TaskData::new(config.clone(), 400).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    // 2 test + 2 validation examples that happen to use up the 4 sequences leave nothing to
    // train on: also an error, not an endless training loop. Search for such a size.
    let exhausted = (1..=4).find_map(|n| TaskData::new(config.clone(), n).err());
    assert!(exhausted.is_some_and(|e| e.to_string().contains("too small")));
}

#[test]
fn bad_parameters_name_the_field() {
    let cases: Vec<(Box<dyn Generator>, &str)> = vec![
        (Box::new(Mqar { num_pairs: 40, ..Mqar::default() }), "num_pairs"),
        (Box::new(Mqar { num_queries: 9, ..Mqar::default() }), "num_queries"),
        (Box::new(Mqar { seq_len: 20, ..Mqar::default() }), "seq_len"),
        (Box::new(Mqar { vocab: 2, ..Mqar::default() }), "vocab"),
        (Box::new(Mqar { power_a: 0.0, ..Mqar::default() }), "power_a"),
        (Box::new(SelectiveCopy { num_tokens: 0, ..SelectiveCopy::default() }), "num_tokens"),
        (Box::new(Needle { seq_len: 4, ..needle() }), "seq_len"),
        (Box::new(Needle { depth_buckets: 0, ..needle() }), "depth_buckets"),
    ];
    for (g, field) in cases {
        assert_eq!(g.validate().unwrap_err().field, field);
    }
}

/// Find the block by brute force: the answers predict the letters after the query, those
/// letters are one block of the context, it is the only block holding every query letter, and
/// blocks are `block_len` distinct letters between separators. Planted and seen to fail: the
/// distractor filter dropped (a second block may hold the query), answers shifted by one.
#[test]
fn find_block_answer_is_the_only_block_holding_the_query() {
    use attnlab_data::tasks::FindBlock;
    let paper = FindBlock { letters: 26, block_len: 5, query_len: 2, blocks: 52 };
    assert_eq!(paper.len() + 1, 319, "the reference asserts 319 characters per sample at 52 blocks");
    for t in [FindBlock::default(), paper, FindBlock { letters: 6, block_len: 3, query_len: 3, blocks: 9 }] {
        t.validate().unwrap();
        for e in examples(&t, 11, 300) {
            assert_eq!(e.tokens.len(), t.len() + 1);
            assert!(e.tokens.iter().all(|&x| (x as usize) < t.vocab()));
            let marker = e.tokens.iter().position(|&x| x == t.marker()).expect("a query marker");
            let context: Vec<&[u32]> = e.tokens[..marker].split(|&x| x == t.separator()).collect();
            assert_eq!(context.len(), t.blocks);
            for block in &context {
                let mut sorted = block.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), t.block_len, "a block of distinct letters: {block:?}");
            }
            let query = &e.tokens[marker + 1..marker + 1 + t.query_len];
            let answer = &e.tokens[marker + 1 + t.query_len..];
            let holding: Vec<&&[u32]> = context.iter().filter(|b| query.iter().all(|q| b.contains(q))).collect();
            assert_eq!(holding.len(), 1, "exactly one block holds the query {query:?}");
            assert_eq!(*holding[0], answer, "the answer is that block");
            let targets: Vec<u32> = e.answers.iter().map(|&p| e.target(p)).collect();
            assert_eq!(targets, answer, "the scored positions predict the block's letters");
            assert_eq!(e.answers[0], marker + t.query_len);
        }
    }
    for (t, field) in [
        (FindBlock { letters: 5, ..FindBlock::default() }, "letters"),
        (FindBlock { query_len: 6, ..FindBlock::default() }, "query_len"),
        (FindBlock { blocks: 1, ..FindBlock::default() }, "blocks"),
    ] {
        assert_eq!(t.validate().unwrap_err().field, field);
    }
}
