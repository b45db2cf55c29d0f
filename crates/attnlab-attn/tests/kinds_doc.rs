//! `attnlab kinds` and the README's kinds table come from one source, and name every kind.
//! Planted, and seen to fail: one word of a README row changed; a kind missing from `DOCS`.

use attnlab_attn::config::KINDS;
use attnlab_attn::kinds::{markdown_table, plain, DOCS};

#[test]
fn the_readme_holds_the_kinds_table_verbatim_and_every_kind_is_documented() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    assert!(readme.contains(&markdown_table()), "README.md's kinds table differs from attnlab-attn/src/kinds.rs: regenerate it with `attnlab kinds --markdown`");
    let documented: Vec<&str> = DOCS.iter().map(|d| d.kind).collect();
    assert_eq!(documented, KINDS);
    let text = plain(80);
    assert!(text.lines().all(|l| l.chars().count() <= 80 || !l.contains(' ')), "{text}");
    for kind in KINDS {
        assert!(text.lines().any(|l| l == *kind), "{kind}");
    }
}

/// Every kind parses from `kind = "…"` alone, validates and runs a forward on the baby shape
/// (width 128, 4 heads): each trains with its defaults (`--set model.attention.kind=<kind>`), except the four
/// whose defining size has no neutral value — `gqa`'s K/V heads, the window and the sparse
/// patterns' block — where the error names that field. Planted and seen to fail: `dsa`'s `top_k`
/// without a default (as it was until 2026-12-06).
#[test]
fn every_kind_has_working_defaults() {
    let required = [("gqa", "kv_heads"), ("sliding_window", "window"), ("strided_sparse", "block"), ("fixed_sparse", "block")];
    let parse = |kind: &str| toml::from_str::<attnlab_attn::AttentionConfig>(&format!("kind = \"{kind}\""));
    for kind in KINDS {
        match required.iter().find(|(k, _)| k == kind) {
            Some((_, field)) => assert!(parse(kind).unwrap_err().to_string().contains(field), "{kind}"),
            None => {
                let config = parse(kind).unwrap_or_else(|e| panic!("{kind}: {e}"));
                config.validate(128, 4).unwrap_or_else(|e| panic!("{kind}: {} = {}: {}", e.field, e.value, e.allowed));
                // Built and run: a default that validates but cannot run would fail here.
                let dev = attnlab_attn::burn::tensor::Device::flex();
                let y = config.init(128, 4, 64, 10_000.0, &dev).forward(attnlab_attn::burn::tensor::Tensor::ones([1, 8, 128], &dev));
                assert_eq!(y.dims(), [1, 8, 128], "{kind}");
            }
        }
    }
}
