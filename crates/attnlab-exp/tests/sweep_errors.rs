//! Bad sweeps are reported with the run's index and the field before anything runs.

use attnlab_exp::sweep::load_experiment;

const BASE: &str = r#"
name = "s"
[data]
corpus = "builtin"
[model]
d_model = 32
heads = 4
max_seq = 32
[train]
steps = 3
warmup = 1
block = 16
"#;

fn err(sweep: &str) -> String {
    load_experiment(&format!("{BASE}\n[sweep]\n{sweep}"), "s.toml", &[]).unwrap_err().to_string()
}

#[test]
fn a_valid_sweep_expands_and_prepares_every_run() {
    let exp = load_experiment(&format!("{BASE}\n[sweep]\nseeds = [0, 1]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"gqa\", kv_heads = 2}}]\n"), "s.toml", &[]).unwrap();
    assert_eq!(exp.runs.len(), 4);
    let ids: std::collections::BTreeSet<_> = exp.runs.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(ids.len(), 4, "every run has its own id");
    assert_eq!(exp.runs[3].spec.train.seed, 1);
    assert_eq!(exp.runs[3].spec.model.attention.label(), "gqa-2");
}

#[test]
fn bad_points_name_the_run_and_the_field() {
    let e = err("\"model.attention\" = [{kind = \"mha\"}, {kind = \"gqa\", kv_heads = 3}]");
    assert!(e.contains("run 1") && e.contains("model.attention.kv_heads = 3"), "{e}");
    let e = err("\"model.headz\" = [4, 8]");
    assert!(e.contains("run 0") && e.contains("model.headz"), "{e}");
    let e = err("\"model.heads\" = []");
    assert!(e.contains("sweep.\"model.heads\"") && e.contains("empty"), "{e}");
    let e = err("\"model.heads\" = 4");
    assert!(e.contains("must be a list"), "{e}");
    let e = err("seeds = [0]\n\"model.heads\" = [4, 5]");
    assert!(e.contains("run 1") && e.contains("model.heads = 5") || e.contains("model.d_model = 32"), "{e}");
}

/// Fields a saved config leaves out at their defaults can be swept too.
/// Planted, and seen to fail: `known_path` from the plain defaults ("is not a config field").
#[test]
fn fields_omitted_at_their_defaults_can_be_swept() {
    let text = "name = \"s\"\n[model]\nd_model = 32\nheads = 4\nmax_seq = 32\n[train]\nsteps = 2\nblock = 16\nwarmup = 1\n[sweep]\n\"model.dropout\" = [0.0, 0.1]\n\"train.accumulate\" = [1, 2]\n\"model.positions\" = [\"none\", \"learned\"]\n";
    let exp = attnlab_exp::sweep::load_experiment(text, "s.toml", &[]).unwrap();
    assert_eq!(exp.runs.len(), 8);
    assert_eq!(exp.runs[7].spec.model.dropout, 0.1);
    assert_eq!(exp.runs[7].spec.train.accumulate, 2);
    assert_eq!(exp.runs[7].spec.model.positions, attnlab_model::Positions::Learned);
}
