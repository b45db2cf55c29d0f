//! Training stages, freezing by path and auxiliary losses, through LoLCATs (`attnlab linearize`):
//! stage 1 changes only the feature maps and mixing factors (every other weight stays the
//! source run's, bit for bit) while the logits are the teacher's; stage 2 changes only the
//! adapters; the auxiliary loss is the mean over layers of each layer's transfer MSE on the
//! teacher's hidden states; a run stopped inside either stage resumes to the same end; bad
//! stage fields are refused before any compute, naming field, value and what is allowed.
//!
//! Mutations planted and seen to fail:
//! - freezing skipped (every parameter trains in every stage) → `stage_one_trains_only_the_maps_and_stage_two_only_the_adapters`;
//! - the stage's trainable set taken from the *next* stage (`stage_at` off by one step) →
//!   `stage_one_trains_only_the_maps_and_stage_two_only_the_adapters`;
//! - the auxiliary loss summed over layers instead of averaged →
//!   `the_transfer_loss_is_the_mean_over_layers_on_teacher_inputs`;
//! - `forward_transfer` passing the student's output on →
//!   `the_transfer_loss_is_the_mean_over_layers_on_teacher_inputs` (logits and per-layer inputs);
//! - resume without re-applying the stage's frozen set (the current stage initialised to the
//!   resumed step's) → `a_run_stopped_inside_a_stage_resumes_to_the_same_end`,
//!   `stage_one_trains_only_the_maps_and_stage_two_only_the_adapters`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use attnlab_attn::{AuxLoss, AuxRequest};
use attnlab_exp::linearize::{lolcats_spec, Options};
use attnlab_exp::stages::param_paths;
use attnlab_exp::trainer::RunOutcome;
use attnlab_exp::{train, ExperimentSpec, PreparedRun};
use attnlab_model::Gpt;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{cpu_opts, tiny_run};

/// A trained 2-layer softmax run (GQA, 4 query heads on 2 K/V heads) in `store`; its folder.
fn source_run(store: &Path) -> std::path::PathBuf {
    let run = tiny_run("src", &["model.attention.kind=gqa", "model.attention.kv_heads=2"]);
    let RunOutcome::Finished(_) = train(&run, &cpu_opts(store, None)).unwrap() else { panic!("source run should finish") };
    store.join("src").join(&run.run_id)
}

/// The LoLCATs run of `source` (window 4 so that a 16-token window has a linear part;
/// 4 + 4 steps; stage 2 at lr 1e-2 so that 4 steps visibly move the adapters).
fn lolcats_run(source: &Path, no_transfer: bool) -> PreparedRun {
    let options = Options { transfer_steps: 4, lora_steps: 4, transfer_lr: 1e-2, lora_lr: 1e-2, no_transfer, name: Some("lol".into()) };
    let sets = ["model.attention.window=4".to_string(), "train.checkpoint_every=2".to_string()];
    let text = lolcats_spec(source, &options, &sets).unwrap();
    ExperimentSpec::from_toml_str(&text, "lol.toml", &[]).unwrap().prepare("lol.toml").unwrap()
}

/// Every float parameter's values by module path.
fn by_path(model: &Gpt) -> BTreeMap<String, Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap());
        }
    }
    let mut v = Values(vec![]);
    model.visit(&mut v);
    param_paths(model).into_iter().map(|(_, p)| p).zip(v.0).collect()
}

fn load(spec: &ExperimentSpec, run_dir: &Path) -> Gpt {
    Gpt::new(&spec.model, &Device::flex()).try_load_file(run_dir.join("checkpoint").join("model.bpk")).unwrap()
}

/// The source parameter a LoLCATs path was taken from (`None` for the new parts).
fn source_path(path: &str) -> Option<String> {
    match path.split_once(".attn.Lolcats.") {
        Some((block, rest)) => rest.strip_prefix("base.").map(|r| format!("{block}.attn.GroupedQuery.{r}")),
        None => Some(path.to_string()),
    }
}

#[test]
fn stage_one_trains_only_the_maps_and_stage_two_only_the_adapters() {
    let store = tempfile::tempdir().unwrap();
    let source = source_run(store.path());
    let teacher = by_path(&load(&attnlab_exp::ExperimentSpec::load(&source.join("config.toml"), &[]).unwrap(), &source));
    let run = lolcats_run(&source, false);
    let dir = store.path().join("lol").join(&run.run_id);
    let initial = by_path(&attnlab_exp::trainer::seeded_model(&run.spec.model, run.spec.train.seed, &Device::flex()));
    let RunOutcome::Stopped { step: 4 } = train(&run, &cpu_opts(store.path(), Some(4))).unwrap() else { panic!("should stop after stage 1") };
    let after_one = by_path(&load(&run.spec, &dir));
    let RunOutcome::Finished(_) = train(&run, &cpu_opts(store.path(), None)).unwrap() else { panic!("should finish") };
    let after_two = by_path(&load(&run.spec, &dir));
    let (mut maps, mut adapters) = (0, 0);
    for (path, one) in &after_one {
        let two = &after_two[path];
        match source_path(path) {
            Some(src) => {
                assert_eq!(one, &teacher[&src], "{path}: stage 1 changed a frozen weight");
                assert_eq!(two, &teacher[&src], "{path}: stage 2 changed a frozen weight");
            }
            None if path.contains(".lora.") => {
                adapters += 1;
                assert_eq!(one, &initial[path], "{path}: stage 1 changed an adapter");
                if path.ends_with(".b") {
                    assert_ne!(two, one, "{path}: stage 2 did not train the adapter");
                }
            }
            None => {
                maps += 1;
                assert_ne!(one, &initial[path], "{path}: stage 1 did not train it");
                assert_eq!(two, one, "{path}: stage 2 changed a stage-1 parameter");
            }
        }
    }
    assert_eq!((maps, adapters), (2 * 3, 2 * 8), "maps, γ and adapters of both layers were checked");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let first = metrics.lines().next().unwrap();
    assert!(first.contains("\"stage\":\"transfer\"") && first.contains("\"attention_transfer\""), "{first}");
    assert!(metrics.lines().any(|l| l.contains("\"stage\":\"lora\"") && !l.contains("attention_transfer")), "stage 2 logs no transfer loss");
}

#[test]
fn the_transfer_loss_is_the_mean_over_layers_on_teacher_inputs() {
    let store = tempfile::tempdir().unwrap();
    let source = source_run(store.path());
    let run = lolcats_run(&source, false);
    let device = Device::flex();
    let teacher = attnlab_exp::stages::load_source_model(&source, &device).unwrap();
    let model = attnlab_exp::trainer::seeded_model(&run.spec.model, 3, &device).with_source_weights(teacher.clone()).unwrap();
    let tokens: Vec<i64> = (0..2 * 16).map(|i| (i * 7 % 20) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [2, 16]), &device);
    let (logits, aux) = model.forward_aux(tokens.clone(), &AuxRequest(vec![AuxLoss::AttentionTransfer]));
    let want = teacher.forward(tokens.clone());
    let err = (logits - want.clone()).abs().max().into_scalar::<f32>() / want.abs().max().into_scalar::<f32>();
    assert!(err < 1e-5, "logits during transfer vs the teacher's: relative error {err}");
    // Each layer's MSE on the hidden state the *teacher* model gives it.
    let mut h = teacher.embed.forward(tokens);
    let mut per_layer = Vec::new();
    for (mine, theirs) in model.blocks.iter().zip(&teacher.blocks) {
        let attnlab_attn::Attention::Lolcats(l) = &mine.attn else { panic!("lolcats layer") };
        let (_, mse) = l.forward_transfer(mine.attn_norm.forward(h.clone()));
        per_layer.push(mse.into_scalar::<f32>() as f64);
        h = theirs.forward(h, 0.0);
    }
    let mean = per_layer.iter().sum::<f64>() / per_layer.len() as f64;
    let [(name, got)] = <[_; 1]>::try_from(aux).unwrap();
    assert_eq!(name, AuxLoss::AttentionTransfer);
    let got = got.into_scalar::<f32>() as f64;
    assert!(per_layer.iter().all(|m| *m > 1e-6), "every layer's student differs from its teacher: {per_layer:?}");
    assert!((got - mean).abs() < 1e-5 * mean, "aux {got} vs the mean of the layers' MSEs {mean} ({per_layer:?})");
}

#[test]
fn a_run_stopped_inside_a_stage_resumes_to_the_same_end() {
    let store = tempfile::tempdir().unwrap();
    let source = source_run(store.path());
    let run = lolcats_run(&source, false);
    let whole = tempfile::tempdir().unwrap();
    let RunOutcome::Finished(a) = train(&run, &cpu_opts(whole.path(), None)).unwrap() else { panic!() };
    for stop in [2, 6] {
        let parts = tempfile::tempdir().unwrap();
        let RunOutcome::Stopped { .. } = train(&run, &cpu_opts(parts.path(), Some(stop))).unwrap() else { panic!() };
        let RunOutcome::Finished(b) = train(&run, &cpu_opts(parts.path(), None)).unwrap() else { panic!() };
        assert!((a.final_val_loss - b.final_val_loss).abs() < 1e-6, "stopped at {stop}: {} vs {}", b.final_val_loss, a.final_val_loss);
        assert!((a.final_train_loss - b.final_train_loss).abs() < 1e-6, "stopped at {stop}");
    }
}

#[test]
fn the_no_transfer_ablation_is_one_stage_on_the_lm_loss() {
    let store = tempfile::tempdir().unwrap();
    let source = source_run(store.path());
    let run = lolcats_run(&source, true);
    let stages = &run.spec.train.stages;
    assert_eq!(stages.len(), 1);
    assert_eq!((stages[0].steps, stages[0].lm_loss, stages[0].aux.len()), (8, true, 0));
    assert_eq!(stages[0].trainable.len(), 4, "maps, γ and adapters");
}

#[test]
fn bad_stages_and_sources_are_refused_naming_the_field() {
    let store = tempfile::tempdir().unwrap();
    let source = source_run(store.path());
    let text = lolcats_spec(&source, &Options::default(), &[]).unwrap();
    let refuse = |sets: &[&str], edit: &dyn Fn(&str) -> String, wants: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let msg = match ExperimentSpec::from_toml_str(&edit(&text), "lol.toml", &sets) {
            Err(e) => e.to_string(),
            Ok(spec) => match spec.prepare("lol.toml") {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{sets:?} should be refused"),
            },
        };
        for w in wants {
            assert!(msg.contains(w), "message {msg:?} should contain {w:?}");
        }
    };
    let same = |t: &str| t.to_string();
    refuse(&["train.steps=7"], &same, &["train.steps = 7", "sum of train.stages[].steps = 400"]);
    refuse(&[], &|t| t.replace("attention_transfer = 1000.0", "attention_transer = 1000.0"), &["train.stages[0].aux.attention_transer", "allowed: attention_transfer"]);
    refuse(&[], &|t| t.replace("blocks.*.attn.Lolcats.lora", "blocks.*.attn.Lolcats.loras"), &["train.stages[1].trainable", "matches no parameter", "blocks.*.attn.Lolcats.q_map"]);
    refuse(&[], &|t| t.replace("[train.stages.aux]\nattention_transfer = 1000.0\n", ""), &["train.stages[0].lm_loss", "needs an auxiliary loss"]);
    refuse(&[], &|t| t.replace("kind = \"lolcats\"", "kind = \"gqa\""), &["train.stages[0].trainable", "matches no parameter"]);
    refuse(&[], &|t| t.replace(&source.display().to_string(), "/nonexistent/run"), &["train.init_from", "finished run folder"]);
    refuse(&["model.d_model=64"], &same, &["train.init_from", "d_model 32", "d_model 64"]);
    refuse(&["model.attention.kv_heads=4"], &same, &["train.init_from", "2 K/V heads", "kv_heads = 2"]);
    refuse(&["model.max_seq=64"], &same, &["train.init_from", "model.max_seq = 64 exceeds the source's 32"]);
    refuse(&["model.mlp=swiglu"], &same, &["train.init_from", "Swiglu"]);
    refuse(&[], &|t| t.replace("attention_transfer = 1000.0", "attention_transfer = 0.0"), &["train.stages[0].lm_loss", "weight > 0"]);
    refuse(&[], &|t| t.replace("lr = 0.01\n", "lr = 0.01\nwarmup = 900\n").replacen("warmup = 0\ntrainable", "trainable", 1), &["train.stages[0]", "warmup"]);
    // Linearising a run that is not grouped-query softmax attention.
    let mla = tiny_run("mla", &["model.attention.kind=mla"]);
    let RunOutcome::Finished(_) = train(&mla, &cpu_opts(store.path(), None)).unwrap() else { panic!() };
    let e = lolcats_spec(&store.path().join("mla").join(&mla.run_id), &Options::default(), &[]).unwrap_err().to_string();
    assert!(e.contains("\"mla\"") && e.contains("mha, mqa or gqa"), "{e}");
    let e = lolcats_spec(store.path(), &Options::default(), &[]).unwrap_err().to_string();
    assert!(e.contains("not a finished run folder"), "{e}");
    // What the stages train follows the --set overrides; a layer with nothing to transfer is refused.
    let no_window = lolcats_spec(&source, &Options::default(), &["model.attention.window=0".into()]).unwrap();
    assert!(!no_window.contains("window_logit") && no_window.contains("q_map"), "{no_window}");
    let elu = lolcats_spec(&source, &Options::default(), &["model.attention.feature_map=elu1".into()]).unwrap();
    assert!(elu.contains("window_logit") && !elu.contains("q_map"), "{elu}");
    let e = lolcats_spec(&source, &Options::default(), &["model.attention.feature_map=elu1".into(), "model.attention.window=0".into()]).unwrap_err().to_string();
    assert!(e.contains("nothing to train") && e.contains("--no-transfer"), "{e}");
    let e = lolcats_spec(&source, &Options::default(), &["model.attention.lora_rank=0".into()]).unwrap_err().to_string();
    assert!(e.contains("lora_rank = 0"), "{e}");
}

/// DeepSeek's recipe: a DSA model started from a trained MLA run (`train.init_from`), warmed up
/// with only the indexer training on its dense KL: every MLA weight (and everything else) stays
/// the source's bit for bit, the indexer moves; a source whose latent differs is refused.
///
/// Planted, and seen to fail: `with_source_weights` leaving the DSA layer's MLA as initialised.
#[test]
fn a_dsa_run_starts_from_an_mla_run_and_warms_up_the_indexer_alone() {
    let store = tempfile::tempdir().unwrap();
    let mla = tiny_run("mla_src", &["model.attention={kind = \"mla\", kv_latent = 8, rope_dim = 4}"]);
    let RunOutcome::Finished(_) = train(&mla, &cpu_opts(store.path(), None)).unwrap() else { panic!() };
    let source = store.path().join("mla_src").join(&mla.run_id);
    let from = format!("train.init_from=\"{}\"", source.display());
    let warmup = "train.stages=[{name = \"warmup\", steps = 12, lr = 1e-2, trainable = [\"blocks.*.attn.Dsa.indexer\"], aux = { indexer_kl_dense = 1.0 }, lm_loss = false}]";
    let run = tiny_run("dsa_from", &["model.attention={kind = \"dsa\", top_k = 4, kv_latent = 8, rope_dim = 4, index_dim = 8}", &from, warmup]);
    let initial = by_path(&attnlab_exp::trainer::seeded_model(&run.spec.model, run.spec.train.seed, &Device::flex()));
    let RunOutcome::Finished(_) = train(&run, &cpu_opts(store.path(), None)).unwrap() else { panic!() };
    let teacher = by_path(&load(&mla.spec, &source));
    let after = by_path(&load(&run.spec, &store.path().join("dsa_from").join(&run.run_id)));
    let mut indexer = 0;
    for (path, v) in &after {
        match path.split_once(".attn.Dsa.") {
            Some((_, rest)) if rest.starts_with("indexer.") => {
                indexer += 1;
                if rest.ends_with("weight") {
                    assert_ne!(v, &initial[path], "{path}: the warm-up did not train the indexer");
                }
            }
            Some((block, rest)) => {
                let src = format!("{block}.attn.Latent.{}", rest.strip_prefix("mla.").expect("the DSA layer's MLA"));
                assert_eq!(v, &teacher[&src], "{path}: not the source's MLA weight");
            }
            None => assert_eq!(v, &teacher[path], "{path}: not the source's weight"),
        }
    }
    assert!(indexer >= 2 * 4, "the indexers of both layers were checked");
    let wrong = tiny_run("dsa_from", &["model.attention={kind = \"dsa\", top_k = 4, kv_latent = 16, rope_dim = 4, index_dim = 8}", "train.steps=12"]);
    let spec = ExperimentSpec { train: attnlab_exp::spec::TrainConfig { init_from: Some(source.clone()), ..wrong.spec.train.clone() }, ..wrong.spec.clone() };
    let e = spec.prepare("x.toml").unwrap_err().to_string();
    assert!(e.contains("train.init_from") && e.contains("kv_latent, rope_dim, q_latent"), "{e}");
}
