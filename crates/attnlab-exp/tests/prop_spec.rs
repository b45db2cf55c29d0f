//! Property-based tests of the experiment parser and `--set` (proptest, which shrinks a
//! failing case to a small one). They extend the seeded mutation fuzzer of `fuzz_spec.rs`:
//! any override is accepted or refused with one line naming the file, never a panic; an
//! accepted integer comes back unchanged in the typed config; an accepted float is finite.
//!
//! Planted, and seen to fail: `train.weight_decay` validated without `is_finite` (shrunk to
//! `train.weight_decay = inf` accepted).

use attnlab_exp::overrides::get_path;
use attnlab_exp::sweep::load_experiment;
use proptest::prelude::*;

const BASE: &str = r#"name = "prop"
[data]
corpus = "builtin"
[model]
d_model = 32
layers = 1
heads = 4
max_seq = 64
[model.attention]
kind = "mha"
[train]
steps = 10
batch = 2
block = 16
warmup = 2
[eval]
every = 5
batches = 1
"#;

const INT_PATHS: &[&str] = &[
    "train.steps", "train.batch", "train.block", "train.warmup", "train.seed", "train.log_every", "train.checkpoint_every",
    "model.d_model", "model.heads", "model.layers", "model.max_seq", "model.mlp_hidden", "model.vocab", "eval.batches", "eval.every",
];
const FLOAT_PATHS: &[&str] = &["train.lr", "train.min_lr", "train.beta1", "train.beta2", "train.weight_decay", "train.grad_clip", "data.val_fraction", "model.rope_base"];

/// Loads BASE with `sets`; checks the error contract and returns the typed config as TOML.
fn load(sets: &[String]) -> Result<toml::Value, TestCaseError> {
    match std::panic::catch_unwind(|| load_experiment(BASE, "prop.toml", sets)) {
        Err(_) => Err(TestCaseError::fail(format!("panic on {sets:?}"))),
        Ok(Err(e)) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("prop.toml"), "error does not name the file: {msg}");
            prop_assert!(!msg.contains('\n'), "error is not one line: {msg}");
            Err(TestCaseError::reject("refused"))
        }
        Ok(Ok(exp)) => Ok(toml::Value::try_from(&exp.runs[0].spec).expect("spec serialises")),
    }
}

fn toml_float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:e}")
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(INT_PATHS).prop_map(String::from),
        prop::sample::select(FLOAT_PATHS).prop_map(String::from),
        "[a-z_.]{0,16}",
        "(model|train|eval|data)\\.[a-z_.]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn any_override_is_accepted_or_refused_in_one_line(key in key(), value in "\\PC{0,24}") {
        match load(&[format!("{key}={value}")]) {
            Ok(_) | Err(TestCaseError::Reject(_)) => {}
            Err(e) => return Err(e),
        }
    }

    #[test]
    fn an_accepted_integer_comes_back_unchanged(path in prop::sample::select(INT_PATHS), v in 0i64..100_000) {
        // model.vocab = 0 means "from the tokenizer": it comes back as the tokenizer's size.
        prop_assume!(!(path == "model.vocab" && v == 0));
        let loaded = load(&[format!("{path}={v}")]);
        if let Err(TestCaseError::Fail(f)) = loaded {
            return Err(TestCaseError::Fail(f));
        }
        if let Ok(spec) = loaded {
            prop_assert_eq!(get_path(&spec, path).and_then(toml::Value::as_integer), Some(v), "{}", path);
        }
    }

    #[test]
    fn an_accepted_float_is_finite(path in prop::sample::select(FLOAT_PATHS), v in prop::num::f64::ANY) {
        let loaded = load(&[format!("{path}={}", toml_float(v))]);
        if let Err(TestCaseError::Fail(f)) = loaded {
            return Err(TestCaseError::Fail(f));
        }
        if let Ok(spec) = loaded {
            let got = get_path(&spec, path).and_then(toml::Value::as_float).expect("a float field");
            prop_assert!(got.is_finite(), "{path} = {got} accepted");
        }
    }
}
