//! The built-in corpus: about 300 kB of generated text, the same on every machine, so that
//! the main command trains with no download. Sentences come from a small grammar (agreement,
//! fixed word order) mixed with arithmetic facts (`17 + 25 = 42.`), so a model has structure
//! to learn at several scales: spelling, grammar, and exact sums.

use crate::rng::Rng;

const SUBJECTS: &[&str] = &[
    "the king", "the queen", "a sailor", "the old miller", "my cousin", "the young poet",
    "a merchant", "the fool", "the captain", "her brother", "the gardener", "a stranger",
];
const VERBS: &[&str] = &[
    "sees", "follows", "praises", "forgets", "answers", "loves", "fears", "greets",
    "remembers", "teaches", "calls", "finds",
];
const OBJECTS: &[&str] = &[
    "the river", "a silver ring", "the northern road", "the garden gate", "an old letter",
    "the evening star", "the harbour", "a quiet song", "the winter fire", "the market square",
];
const ENDINGS: &[&str] = &[
    "at dawn", "before the storm", "with great care", "in the rain", "without a word",
    "when the bells ring", "after supper", "by the sea",
];

/// Target size of the generated text in bytes.
pub const BUILTIN_BYTES: usize = 300_000;

/// The built-in corpus (deterministic: a fixed seed).
pub fn text() -> String {
    let mut rng = Rng::new(0x5EED);
    let mut out = String::with_capacity(BUILTIN_BYTES + 128);
    let pick = |rng: &mut Rng, list: &[&'static str]| list[rng.below(list.len() as u64) as usize];
    while out.len() < BUILTIN_BYTES {
        match rng.below(4) {
            0 => {
                let (a, b) = (rng.below(50), rng.below(50));
                out.push_str(&format!("{a} + {b} = {}.\n", a + b));
            }
            _ => {
                let s = pick(&mut rng, SUBJECTS);
                let v = pick(&mut rng, VERBS);
                let o = pick(&mut rng, OBJECTS);
                let e = pick(&mut rng, ENDINGS);
                let mut first = s.chars();
                let cap: String = first.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(first).collect();
                out.push_str(&format!("{cap} {v} {o} {e}.\n"));
            }
        }
    }
    out
}
