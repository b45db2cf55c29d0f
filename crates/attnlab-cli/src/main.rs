//! `attnlab`: train small transformers with many attention mechanisms and compare them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use attnlab_data::Tokenizer;
use attnlab_exp::trainer::RunOutcome;
use attnlab_exp::{parse_device, train, ExperimentSpec, SpecError, TrainOptions};
use attnlab_model::{generate, Gpt, Sampling};
use burn::module::Module;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "attnlab", version, about = "Train small transformers with many attention mechanisms and compare them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one run from an experiment file.
    Train {
        /// Experiment TOML file.
        file: PathBuf,
        /// Output folder for run stores.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Backend: cpu (burn-flex), wgpu, cuda (if built with the feature).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Override a config field, e.g. --set model.attention.kind=gqa --set model.attention.kv_heads=2.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Sample text from a trained run (its folder or its checkpoint folder).
    Generate {
        run: PathBuf,
        #[arg(long, default_value = "\n")]
        prompt: String,
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<SpecError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { file, out, device, sets, quiet } => {
            let backend = parse_device(&device)?;
            let spec = ExperimentSpec::load(&file, &sets)?;
            let prepared = spec.prepare(&file.display().to_string())?;
            let counts = Gpt::new(&prepared.spec.model, &burn::tensor::Device::flex()).param_counts();
            tracing::info!(
                run = %prepared.run_id,
                attention = %prepared.spec.model.attention.label(),
                params = counts.total,
                mixer_params = counts.mixer,
                data = %prepared.data_source,
                device = %device,
                "training"
            );
            let opts = TrainOptions { out, device: backend, device_name: device, progress: !quiet, stop_at: None };
            match train(&prepared, &opts)? {
                RunOutcome::Finished(s) | RunOutcome::AlreadyFinished(s) => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                }
                RunOutcome::Stopped { step } => println!("stopped at step {step}"),
            }
            Ok(())
        }
        Command::Generate { run, prompt, tokens, temperature, top_k, seed, device } => {
            let device = parse_device(&device)?;
            let root = if run.join("config.toml").exists() { run.clone() } else { run.parent().map(Path::to_path_buf).unwrap_or_default() };
            let config = root.join("config.toml");
            let spec = ExperimentSpec::load(&config, &[])?;
            let tokenizer: Tokenizer = serde_json::from_str(
                &std::fs::read_to_string(root.join("tokenizer.json")).with_context(|| format!("reading {}", root.join("tokenizer.json").display()))?,
            )?;
            if tokenizer.vocab_size() != spec.model.vocab {
                return Err(SpecError::new(format!("{}: model.vocab = {} but tokenizer.json has {} tokens", config.display(), spec.model.vocab, tokenizer.vocab_size())).into());
            }
            let weights = root.join("checkpoint").join("model.bpk");
            let model = Gpt::new(&spec.model, &device)
                .try_load_file(&weights)
                .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", weights.display()))?;
            let ids = tokenizer.encode(&prompt).map_err(|e| SpecError::new(format!("--prompt: {e}")))?;
            if ids.is_empty() {
                return Err(SpecError::new("--prompt: must not be empty").into());
            }
            if ids.len() + tokens > spec.model.max_seq {
                return Err(SpecError::new(format!("--tokens = {tokens}: prompt ({}) + tokens must be ≤ model.max_seq = {}", ids.len(), spec.model.max_seq)).into());
            }
            let sampling = Sampling { temperature, top_k: Some(top_k), seed };
            let out = generate(&model, &ids, tokens, sampling, &device);
            println!("{}{}", prompt, tokenizer.decode(&out));
            Ok(())
        }
    }
}
