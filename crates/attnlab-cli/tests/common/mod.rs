//! What the binary's tests share: the binary and a tiny experiment.
#![allow(dead_code)]

use std::process::Command;

pub fn attnlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
}

pub const TINY: &str = r#"
name = "tiny"
[data]
corpus = "builtin"
[model]
d_model = 32
layers = 1
heads = 4
max_seq = 48
[model.attention]
kind = "mha"
[train]
steps = 20
batch = 4
block = 16
warmup = 2
[eval]
every = 10
batches = 2
"#;
