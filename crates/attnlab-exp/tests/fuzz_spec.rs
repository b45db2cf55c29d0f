//! Fuzzing the experiment parser and validator: random mutations of valid files and random
//! `--set` overrides must give `Ok` or one clear error naming the file, never a panic.
//! Seeded, so a failure reproduces; the failing input is printed.

use attnlab_data::Rng;
use attnlab_exp::sweep::load_experiment;

const BASES: &[&str] = &[
    r#"name = "fuzz"
[data]
corpus = "builtin"
tokenizer = "char"
[model]
d_model = 32
layers = 1
heads = 4
max_seq = 64
mlp = "gelu"
[model.attention]
kind = "gqa"
kv_heads = 2
[train]
steps = 10
batch = 2
block = 16
warmup = 2
[eval]
every = 5
batches = 1
"#,
    r#"name = "fuzz_task"
[data.task]
kind = "mqar"
vocab = 32
seq_len = 32
num_pairs = 4
num_queries = 4
[model]
d_model = 32
heads = 4
max_seq = 64
[model.attention]
kind = "sliding_window"
window = 8
[train]
steps = 10
batch = 2
warmup = 1
[eval]
batches = 1
[sweep]
seeds = [0, 1]
"model.attention" = [{ kind = "mha" }, { kind = "mla", kv_latent = 8, rope_dim = 4 }]
"#,
];

const VALUES: &[&str] = &[
    "0", "1", "-1", "3", "7", "64", "4096", "1.5", "-0.5", "nan", "inf", "\"x\"", "\"\"", "true", "[1, 2]", "[]", "{}",
    "{ kind = \"gqa\", kv_heads = 3 }", "{ kind = \"nope\" }", "\"mqar\"", "\"needle\"", "\"selective_copy\"", "\"mla\"",
    "\"tiled\"", "\"differential\"", "\"file\"", "\"tinyshakespeare\"",
];
const KEYS: &[&str] = &[
    "kind", "kv_heads", "window", "global_tokens", "block", "stride", "block_q", "kv_latent", "rope_dim", "q_latent", "d_model",
    "heads", "layers", "max_seq", "vocab", "steps", "batch", "lr", "min_lr", "warmup", "seq_len", "num_pairs", "num_queries",
    "seeds", "path", "bogus", "val_fraction", "depth_buckets", "power_a",
];
const PATHS: &[&str] = &[
    "model.heads", "model.d_model", "model.attention.kind", "model.attention.kv_heads", "model.attention.window", "train.lr",
    "train.block", "train.steps", "data.task.kind", "data.task.vocab", "data.task.seq_len", "data.corpus", "model.max_seq",
    "eval.batches", "nope.nope", "model", "data.task", "", ".", "model..heads",
];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

/// One random edit of a TOML text.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = rng.below(lines.len() as u64) as usize;
    match rng.below(7) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        2 => {
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {}", pick(rng, VALUES));
            }
        }
        3 => {
            if let Some((_, v)) = lines[i].split_once('=') {
                lines[i] = format!("{} ={v}", pick(rng, KEYS));
            }
        }
        4 => lines.insert(i, format!("{} = {}", pick(rng, KEYS), pick(rng, VALUES))),
        5 => {
            let cut = rng.below(lines[i].len() as u64 + 1) as usize;
            lines[i] = lines[i].chars().take(cut).collect();
        }
        _ => {
            let junk = ["[", "]", "\"", "=", "[[x]]", "\u{0}", "é", "#", "{"];
            lines[i].push_str(pick(rng, &junk));
        }
    }
    lines.join("\n")
}

#[test]
fn random_files_and_overrides_never_panic() {
    let mut rng = Rng::new(2026);
    let (mut ok, mut errors) = (0, 0);
    for case in 0..1500 {
        let mut text = BASES[case % BASES.len()].to_string();
        for _ in 0..=rng.below(3) {
            text = mutate(&mut rng, &text);
        }
        let sets: Vec<String> = (0..rng.below(3)).map(|_| format!("{}={}", pick(&mut rng, PATHS), pick(&mut rng, VALUES))).collect();
        let result = std::panic::catch_unwind(|| load_experiment(&text, "fuzz.toml", &sets).map(|e| e.runs.len()));
        match result {
            Ok(Ok(n)) => {
                assert!(n >= 1);
                ok += 1;
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(msg.starts_with("fuzz.toml"), "case {case}: error does not name the file: {msg}\n--- input ---\n{text}\n--- sets: {sets:?}");
                assert!(!msg.contains('\n'), "case {case}: error is not one line: {msg}");
                errors += 1;
            }
            Err(_) => panic!("case {case}: panic\n--- input ---\n{text}\n--- sets: {sets:?}"),
        }
    }
    // (43 valid of 1,500 since a `--set` on a swept path became an error.)
    assert!(ok > 25 && errors > 500, "the mutations should produce both valid and invalid files: {ok} ok, {errors} errors");
}
