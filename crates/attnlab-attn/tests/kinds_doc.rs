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
