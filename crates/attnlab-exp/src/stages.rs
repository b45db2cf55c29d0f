//! Training stages (`[[train.stages]]`): one mechanism for every recipe that trains in phases —
//! LoLCATs' attention transfer then LoRA, DeepSeek Sparse Attention's dense warm-up then sparse
//! training, Ouro's stage II.
//!
//! A stage has a name, its steps, its own warm-up + cosine learning rate (`lr` → `min_lr`,
//! default lr/10), the parameters that train (`trainable`: path patterns; the rest are frozen:
//! no gradient, no update, no weight decay), the auxiliary losses it adds to the objective with
//! their weights (`aux`, from the mixers' [`attnlab_attn::AuxLoss`] channel) and whether the
//! language-model loss is part of it (`lm_loss`). Stages run in file order; `train.steps` is
//! their sum. The stage of a step is a function of the step alone, so a resumed run is in the
//! right stage with the right frozen set.
//!
//! Parameter paths are Burn's module paths, e.g. `blocks.3.attn.Lolcats.q_map` (the enum variant
//! is a segment). A pattern matches a path when each of its dot-separated segments equals the
//! path's segment at that place (`*` matches any one segment) and the path has at least as many
//! segments: `blocks.*.attn.Lolcats.lora` trains every adapter of every layer.

use std::collections::BTreeMap;

use attnlab_attn::{AuxLoss, AuxRequest};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// One `[[train.stages]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    pub steps: usize,
    /// Peak learning rate of the stage.
    pub lr: f64,
    /// Learning rate at the stage's last step (cosine from `lr`); left out: lr / 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// Linear warm-up steps at the start of the stage.
    #[serde(default)]
    pub warmup: usize,
    /// Path patterns of the parameters that train; empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trainable: Vec<String>,
    /// Auxiliary losses added to the objective, by name, with their weights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux: BTreeMap<String, f64>,
    /// Whether the cross-entropy is part of the objective (it is always logged).
    #[serde(default = "yes")]
    pub lm_loss: bool,
}

fn yes() -> bool {
    true
}

impl StageConfig {
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr / 10.0)
    }

    /// The auxiliary losses and weights (names checked by [`validate`]).
    pub fn objective(&self) -> Objective {
        let aux = self.aux.iter().map(|(name, w)| (parse_aux(name).expect("validated aux name"), *w)).collect();
        Objective { aux, lm: self.lm_loss }
    }
}

/// What a training step minimises: the cross-entropy (when `lm`) plus Σ weight · auxiliary loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub aux: Vec<(AuxLoss, f64)>,
    pub lm: bool,
}

impl Objective {
    /// The cross-entropy alone (no stages).
    pub fn plain() -> Self {
        Self { aux: Vec::new(), lm: true }
    }

    pub fn is_plain(&self) -> bool {
        self.aux.is_empty() && self.lm
    }

    pub fn request(&self) -> AuxRequest {
        AuxRequest(self.aux.iter().map(|(a, _)| *a).collect())
    }
}

fn parse_aux(name: &str) -> Option<AuxLoss> {
    AuxLoss::ALL.into_iter().find(|a| a.name() == name)
}

/// The stage of `step` (0-based): its index, config and first step. `None` without stages.
pub fn stage_at(stages: &[StageConfig], step: usize) -> Option<(usize, &StageConfig, usize)> {
    let mut start = 0;
    for (i, s) in stages.iter().enumerate() {
        if step < start + s.steps || i + 1 == stages.len() {
            return Some((i, s, start));
        }
        start += s.steps;
    }
    None
}

/// Checks the stages that need no model: names, steps (their sum is `steps`), learning rates,
/// warm-up, aux names and weights, an objective in every stage. Err: (field, value, allowed).
pub fn validate(stages: &[StageConfig], steps: usize) -> Result<(), (String, String, String)> {
    let total: usize = stages.iter().map(|s| s.steps).sum();
    let e = |i: usize, field: &str, value: String, allowed: String| Err((format!("train.stages[{i}].{field}"), value, allowed));
    for (i, s) in stages.iter().enumerate() {
        if s.name.is_empty() || stages[..i].iter().any(|o| o.name == s.name) {
            return e(i, "name", format!("{:?}", s.name), "must be a non-empty name, different from the other stages'".into());
        }
        if s.steps == 0 {
            return e(i, "steps", "0".into(), "must be ≥ 1".into());
        }
        if !(s.lr > 0.0 && s.lr.is_finite()) {
            return e(i, "lr", s.lr.to_string(), "must be > 0".into());
        }
        if !(s.min_lr() >= 0.0 && s.min_lr() <= s.lr) {
            return e(i, "min_lr", s.min_lr().to_string(), format!("must be in [0, lr = {}]", s.lr));
        }
        if s.warmup > s.steps {
            return e(i, "warmup", s.warmup.to_string(), format!("must be ≤ the stage's steps = {}", s.steps));
        }
        let names: Vec<&str> = AuxLoss::ALL.iter().filter(|a| !a.is_metric()).map(AuxLoss::name).collect();
        for (name, w) in &s.aux {
            match parse_aux(name) {
                None => return e(i, &format!("aux.{name}"), w.to_string(), format!("unknown auxiliary loss; allowed: {}", names.join(", "))),
                Some(a) if a.is_metric() => return e(i, &format!("aux.{name}"), w.to_string(), format!("is a metric (logged with the loss), not a loss; allowed: {}", names.join(", "))),
                Some(_) => {}
            }
            if !(*w >= 0.0 && w.is_finite()) {
                return e(i, &format!("aux.{name}"), w.to_string(), "the weight must be finite and ≥ 0".into());
            }
        }
        if !s.lm_loss && s.aux.values().all(|w| *w == 0.0) {
            return e(i, "lm_loss", "false".into(), "needs an auxiliary loss with a weight > 0 in aux (the stage would minimise nothing)".into());
        }
        if s.aux.contains_key("indexer_kl_dense") && s.aux.contains_key("indexer_kl") {
            return e(i, "aux", "{ indexer_kl_dense, indexer_kl }".into(), "one of them: indexer_kl_dense runs the attention dense (the warm-up), indexer_kl sparse".into());
        }
        if s.aux.contains_key("exit_improvement") && (s.trainable.is_empty() || s.trainable.iter().any(|p| !p.starts_with("exit_gate"))) {
            return e(i, "trainable", format!("{:?}", s.trainable), "exit_improvement trains the exit gate alone (Ouro's stage II, the LM frozen): trainable = [\"exit_gate\"]".into());
        }
        for p in &s.trainable {
            if p.is_empty() || p.split('.').any(str::is_empty) {
                return e(i, "trainable", format!("{p:?}"), "each entry is a dot-separated parameter path pattern, e.g. \"blocks.*.attn.Lolcats.q_map\"".into());
            }
        }
    }
    if !stages.is_empty() && total != steps {
        return Err(("train.steps".into(), steps.to_string(), format!("must equal the sum of train.stages[].steps = {total} (or be left out)")));
    }
    Ok(())
}

/// Every float parameter's id and module path.
pub fn param_paths<M: Module>(model: &M) -> Vec<(ParamId, String)> {
    struct Paths {
        stack: Vec<String>,
        out: Vec<(ParamId, String)>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push((param.id, self.stack.join(".")));
        }
    }
    let mut v = Paths { stack: Vec::new(), out: Vec::new() };
    model.visit(&mut v);
    v.out
}

/// Whether `pattern` matches `path` (see the module doc).
pub fn matches(pattern: &str, path: &str) -> bool {
    let mut segments = path.split('.');
    pattern.split('.').all(|p| segments.next().is_some_and(|s| p == "*" || p == s))
}

/// The parameter paths with every layer index written `*`, deduplicated: what a pattern can
/// name, for error messages.
pub fn path_shapes<M: Module>(model: &M) -> Vec<String> {
    let mut shapes: Vec<String> = param_paths(model)
        .into_iter()
        .map(|(_, p)| p.split('.').map(|s| if s.parse::<usize>().is_ok() { "*" } else { s }).collect::<Vec<_>>().join("."))
        .collect();
    shapes.sort();
    shapes.dedup();
    shapes
}

/// Checks each stage's patterns and aux losses against the model it trains: every pattern
/// matches a parameter; every aux loss is one some layer returns. Err: (field, value, allowed).
pub fn check_model<M: Module>(stages: &[StageConfig], model: &M, aux_available: &[AuxLoss]) -> Result<(), (String, String, String)> {
    let paths = param_paths(model);
    for (i, s) in stages.iter().enumerate() {
        for p in &s.trainable {
            if !paths.iter().any(|(_, path)| matches(p, path)) {
                return Err((
                    format!("train.stages[{i}].trainable"),
                    format!("{p:?}"),
                    format!("matches no parameter of this model; its parameters: {}", path_shapes(model).join(", ")),
                ));
            }
        }
        for (a, _) in s.objective().aux {
            if !aux_available.contains(&a) {
                let have: Vec<&str> = aux_available.iter().map(AuxLoss::name).collect();
                return Err((
                    format!("train.stages[{i}].aux.{}", a.name()),
                    s.aux[a.name()].to_string(),
                    format!("no layer of this model returns it (this model's: {})", if have.is_empty() { "none".to_string() } else { have.join(", ") }),
                ));
            }
        }
    }
    Ok(())
}

/// `model` with only the parameters `stage` trains requiring gradients (all of them for an
/// empty `trainable`).
pub fn freeze_for<M: Module>(model: M, stage: &StageConfig) -> M {
    if stage.trainable.is_empty() {
        return model.set_require_grad(true);
    }
    let ids: Vec<ParamId> = param_paths(&model).into_iter().filter(|(_, path)| stage.trainable.iter().any(|p| matches(p, path))).map(|(id, _)| id).collect();
    model.set_require_grad(false).set_require_grad_group(ParamGroup::from_ids(ids), true)
}

/// The model config of the finished run folder `from` (its `config.toml`).
pub fn source_model_config(from: &std::path::Path) -> Result<attnlab_model::ModelConfig, String> {
    let path = from.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let spec: crate::ExperimentSpec = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), crate::spec::one_line(&e.to_string())))?;
    Ok(spec.model)
}

/// The trained softmax model of the run folder `from`, on `device`.
pub fn load_source_model(from: &std::path::Path, device: &burn::tensor::Device) -> anyhow::Result<attnlab_model::Gpt> {
    let config = source_model_config(from).map_err(anyhow::Error::msg)?;
    let model = attnlab_model::Gpt::new(&config, device);
    let file = from.join("checkpoint").join("model.bpk");
    model.try_load_file(&file).map_err(|e| anyhow::anyhow!("loading {}: {e:?}", file.display()))
}
