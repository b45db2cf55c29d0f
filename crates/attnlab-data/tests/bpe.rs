//! Byte-level BPE (`data.tokenizer = "bpe"`).
//!
//! - The learned merges are the ones a naive BPE written out here picks (count every adjacent
//!   pair in every word, weighted by the word's count; merge the most frequent, ties to the
//!   smaller token ids; repeat) on a text with ties.
//! - Any text round-trips, including bytes never seen in training; the saved form reads back
//!   equal; learning twice gives the same tokenizer; BPE compresses held-out text.
//!
//! Planted and seen to fail: the byte alphabet left out of training (an unseen character then
//! has no token: the round trip fails); `min_frequency` 1 instead of 2 (the naive reference
//! stops at pairs seen once: merge list differs); the vocabulary counted without the byte
//! alphabet (`vocab_size` off).

use std::collections::HashMap;

use attnlab_data::{Bpe, Tokenizer};

/// GPT-2's byte-to-symbol map for the bytes used here: a space is `Ġ`, letters are themselves.
fn symbol(c: char) -> char {
    if c == ' ' {
        'Ġ'
    } else {
        c
    }
}

/// GPT-2's 256 byte symbols: printable bytes stand for themselves, the others for U+0100 on.
fn byte_symbols() -> Vec<char> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut others = 0;
    (0..256u32)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                others += 1;
                char::from_u32(255 + others).unwrap()
            }
        })
        .collect()
}

/// Naive BPE on words of lowercase letters separated by single spaces: GPT-2's pre-tokenizer
/// then gives the first word and " word" for the rest. Merges while the best pair occurs ≥ 2
/// times, up to `merges`. Token ids: the byte symbols sorted by code point, then each merge in
/// turn; among pairs of equal count the one with the smaller ids wins (the `tokenizers`
/// trainer's documented order).
fn naive_merges(text: &str, merges: usize) -> Vec<(String, String)> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut symbols = byte_symbols();
    symbols.sort();
    for (i, c) in symbols.iter().enumerate() {
        ids.insert(c.to_string(), i);
    }
    let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
    for (i, w) in text.split(' ').enumerate() {
        let word = if i == 0 { w.to_string() } else { format!(" {w}") };
        *counts.entry(word.chars().map(|c| symbol(c).to_string()).collect()).or_default() += 1;
    }
    let mut out = Vec::new();
    while out.len() < merges {
        let mut pairs: HashMap<(String, String), usize> = HashMap::new();
        for (word, n) in &counts {
            for p in word.windows(2) {
                *pairs.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        let Some((best, n)) = pairs.into_iter().max_by_key(|((a, b), n)| (*n, std::cmp::Reverse((ids[a], ids[b])))) else { break };
        if n < 2 {
            break;
        }
        ids.insert(format!("{}{}", best.0, best.1), 256 + out.len());
        counts = counts
            .into_iter()
            .map(|(word, n)| {
                let mut merged: Vec<String> = Vec::new();
                let mut i = 0;
                while i < word.len() {
                    if i + 1 < word.len() && word[i] == best.0 && word[i + 1] == best.1 {
                        merged.push(format!("{}{}", best.0, best.1));
                        i += 2;
                    } else {
                        merged.push(word[i].clone());
                        i += 1;
                    }
                }
                (merged, n)
            })
            .collect();
        out.push(best);
    }
    out
}

fn learned_merges(bpe: &Bpe) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(bpe.json()).unwrap();
    json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let pair = m.as_array().unwrap();
            (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn merges_are_the_most_frequent_pairs_in_order() {
    // Word counts with ties between pairs (e.g. "Ġth ee" and "r ee", 8 each, at step 5).
    let mut words = Vec::new();
    for (w, n) in [("thee", 9), ("there", 7), ("three", 5), ("other", 4), ("tree", 3), ("art", 2)] {
        words.extend(std::iter::repeat_n(w, n));
    }
    let text = words.join(" ");
    // Every merge of a pair seen twice or more: room for 10 more tokens than that, which
    // must stay unused.
    let expected = naive_merges(&text, usize::MAX);
    assert!(expected.len() >= 6, "the text must give several merges: {expected:?}");
    let bpe = Bpe::train(&text, 256 + expected.len() + 10).unwrap();
    assert_eq!(learned_merges(&bpe), expected);
    assert_eq!(bpe.vocab_size(), 256 + expected.len());
    // A vocabulary smaller than that keeps the first merges.
    assert_eq!(learned_merges(&Bpe::train(&text, 256 + 5).unwrap()), expected[..5]);
}

#[test]
fn any_text_round_trips_and_the_saved_form_reads_back() {
    let corpus = attnlab_data::builtin::text();
    let bpe = Bpe::train(&corpus, 400).unwrap();
    let tokenizer = Tokenizer::Bpe(bpe.clone());
    for text in [corpus.lines().take(5).collect::<Vec<_>>().join("\n"), "naïve – 日本語 \t\u{1F600}\r\n  two  spaces".to_string(), "\n".to_string()] {
        let ids = tokenizer.encode(&text).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < tokenizer.vocab_size()));
        assert_eq!(tokenizer.decode(&ids), text);
    }
    let saved = serde_json::to_string(&tokenizer).unwrap();
    assert!(saved.starts_with(r#"{"kind":"bpe","tokenizer":{"#), "{}", &saved[..60]);
    let back: Tokenizer = serde_json::from_str(&saved).unwrap();
    assert_eq!(back, tokenizer);
    // The Hugging Face JSON alone loads too (data.tokenizer_file).
    assert_eq!(Bpe::from_json(bpe.json()).unwrap(), bpe);
    assert!(Bpe::from_json("{\"model\": 3}").is_err());
}

#[test]
fn learning_is_deterministic_and_compresses_held_out_text() {
    let corpus = attnlab_data::builtin::text();
    let split = corpus.len() * 9 / 10;
    let (train, held_out) = corpus.split_at(corpus.floor_char_boundary(split));
    let a = Bpe::train(train, 512).unwrap();
    let b = Bpe::train(train, 512).unwrap();
    assert_eq!(a.json(), b.json(), "hash maps with random seeds inside must not change the result");
    let ids = a.encode(held_out).unwrap();
    let ratio = ids.len() as f64 / held_out.len() as f64;
    assert!(ratio < 0.5, "{} tokens for {} bytes: ratio {ratio:.3}", ids.len(), held_out.len());
}

