//! safetensors export and import of a run's model, for PyTorch and other tools.
//!
//! Format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}` padded with
//! spaces to a multiple of 8, then the raw little-endian tensor bytes.
//!
//! Tensor names are the module paths of [`Gpt`] with enum variants left out, e.g.
//! `embed.weight` `[vocab, d_model]`, `blocks.0.attn_norm.gamma` `[d_model]`,
//! `blocks.0.attn.qkv.weight` `[d_model, (heads + 2·kv_heads)·head_dim]`. Every linear weight is
//! stored as Burn holds it, **`[d_in, d_out]`** (`y = x @ W`; PyTorch's `nn.Linear.weight` is its
//! transpose). RoPE tables are not parameters and are not exported. The README's "Exporting to
//! PyTorch" lists the names of each kind; `tools/check_export.py` re-implements MHA/GQA/MLA from
//! them in PyTorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use attnlab_data::Tokenizer;
use attnlab_model::Gpt;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::{ExperimentSpec, SpecError};

/// The values of one exported tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) => "F32",
            Values::I64(_) => "I64",
        }
    }

    /// Bytes in the file.
    fn byte_len(&self) -> usize {
        match self {
            Values::F32(v) => 4 * v.len(),
            Values::I64(v) => 8 * v.len(),
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A named tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Module path of the current parameter; enum variants (the attention kind) add no segment.
#[derive(Default)]
struct ParamPath {
    segments: Vec<Option<String>>,
}

impl ParamPath {
    fn enter(&mut self, name: &str, container: &str) {
        self.segments.push((!container.starts_with("Enum:")).then(|| name.to_string()));
    }

    fn exit(&mut self) {
        self.segments.pop();
    }

    fn name(&self) -> String {
        self.segments.iter().flatten().cloned().collect::<Vec<_>>().join(".")
    }
}

struct Collect {
    path: ParamPath,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 parameter");
        self.out.push(NamedTensor { name: self.path.name(), shape, values: Values::F32(values) });
    }
}

/// Every parameter of `model`, in module order, named by its path.
pub fn named_tensors(model: &Gpt) -> Vec<NamedTensor> {
    let mut c = Collect { path: ParamPath::default(), out: Vec::new() };
    model.visit(&mut c);
    c.out
}

struct Replace<'a> {
    path: ParamPath,
    tensors: BTreeMap<&'a str, &'a NamedTensor>,
    /// Every parameter name of the model.
    wanted: Vec<String>,
    errors: Vec<String>,
}

impl ModuleMapper for Replace<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        let expected = param.val().dims().to_vec();
        self.wanted.push(name.clone());
        match self.tensors.get(name.as_str()) {
            None => self.errors.push(format!("{name}: missing (shape {expected:?})")),
            Some(t) if t.shape != expected => self.errors.push(format!("{name}: shape {:?}, the model needs {expected:?}", t.shape)),
            Some(NamedTensor { values: Values::F32(v), shape, .. }) => {
                let data = TensorData::new(v.clone(), shape.clone());
                return param.map(|old| Tensor::from_data(data, &old.device()));
            }
            Some(t) => self.errors.push(format!("{name}: dtype {}, expected F32", t.values.dtype())),
        }
        param
    }
}

/// `model` with every parameter replaced by the tensor of the same name. Every parameter must
/// be present with its shape, and every tensor must be used: the errors list all mismatches.
pub fn load_named(model: Gpt, tensors: &[NamedTensor]) -> Result<Gpt, SpecError> {
    let mut r = Replace { path: ParamPath::default(), tensors: tensors.iter().map(|t| (t.name.as_str(), t)).collect(), wanted: Vec::new(), errors: Vec::new() };
    let model = model.map(&mut r);
    let extra: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).filter(|n| !r.wanted.iter().any(|w| w == n)).collect();
    if !extra.is_empty() {
        r.errors.push(format!("not parameters of this model: {}", extra.join(", ")));
    }
    if r.errors.is_empty() {
        Ok(model)
    } else {
        Err(SpecError::new(r.errors.join("; ")))
    }
}

/// The safetensors bytes of `tensors` (in the given order) with string `metadata`.
pub fn encode_safetensors(tensors: &[NamedTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings"));
    }
    let mut offset = 0usize;
    for t in tensors {
        let bytes = t.values.byte_len();
        header.insert(t.name.clone(), serde_json::json!({ "dtype": t.values.dtype(), "shape": t.shape, "data_offsets": [offset, offset + bytes] }));
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).expect("a JSON object");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(&t.values.le_bytes());
    }
    out
}

/// Tensors (in file order) and metadata of safetensors `bytes`; F32 and I64 only.
pub fn decode_safetensors(bytes: &[u8], name: &str) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>), SpecError> {
    let bad = |why: String| SpecError::new(format!("{name}: not a safetensors file: {why}"));
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or_else(|| bad("shorter than 8 bytes".into()))?;
    let data_start = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).filter(|&e| e <= bytes.len()).ok_or_else(|| bad(format!("header length {n} exceeds the file")))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..data_start]).map_err(|e| bad(format!("header: {e}")))?;
    let data = &bytes[data_start..];
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (key, entry) in header {
        if key == "__metadata__" {
            metadata = serde_json::from_value(entry).map_err(|e| bad(format!("__metadata__: {e}")))?;
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [usize; 2],
        }
        let e: Entry = serde_json::from_value(entry).map_err(|e| bad(format!("{key}: {e}")))?;
        let [begin, end] = e.data_offsets;
        let raw = data.get(begin..end).ok_or_else(|| bad(format!("{key}: data_offsets [{begin}, {end}] outside the data ({} bytes)", data.len())))?;
        let count = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("{key}: shape {:?} overflows", e.shape)))?;
        let (width, values) = match e.dtype.as_str() {
            "F32" => (4, Values::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect())),
            "I64" => (8, Values::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect())),
            other => return Err(bad(format!("{key}: dtype {other}; attnlab reads F32 and I64"))),
        };
        if Some(raw.len()) != count.checked_mul(width) {
            return Err(bad(format!("{key}: {} bytes for shape {:?} of {}", raw.len(), e.shape, e.dtype)));
        }
        tensors.push((begin, NamedTensor { name: key, shape: e.shape, values }));
    }
    tensors.sort_by_key(|(begin, _)| *begin);
    Ok((tensors.into_iter().map(|(_, t)| t).collect(), metadata))
}

/// A trained run read back: its spec, tokenizer and last checkpoint's model.
pub struct LoadedRun {
    pub root: PathBuf,
    pub spec: ExperimentSpec,
    pub tokenizer: Tokenizer,
    pub model: Gpt,
}

/// Loads the run in `run` (its folder or its checkpoint folder), checking the checkpoint's
/// checksums, the tokenizer against `model.vocab`, and that every weight is finite.
pub fn load_run(run: &Path, device: &Device) -> Result<LoadedRun> {
    let root = if run.join("config.toml").exists() { run.to_path_buf() } else { run.parent().map(Path::to_path_buf).unwrap_or_default() };
    let config = root.join("config.toml");
    if !config.exists() {
        return Err(SpecError::new(format!("{}: no config.toml here or in its parent folder; give a run folder (runs/<experiment>/<run-id>)", run.display())).into());
    }
    let spec = ExperimentSpec::load(&config, &[])?;
    let tokenizer_path = root.join("tokenizer.json");
    let tokenizer: Tokenizer = serde_json::from_str(&std::fs::read_to_string(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?)
        .map_err(|e| SpecError::new(format!("{}: not a tokenizer: {e}", tokenizer_path.display())))?;
    if tokenizer.vocab_size() != spec.model.vocab {
        return Err(SpecError::new(format!("{}: model.vocab = {} but tokenizer.json has {} tokens", config.display(), spec.model.vocab, tokenizer.vocab_size())).into());
    }
    let checkpoint = root.join("checkpoint");
    // The same checksums a resume checks: a damaged checkpoint is refused, not used.
    crate::checkpoint::verify(&checkpoint).map_err(|e| {
        anyhow::anyhow!("{e:#}: the checkpoint is damaged{}", if crate::checkpoint::previous(&checkpoint).exists() { " (checkpoint.prev/ holds the one before it)" } else { "" })
    })?;
    let weights = checkpoint.join("model.bpk");
    let model = Gpt::new(&spec.model, device).try_load_file(&weights).map_err(|e| anyhow::anyhow!("loading {}: {e:?}", weights.display()))?;
    let bad = crate::trainer::non_finite_params(&model);
    if bad > 0 {
        return Err(anyhow::anyhow!("{}: {bad} parameter tensors hold NaN or infinity (a diverged run); nothing to use", weights.display()));
    }
    Ok(LoadedRun { root, spec, tokenizer, model })
}

/// Tokens of the probe: a fixed, deterministic sequence of `len` ids below `vocab`.
fn probe_tokens(vocab: usize, len: usize) -> Vec<i64> {
    (0..len).map(|i| ((i * 7919 + 13) % vocab) as i64).collect()
}

/// Writes `model.safetensors`, `config.json` (the `[model]` table) and `probe.safetensors`
/// (`tokens` `[1, T]` I64 and the model's `logits` `[1, T, vocab]`, T = min(max_seq, 64)) to
/// `out`, which must not exist yet. Returns the files written.
pub fn export_run(loaded: &LoadedRun, out: &Path) -> Result<Vec<PathBuf>> {
    let Some(name) = out.file_name() else {
        return Err(SpecError::new(format!("--out {:?}: give a folder name (it must not exist yet)", out.display().to_string())).into());
    };
    if out.exists() {
        return Err(SpecError::new(format!("--out {}: already exists; give a new folder (an export never overwrites)", out.display())).into());
    }
    let model = &loaded.model;
    let m = &loaded.spec.model;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "attnlab".to_string());
    metadata.insert("linear_layout".to_string(), "[d_in, d_out]: y = x @ W".to_string());
    metadata.insert("model".to_string(), serde_json::to_string(m)?);
    let tensors = named_tensors(model);
    let t = m.max_seq.min(64);
    let tokens = probe_tokens(m.vocab, t);
    let device = model.embed.weight.device();
    let input = Tensor::<2, Int>::from_data(TensorData::new(tokens.clone(), [1, t]), &device);
    let logits = model.forward(input).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits");
    let probe = [
        NamedTensor { name: "tokens".into(), shape: vec![1, t], values: Values::I64(tokens) },
        NamedTensor { name: "logits".into(), shape: vec![1, t, m.vocab], values: Values::F32(logits) },
    ];
    // Written whole into a hidden sibling folder, then renamed: a failed export leaves nothing.
    let tmp = out.parent().unwrap_or(Path::new("")).join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let files = [
        ("model.safetensors", encode_safetensors(&tensors, &metadata)),
        ("config.json", serde_json::to_vec_pretty(m)?),
        ("probe.safetensors", encode_safetensors(&probe, &BTreeMap::new())),
    ];
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, bytes) in &files {
            std::fs::write(tmp.join(name), bytes).with_context(|| format!("writing {}", tmp.join(name).display()))?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("moving {} to {}", tmp.display(), out.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(files.iter().map(|(name, _)| out.join(name)).collect())
}

/// A model of `config` with the weights of an exported `model.safetensors`.
pub fn import_safetensors(config: &attnlab_model::ModelConfig, file: &Path, device: &Device) -> Result<Gpt> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (tensors, _) = decode_safetensors(&bytes, &file.display().to_string())?;
    let non_finite: Vec<&str> = tensors.iter().filter(|t| matches!(&t.values, Values::F32(v) if v.iter().any(|x| !x.is_finite()))).map(|t| t.name.as_str()).collect();
    if !non_finite.is_empty() {
        return Err(SpecError::new(format!("{}: NaN or infinity in {}", file.display(), non_finite.join(", "))).into());
    }
    Ok(load_named(Gpt::new(config, device), &tensors).map_err(|e| SpecError::new(format!("{}: {e}", file.display())))?)
}
