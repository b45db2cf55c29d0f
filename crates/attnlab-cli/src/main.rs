//! `attnlab`: train small transformers with many attention mechanisms and compare them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use attnlab_data::Tokenizer;
use attnlab_exp::sweep::{in_shard, load_experiment, load_point, parse_shard, Experiment};
use attnlab_exp::trainer::{run_status, RunOutcome};
use attnlab_exp::{parse_device, train, SpecError, TrainOptions};
use attnlab_model::{generate_cropped, Gpt, Sampling};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (the library is linked in as the global allocator).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keep freed memory instead of returning it to the OS after 10 ms (mimalloc's default).
/// A training step frees and re-allocates the same tensor sizes every ~100 ms; with purging on,
/// every step re-faults and the kernel zeroes its pages again (20× more page faults, ~10% of a
/// CPU step). `MIMALLOC_PURGE_DELAY` in the environment still wins when set.
fn keep_freed_memory() {
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15; // mimalloc v3 `mi_option_purge_delay`
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option store in the allocator linked into this binary.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(name = "attnlab", version, about = "Train small transformers with many attention mechanisms and compare them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory bound for the checks made before any compute (e.g. 8G, 512MiB); default: this
    /// machine's memory. A config whose estimated need exceeds it is refused (exit 2).
    #[arg(long, global = true, value_name = "SIZE", env = "ATTNLAB_MAX_MEMORY")]
    max_memory: Option<String>,
}

/// What `train` and `sweep` share: the experiment, where runs go, the backend, overrides.
#[derive(clap::Args)]
struct RunArgs {
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
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Seconds after which a run lock whose heartbeat stopped (a killed process, a dead node)
    /// is stale and taken over, on any host (≥ 30; heartbeats every 10 s).
    #[arg(long, default_value_t = attnlab_exp::lock::DEFAULT_LEASE.as_secs())]
    lock_lease: u64,
}

#[derive(Subcommand)]
enum BenchCommand {
    Decode {
        file: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Context lengths (tokens already in the state).
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096")]
        contexts: Vec<usize>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// Timed decode steps per point.
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write plots here (decode_time.svg: ms per token vs context; decode_state.svg:
        /// state bytes per sequence vs context).
        #[arg(long)]
        plots: Option<PathBuf>,
    },
    /// Time and peak memory of one attention layer vs sequence length, for every attention
    /// config of an experiment file; each point runs in a fresh child process.
    Scaling {
        file: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Sequence lengths.
        #[arg(long, value_delimiter = ',', default_value = "64,128,256,512,1024,2048")]
        lengths: Vec<usize>,
        /// infer (forward), train (forward + backward), train-ckpt (with gradient checkpointing).
        #[arg(long, value_delimiter = ',', default_value = "infer,train")]
        modes: Vec<String>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed passes per point (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also plot peak memory and time vs length (log-log) into this folder
        /// (scaling_memory.svg, scaling_time.svg).
        #[arg(long)]
        plots: Option<PathBuf>,
    },
    /// Training tokens/s, ms/step, MFU and peak memory for every sweep point of an experiment
    /// (seeds ignored); each point runs in a fresh child process.
    Train {
        file: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Timed steps per point.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Run every point this many times, interleaved (A B C C B A A B C …), and end with each
        /// point's median tokens/s and its ratio to the first point within each round (median,
        /// min–max): on a shared machine whose speed drifts, compare the ratios.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Also write the results as JSON here (every measurement, with its round).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The device's matmul peak (the denominator of MFU): square products of growing size
    /// (256 up to 8192, while one product takes under 50 ms), best of 5 each, and the best of them.
    Peak {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// One matmul side n only (2·n³ FLOPs per product) instead of the sweep.
        #[arg(long)]
        size: Option<usize>,
        /// Element type of the products: f32, f16 or bf16 (where the device computes in it).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Seconds to generate a task's training examples (`data.train_samples` of `--seq-len`
    /// tokens), for every task kind: generation must never be the bottleneck.
    Tasks {
        #[arg(long, default_value_t = 12_800)]
        samples: usize,
        #[arg(long, default_value_t = 1024)]
        seq_len: usize,
        /// Repeats (best reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// One training point (the child process of `bench train`); prints it as JSON.
    #[command(hide = true)]
    TrainPoint {
        file: PathBuf,
        index: usize,
        steps: usize,
        warmup: usize,
        device: String,
        /// The device peak (FLOP/s) the parent measured once, so every point shares it.
        peak_flops: f64,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// One scaling point (the child process of `bench scaling`); prints it as JSON.
    #[command(hide = true)]
    ScalingPoint {
        /// The attention config as JSON.
        attention: String,
        d_model: usize,
        heads: usize,
        seq: usize,
        batch: usize,
        mode: String,
        reps: usize,
        device: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Train one run from an experiment file (of a file with a [sweep]: the point --point N).
    Train {
        #[command(flatten)]
        run: RunArgs,
        /// With a [sweep]: train its run N (the `#` column of `attnlab sweep --dry-run`).
        #[arg(long)]
        point: Option<usize>,
        /// Continue the finished run in this folder to the file's (larger) train.steps, as a new
        /// run (README: "Extending a run"; the schedule restarts from the old step count).
        #[arg(long, value_name = "RUN")]
        extend: Option<PathBuf>,
    },
    /// Run every point of an experiment's [sweep] (all seeds), skipping finished runs and
    /// resuming interrupted ones.
    Sweep {
        #[command(flatten)]
        run: RunArgs,
        /// Run only every n-th run, starting at i (i/n), e.g. a Slurm array task.
        #[arg(long)]
        shard: Option<String>,
        /// Print the run table and stop.
        #[arg(long)]
        dry_run: bool,
        /// When every run is done, write the report (tables and plots) to
        /// `<out>/<experiment>/report/` and print its table.
        #[arg(long)]
        report: bool,
    },
    /// Benchmarks. `decode`: cached decode tokens/s and state bytes for every attention
    /// config of an experiment file (its sweep points, seeds ignored).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Tables and plots from a run store (runs/<experiment>); several stores side by side
    /// (`report runs/a runs/b`: each config once per store, labelled store=…).
    Report {
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Output folder (default: reports/<experiment>, or reports/<a>-vs-<b> for several).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device peak in GFLOP/s (from `attnlab bench peak`) for the MFU of runs whose
        /// summaries predate it.
        #[arg(long)]
        peak_gflops: Option<f64>,
    },
    /// List every attention kind: its fields with defaults, what it is, its decode state (the
    /// README's kinds table, from the same source).
    Kinds {
        /// Print the Markdown table instead of plain text.
        #[arg(long)]
        markdown: bool,
    },
    /// Remove the lock of a run folder (runs/<experiment>/<run-id>) left by a process or node
    /// that died; a lock that looks live needs --force.
    Unlock {
        run: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Write a trained run's weights as safetensors for PyTorch and other tools (README:
    /// "Exporting to PyTorch"): model.safetensors, config.json and probe.safetensors (probe
    /// tokens and this model's logits, to check a re-implementation against).
    Export {
        /// The run folder (runs/<experiment>/<run-id>) or its checkpoint folder.
        run: PathBuf,
        /// Only safetensors for now.
        #[arg(long, default_value = "safetensors")]
        format: String,
        /// Output folder, which must not exist (default: <run>/export).
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// Sample with these weights instead of the checkpoint's: a safetensors file with the
        /// names and shapes `attnlab export` writes (e.g. edited or trained in PyTorch).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
    },
    /// Score a trained run again on its evaluation windows (the validation windows training
    /// used, or a task's test set), optionally at another window length (--block), with the
    /// mean loss by position.
    Eval {
        /// The run folder (runs/<experiment>/<run-id>).
        run: PathBuf,
        /// `val`, or `test` for a synthetic task.
        #[arg(long, default_value = "val")]
        split: String,
        /// Tokens per window (text runs; ≤ model.max_seq); default: the run's train.block.
        #[arg(long)]
        block: Option<usize>,
        /// Batches of train.batch windows; default: the run's eval.batches.
        #[arg(long)]
        batches: Option<usize>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Inference-time settings: eval.inference.kind=star (with eval.inference.block,
        /// .anchor, .hosts, .query), =adamas | sink_window | pages | oracle (with
        /// eval.inference.budget, .prefill, .dense_layers, .tau, .sinks, .page), eval.loops=R,
        /// eval.exit_q=q.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Linearise a trained softmax run (mha, mqa, gqa) into LoLCATs: writes the experiment
    /// (`<out>/<name>.toml`: the source's data and shape, `kind = "lolcats"`, train.init_from =
    /// RUN, stage 1 attention transfer, stage 2 LoRA) and trains it as a normal run.
    Linearize {
        /// The finished run folder (runs/<experiment>/<run-id>).
        run: PathBuf,
        /// The method (only lolcats).
        #[arg(long, default_value = "lolcats")]
        to: String,
        #[arg(long, default_value_t = 200)]
        transfer_steps: usize,
        #[arg(long, default_value_t = 200)]
        lora_steps: usize,
        #[arg(long, default_value_t = 1e-2)]
        transfer_lr: f64,
        #[arg(long, default_value_t = 1e-4)]
        lora_lr: f64,
        /// The "no attention transfer" ablation: one stage training maps, mixing factors and
        /// adapters on the next-token loss (transfer + lora steps, at --lora-lr).
        #[arg(long)]
        no_transfer: bool,
        /// The new experiment's name (default: <source experiment>_lolcats).
        #[arg(long)]
        name: Option<String>,
        /// Output folder for run stores (the experiment file is written there too).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Override a field of the new experiment before its stages are chosen, e.g.
        /// --set model.attention.window=0 (written into the file).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Write the experiment file, validate it and stop.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    // `attnlab … | head`: a closed pipe ends the process quietly (Rust ignores SIGPIPE by
    // default, and `println!` would panic on the EPIPE error); during training it asks for a
    // checkpoint and a stop instead (see `on_signal`), so `train … | tee log` loses nothing.
    // Plain lines (no colour codes) when stderr is a file or a pipe: a batch job's log.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr must not panic (the default reports the failed write with eprintln!).
        .log_internal_errors(false)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    install_interrupt_handler();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() || e.downcast_ref::<StoppedBetweenRuns>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) if e.downcast_ref::<SpecError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) if e.downcast_ref::<Incomplete>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(Incomplete::CODE)
        }
        Err(e) if e.downcast_ref::<Diverged>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(Diverged::CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Peak memory and time against sequence length, one line per attention config and mode.
fn scaling_plots(points: &[attnlab_exp::scaling::ScalingPoint], batch: usize, dir: &Path) -> Result<()> {
    use attnlab_report::plots::{lines_svg, Axes};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let series = |value: &dyn Fn(&attnlab_exp::scaling::ScalingPoint) -> Option<f64>| {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for p in points {
            let Some(v) = value(p).filter(|v| *v > 0.0) else { continue };
            let name = format!("{} {}", p.attention, p.mode);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, pts)) => pts.push((p.seq as f64, v)),
                None => out.push((name, vec![(p.seq as f64, v)])),
            }
        }
        out
    };
    let axes = |title: &str, y: &str| Axes { title: format!("{title} of one attention layer (batch {batch})"), x: "sequence length (log scale)".into(), y: y.into(), log_y: true };
    lines_svg(&axes("Peak memory", "peak resident memory added, MiB (log scale)"), series(&|p| p.peak_bytes.map(|b| b as f64 / (1u64 << 20) as f64)), &dir.join("scaling_memory.svg"))?;
    lines_svg(&axes("Time per pass", "ms (log scale)"), series(&|p| Some(p.ms_median)), &dir.join("scaling_time.svg"))
}

/// Decode time and state size against context, one line per attention config and batch.
fn decode_plots(points: &[attnlab_exp::bench::DecodePoint], dir: &Path) -> Result<()> {
    use attnlab_report::plots::{lines_svg, Axes};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let series = |value: &dyn Fn(&attnlab_exp::bench::DecodePoint) -> f64| {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for p in points {
            let name = format!("{} batch {}", p.attention, p.batch);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, pts)) => pts.push((p.context as f64, value(p))),
                None => out.push((name, vec![(p.context as f64, value(p))])),
            }
        }
        out
    };
    let axes = |title: &str, y: &str| Axes { title: title.into(), x: "context, tokens (log scale)".into(), y: y.into(), log_y: true };
    lines_svg(&axes("Cached decode: time per step", "ms per step (log scale)"), series(&|p| p.ms_per_step), &dir.join("decode_time.svg"))?;
    lines_svg(&axes("Decode state of the whole model, one sequence", "bytes (log scale)"), series(&|p| p.state_bytes_per_sequence as f64), &dir.join("decode_state.svg"))
}

/// Columns of the terminal on stdout (`TIOCGWINSZ`), else `$COLUMNS`; `None` when stdout is
/// a file or a pipe (no wrapping then).
fn terminal_width() -> Option<u16> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize struct of a terminal file descriptor.
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
        return Some(ws.ws_col);
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok())
}

/// An aligned table fitted to the terminal's width (cells wrap; no limit in a file or pipe).
fn table(header: Vec<String>, rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_BORDERS_ONLY).set_header(header).add_rows(rows);
    if let Some(width) = terminal_width() {
        t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic).set_width(width);
    }
    t.to_string()
}

/// The cells of a Markdown table's lines (header, then rows; the `|---|` line dropped).
fn markdown_cells(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| !l.trim_start_matches('|').starts_with("---"))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// Most tokens one `generate` call produces.
const MAX_GENERATE: usize = 1_000_000;

/// Modes of `bench scaling`.
const SCALING_MODES: &[&str] = &["infer", "train", "train-ckpt"];

/// A run stopped by Ctrl-C / SIGTERM after writing its checkpoint.
#[derive(Debug)]
struct Interrupted(String, usize);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted: run {} checkpointed at step {}; run the same command again to resume", self.0, self.1)
    }
}

impl std::error::Error for Interrupted {}

/// A sweep stopped by a signal between two runs (nothing to checkpoint).
#[derive(Debug)]
struct StoppedBetweenRuns;

impl std::fmt::Display for StoppedBetweenRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted between runs; run the same command again to continue the sweep")
    }
}

impl std::error::Error for StoppedBetweenRuns {}

/// `train` of a run that ended diverged (its summary is written; the sweep goes on instead).
#[derive(Debug)]
struct Diverged(String, Option<usize>);

impl Diverged {
    const CODE: u8 = 3;
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.1.map_or(String::new(), |s| format!(" at step {s}"));
        write!(f, "run {} diverged{at} (exit {}); lower train.lr or raise train.warmup", self.0, Self::CODE)
    }
}

impl std::error::Error for Diverged {}

/// The end of `train`: the few numbers a researcher looks at first, and where the rest is.
fn print_summary(s: &attnlab_exp::Summary, out: &Path, already: bool) {
    let dir = out.join(&s.experiment).join(&s.run_id);
    let state = match (already, s.status.as_str()) {
        (true, status) => format!("already {status}"),
        (false, status) => status.to_string(),
    };
    let acc = s.final_test_accuracy.map_or(String::new(), |a| format!(", test accuracy {:.1}%", 100.0 * a));
    // Throughput leaves out the first steps (warm-up); a run too short to have others has none.
    let speed = if s.train_tokens_per_sec.is_finite() { format!("{:.0} tokens/s", s.train_tokens_per_sec) } else { "tokens/s n/a (too few steps)".into() };
    println!(
        "run {} ({}) {state}: best val loss {:.4}, final val loss {:.4}{acc}, {speed}, {:.0} s",
        s.run_id, s.attention, s.best_val_loss, s.final_val_loss, s.wall_seconds
    );
    println!("run folder: {}", dir.display());
    println!("every metric: {}", dir.join("summary.json").display());
}

/// A sweep that ended with runs skipped because other processes hold their locks.
#[derive(Debug)]
struct Incomplete(Vec<String>);

impl Incomplete {
    /// `EX_TEMPFAIL`: run the same sweep again once the other processes are done.
    const CODE: u8 = 75;
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "warning: {} runs were skipped because other processes hold their locks:", self.0.len())?;
        for line in &self.0 {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "the sweep is not complete (exit {}): run it again when those processes are done; a lock of a dead process \
             expires after --lock-lease seconds, or remove it with `attnlab unlock RUN`",
            Self::CODE
        )
    }
}

impl std::error::Error for Incomplete {}

/// First Ctrl-C or SIGTERM during training: the trainer finishes its step, checkpoints and
/// stops; a second one exits at once (the last periodic checkpoint remains). A closed pipe
/// (SIGPIPE) during training also checkpoints and stops, however often it comes (the notices
/// written while stopping raise it again). Outside training (start-up, between runs, read-only
/// commands) there is nothing to save: the process exits at once, 130 (141 for a closed pipe).
extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here.
    if attnlab_exp::interrupt::graceful() {
        if sig != libc::SIGPIPE && attnlab_exp::interrupt::requested() {
            unsafe { libc::_exit(130) };
        }
        attnlab_exp::interrupt::request();
        return;
    }
    unsafe { libc::_exit(if sig == libc::SIGPIPE { 141 } else { 130 }) };
}

fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic flag and calls `_exit`.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGPIPE, handler);
    }
}

/// The backend for `device`; on an accelerator the memory check keeps to host-side terms.
fn backend(device: &str) -> Result<burn::tensor::Device> {
    let backend = parse_device(device)?;
    attnlab_exp::budget::set_accelerator(device != "cpu");
    Ok(backend)
}

/// Prints how a single run ended; an error (with its exit code) unless it finished.
fn report_outcome(outcome: RunOutcome, run_id: &str, out: &Path) -> Result<()> {
    match outcome {
        RunOutcome::Finished(s) | RunOutcome::AlreadyFinished(s) if s.status == "diverged" => {
            print_summary(&s, out, false);
            Err(Diverged(s.run_id.clone(), s.diverged_at_step).into())
        }
        RunOutcome::Finished(s) => Ok(print_summary(&s, out, false)),
        RunOutcome::AlreadyFinished(s) => Ok(print_summary(&s, out, true)),
        RunOutcome::Stopped { step } => Err(Interrupted(run_id.to_string(), step).into()),
        RunOutcome::Busy(holder) => Err(anyhow::anyhow!("run {run_id} is being trained by another process: {holder}")),
    }
}

fn read_experiment(file: &Path, sets: &[String]) -> Result<Experiment> {
    let text = attnlab_exp::spec::read_spec_file(file)?;
    Ok(load_experiment(&text, &file.display().to_string(), sets)?)
}

fn run(cli: Cli) -> Result<()> {
    if let Some(size) = &cli.max_memory {
        attnlab_exp::budget::set_max_memory(attnlab_exp::budget::parse_bytes(size)?);
        // The child processes of `bench train` / `bench scaling` read it from the environment.
        std::env::set_var("ATTNLAB_MAX_MEMORY", size);
    }
    match cli.command {
        Command::Eval { run, split, block, batches, device, json, sets } => {
            let settings = attnlab_exp::inference::EvalSettings::from_sets(&sets)?;
            let device = backend(&device)?;
            let r = attnlab_exp::eval::eval_run(&run, &split, block, batches, &settings, &device)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let acc = r.accuracy.map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a));
            if let Some(s) = &r.star {
                let gacc = s.global_accuracy.map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a));
                println!("{} ({}), {}: {} loss on the last {} tokens of {} windows of {} (context {} in {} blocks)", r.run, r.attention, r.settings, r.split, s.query, r.windows, r.block, s.context, s.blocks);
                println!("  star:   loss {:.4}{acc}", s.loss);
                println!("  global: loss {:.4}{gacc}", s.global_loss);
                println!("  phase 1 {:.3} s vs global prefill {:.3} s ({:.2}×); context KV cache of one batch of windows {} bytes, the largest host's share {}", s.phase1_seconds, s.prefill_seconds, s.phase1_seconds / s.prefill_seconds.max(1e-9), s.cache_bytes, s.largest_host_bytes);
                println!("(appended to {}/{})", r.run, attnlab_exp::eval::EVALS_FILE);
                return Ok(());
            }
            if let Some(s) = &r.sparse {
                let dacc = s.dense_accuracy.map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a));
                println!("{} ({}), {}: {} loss on the last {} tokens of each of {} windows of {}, decoded one at a time after a dense prefill of {}", r.run, r.attention, r.settings, r.split, s.decoded, r.windows, r.block, s.prefill);
                let recall = if s.recall.is_finite() { format!("{:.3}", s.recall) } else { "– (no step had more keys than the budget: every layer ran dense)".to_string() };
                println!("  selected: loss {:.4}{acc}, recall of the top keys {recall}", s.loss);
                println!("  dense:    loss {:.4}{dacc}", s.dense_loss);
                if r.settings.starts_with("adamas") {
                    let taus: Vec<String> = s.taus.iter().map(|t| format!("{t:.3}")).collect();
                    println!("  τ per layer [{}] (layers below dense_layers do not select); codes {} bytes/token", taus.join(", "), s.code_bytes_per_token);
                }
                println!("  decode {:.3} s (host-side selection) vs dense cached decode {:.3} s (not a speed comparison)", s.decode_seconds, s.dense_decode_seconds);
                println!("(appended to {}/{})", r.run, attnlab_exp::eval::EVALS_FILE);
                return Ok(());
            }
            let exits = r.mean_exit_loop.map_or(String::new(), |m| format!(", mean exit loop {m:.2}"));
            println!("{} ({}), {}: {} loss {:.4}{acc}{exits} ({} windows of {} tokens)", r.run, r.attention, r.settings, r.split, r.loss, r.windows, r.block);
            // The report's buckets (0, 1, 2–3, 4–7, …): one bucketing for the printout and the table.
            let buckets: Vec<String> = attnlab_report::tables::bucket_means(&r.loss_by_position)
                .into_iter()
                .map(|((lo, hi), loss)| {
                    // A bucket with no scored token (a task's pair section) has no loss.
                    let loss = if loss.is_nan() { "–".to_string() } else { format!("{loss:.3}") };
                    if hi - lo == 1 { format!("{lo}: {loss}") } else { format!("{lo}–{}: {loss}", hi - 1) }
                })
                .collect();
            println!("loss by position: {}", buckets.join(", "));
            println!("(appended to {}/{})", r.run, attnlab_exp::eval::EVALS_FILE);
            Ok(())
        }
        Command::Linearize { run, to, transfer_steps, lora_steps, transfer_lr, lora_lr, no_transfer, name, out, device, sets, dry_run, quiet } => {
            if to != "lolcats" {
                return Err(SpecError::new(format!("linearize: --to = {to:?}: allowed: lolcats")).into());
            }
            let backend = backend(&device)?;
            let options = attnlab_exp::linearize::Options { transfer_steps, lora_steps, transfer_lr, lora_lr, no_transfer, name };
            let text = attnlab_exp::linearize::lolcats_spec(&run, &options, &sets)?;
            // Validated before anything is written (the --set overrides are in the text).
            let spec = attnlab_exp::ExperimentSpec::from_toml_str(&text, "linearize", &[])?;
            spec.prepare("linearize")?;
            let file = out.join(format!("{}.toml", spec.name));
            if file.exists() && std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                return Err(SpecError::new(format!("linearize: {} exists with other contents; pick another --name or move it away", file.display())).into());
            }
            std::fs::create_dir_all(&out)?;
            attnlab_exp::store::write_atomic(&file, text.as_bytes())?;
            let exp = read_experiment(&file, &[])?;
            println!("wrote {} (the same run: attnlab train {} --out {})", file.display(), file.display(), out.display());
            let prepared = &exp.runs[0];
            if dry_run {
                println!("run {} ({}): valid; not trained (--dry-run)", prepared.run_id, prepared.spec.model.mixer_label());
                return Ok(());
            }
            let opts = TrainOptions { out: out.clone(), device: backend, device_name: device, progress: !quiet, stop_at: None, multi: None };
            report_outcome(train(prepared, &opts)?, &prepared.run_id, &out)
        }
        Command::Train { run: RunArgs { file, out, device, sets, quiet, lock_lease }, point, extend } => {
            attnlab_exp::lock::set_lease(lock_lease)?;
            let backend = backend(&device)?;
            let exp = match point {
                None => read_experiment(&file, &sets)?,
                Some(i) => load_point(&attnlab_exp::spec::read_spec_file(&file)?, &file.display().to_string(), &sets, i)?,
            };
            let run = match (point, exp.runs.len()) {
                (None, 1) => &exp.runs[0],
                (None, n) => {
                    return Err(SpecError::new(format!("{}: has a [sweep] of {n} runs; pick one with --point N (0 to {}), or use `attnlab sweep`", file.display(), n - 1)).into())
                }
                // load_point prepared that one run alone.
                (Some(_), _) => &exp.runs[0],
            };
            let mut run = run.clone();
            if let Some(old) = &extend {
                attnlab_exp::extend::extend(&mut run, old)?;
            }
            let run = &run;
            attnlab_exp::trainer::check_precision(run.spec.train.precision, &backend, &device)?;
            let counts = Gpt::new(&run.spec.model, &burn::tensor::Device::flex()).param_counts();
            tracing::info!(
                run = %run.run_id,
                attention = %run.spec.model.mixer_label(),
                params = counts.total,
                mixer_params = counts.mixer,
                data = %run.data_source,
                device = %device,
                "training"
            );
            let opts = TrainOptions { out, device: backend, device_name: device, progress: !quiet, stop_at: None, multi: None };
            let out = opts.out.clone();
            report_outcome(train(run, &opts)?, &run.run_id, &out)
        }
        Command::Sweep { run: RunArgs { file, out, device, sets, quiet, lock_lease }, shard, dry_run, report } => {
            attnlab_exp::lock::set_lease(lock_lease)?;
            let backend = backend(&device)?;
            let shard = shard.as_deref().map(parse_shard).transpose()?;
            let exp = read_experiment(&file, &sets)?;
            for run in &exp.runs {
                attnlab_exp::trainer::check_precision(run.spec.train.precision, &backend, &device)?;
            }
            println!("{} runs of {} (output {}):", exp.runs.len(), exp.name, out.join(&exp.name).display());
            let rows: Vec<Vec<String>> = exp
                .points
                .iter()
                .zip(&exp.runs)
                .map(|(point, run)| {
                    let status = if in_shard(point.index, shard) { run_status(&out, run) } else { "other shard".into() };
                    vec![point.index.to_string(), run.run_id.clone(), status, point.describe_mixers(&run.spec.model.mixer_label())]
                })
                .collect();
            println!("{}", table(["#", "run id", "status", "point"].map(String::from).to_vec(), rows));
            if dry_run {
                return Ok(());
            }
            let mine: Vec<usize> = exp.points.iter().filter(|p| in_shard(p.index, shard)).map(|p| p.index).collect();
            let multi = indicatif::MultiProgress::new();
            if quiet {
                multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let overall = multi.add(indicatif::ProgressBar::new(mine.len() as u64));
            let mut skipped = Vec::new();
            overall.set_style(indicatif::ProgressStyle::with_template("sweep {bar:30} {pos}/{len} runs [{elapsed_precise}<{eta_precise}]")?);
            for idx in mine {
                if attnlab_exp::interrupt::requested() {
                    return Err(StoppedBetweenRuns.into());
                }
                let run = &exp.runs[idx];
                let opts = TrainOptions { out: out.clone(), device: backend.clone(), device_name: device.clone(), progress: !quiet, stop_at: None, multi: Some(multi.clone()) };
                let line = match train(run, &opts)? {
                    RunOutcome::Finished(s) => format!("run {idx} {}: best val loss {:.4}, {:.0} tok/s", run.run_id, s.best_val_loss, s.train_tokens_per_sec),
                    RunOutcome::AlreadyFinished(s) => format!("run {idx} {}: already done (best val loss {:.4})", run.run_id, s.best_val_loss),
                    RunOutcome::Stopped { step } => return Err(Interrupted(run.run_id.clone(), step).into()),
                    RunOutcome::Busy(holder) => {
                        skipped.push(format!("run {idx} {}: {holder}", run.run_id));
                        format!("run {idx} {}: skipped, {holder}", run.run_id)
                    }
                };
                if quiet || multi.is_hidden() {
                    println!("{line}");
                } else {
                    multi.println(line)?;
                }
                overall.inc(1);
            }
            overall.finish();
            if !skipped.is_empty() {
                return Err(Incomplete(skipped).into());
            }
            if report {
                let runs = out.join(&exp.name);
                let dest = runs.join("report");
                attnlab_report::write_report_stores_with(&[runs.clone()], &dest, None, &fill_keys_attended)?;
                let text = std::fs::read_to_string(dest.join("README.md"))?;
                // The results table: from its heading to the next blank line after it.
                let lines: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("## Results")).skip(2).take_while(|l| !l.is_empty()).collect();
                let mut cells = markdown_cells(&lines);
                if !cells.is_empty() {
                    let header = cells.remove(0);
                    println!("\n{}", table(header, cells));
                }
                println!("\nreport: {}", dest.join("README.md").display());
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Decode { file, device, sets, contexts, batches, tokens, json, plots } } => {
            let backend = backend(&device)?;
            let exp = read_experiment(&file, &sets)?;
            if tokens == 0 || contexts.is_empty() || batches.is_empty() || batches.contains(&0) {
                return Err(SpecError::new("bench decode: --tokens, --contexts and --batches must be non-empty and ≥ 1").into());
            }
            let longest = contexts.iter().max().copied().unwrap_or(0);
            let capacity = longest
                .checked_add(tokens)
                .and_then(|c| c.checked_add(1))
                .ok_or_else(|| SpecError::new(format!("bench decode: --contexts {longest} + --tokens {tokens} overflows")))?;
            let mut configs: Vec<attnlab_model::ModelConfig> = Vec::new();
            let mut no_decode = Vec::new();
            for run in &exp.runs {
                let mut c = run.spec.model.clone();
                // A point without a decode path (MoSA's non-causal expert choice) is left out and
                // said; an experiment of such points only is refused.
                if let Some(e) = c.decode_error().map(|e| e.to_string()) {
                    if !no_decode.contains(&e) {
                        no_decode.push(e);
                    }
                    continue;
                }
                c.max_seq = capacity;
                let batch = batches.iter().max().copied().unwrap_or(1);
                attnlab_exp::budget::check(&attnlab_exp::budget::decode(&c, batch, capacity), &format!("bench decode ({}, batch {batch}, {capacity} tokens)", c.mixer_label()))?;
                if !configs.contains(&c) {
                    configs.push(c);
                }
            }
            if configs.is_empty() {
                return Err(SpecError::new(format!("bench decode: no point of this experiment has a decode path: {}", no_decode.join("; "))).into());
            }
            for e in &no_decode {
                println!("left out (no decode): {e}");
            }
            println!("decode benchmark on {device}: {} configs, {tokens} timed steps per point", configs.len());
            println!("{:<10} {:>7} {:>5} {:>12} {:>10} {:>14} {:>10}", "attention", "context", "batch", "tokens/s", "ms/step", "state bytes", "bytes/tok");
            let mut results = Vec::new();
            for c in &configs {
                for &context in &contexts {
                    for &batch in &batches {
                        let p = attnlab_exp::bench::decode_point(c, context, batch, tokens, &backend);
                        println!("{:<10} {:>7} {:>5} {:>12.1} {:>10.2} {:>14} {:>10}", p.attention, p.context, p.batch, p.decode_tokens_per_sec, p.ms_per_step, p.state_bytes_per_sequence, p.state_bytes_per_token);
                        results.push(p);
                    }
                }
            }
            if let Some(path) = json {
                attnlab_exp::store::write_atomic(&path, serde_json::to_string_pretty(&results)?.as_bytes())?;
            }
            if let Some(dir) = plots {
                decode_plots(&results, &dir)?;
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Scaling { file, device, sets, lengths, modes, batch, reps, json, plots } } => {
            backend(&device)?;
            let exp = read_experiment(&file, &sets)?;
            if let Some(bad) = modes.iter().find(|m| !SCALING_MODES.contains(&m.as_str())) {
                return Err(SpecError::new(format!("bench scaling: --modes: unknown mode {bad:?} (allowed: {})", SCALING_MODES.join(", "))).into());
            }
            if lengths.is_empty() || lengths.contains(&0) || batch == 0 || reps == 0 {
                return Err(SpecError::new("bench scaling: --lengths, --batch and --reps must be ≥ 1").into());
            }
            for run in &exp.runs {
                let longest = lengths.iter().max().copied().unwrap_or(0);
                attnlab_exp::budget::check(&attnlab_exp::budget::layer(run.spec.model.d_model, batch, longest), &format!("bench scaling (--lengths {longest}, --batch {batch})"))?;
            }
            let mut models: Vec<attnlab_model::ModelConfig> = Vec::new();
            // One layer of every distinct mixer (a hybrid schedule contributes each of its kinds).
            for run in &exp.runs {
                for a in run.spec.model.layer_attentions() {
                    if !models.iter().any(|m| m.attention == *a) {
                        let mut m = run.spec.model.clone();
                        (m.attention, m.pattern, m.overrides) = (a.clone(), Vec::new(), Default::default());
                        models.push(m);
                    }
                }
            }
            println!("scaling benchmark on {device}: one attention layer, batch {batch}, median of {reps} passes");
            println!("{:<14} {:<10} {:>6} {:>10} {:>12}", "attention", "mode", "seq", "ms", "peak MiB");
            let exe = std::env::current_exe()?;
            let mut results = Vec::new();
            for m in &models {
                for mode in &modes {
                    for &seq in &lengths {
                        let out = std::process::Command::new(&exe)
                            .args(["bench", "scaling-point", &serde_json::to_string(&m.attention)?])
                            .args([m.d_model, m.heads, seq, batch].map(|v| v.to_string()))
                            .args([mode.as_str(), &reps.to_string(), &device])
                            .stderr(std::process::Stdio::inherit())
                            .output()?;
                        if !out.status.success() {
                            return Err(anyhow::anyhow!("scaling point {} {mode} seq {seq} failed ({})", m.attention.label(), out.status));
                        }
                        let p: attnlab_exp::scaling::ScalingPoint = serde_json::from_slice(&out.stdout)?;
                        let mib = p.peak_bytes.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / (1u64 << 20) as f64));
                        println!("{:<14} {:<10} {:>6} {:>10.2} {:>12}", p.attention, mode, p.seq, p.ms_median, mib);
                        results.push(p);
                    }
                }
            }
            if let Some(path) = json {
                attnlab_exp::store::write_atomic(&path, serde_json::to_string_pretty(&results)?.as_bytes())?;
            }
            if let Some(dir) = plots {
                scaling_plots(&results, batch, &dir)?;
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::ScalingPoint { attention, d_model, heads, seq, batch, mode, reps, device } } => {
            let backend = backend(&device)?;
            let shape = attnlab_model::ModelConfig {
                d_model,
                heads,
                max_seq: seq.max(1),
                attention: serde_json::from_str(&attention).map_err(|e| SpecError::new(format!("bench scaling-point: attention: {e}")))?,
                ..Default::default()
            };
            shape.validate().map_err(|e| SpecError::new(format!("bench scaling-point: {} = {}: {}", e.field, e.value, e.allowed)))?;
            if seq == 0 || batch == 0 || reps == 0 || !SCALING_MODES.contains(&mode.as_str()) {
                return Err(SpecError::new(format!("bench scaling-point: seq, batch and reps must be ≥ 1 and mode one of {}", SCALING_MODES.join(", "))).into());
            }
            attnlab_exp::budget::check(&attnlab_exp::budget::layer(d_model, batch, seq), "bench scaling-point")?;
            let case = attnlab_exp::scaling::ScalingCase {
                attention: shape.attention.clone(),
                d_model,
                heads,
                seq,
                batch,
                train: mode != "infer",
                checkpointing: mode == "train-ckpt",
                reps,
            };
            println!("{}", serde_json::to_string(&attnlab_exp::scaling::scaling_point(&case, &backend))?);
            Ok(())
        }
        Command::Bench { what: BenchCommand::Train { file, device, sets, steps, warmup, rounds, json } } => {
            backend(&device)?;
            let exp = read_experiment(&file, &sets)?;
            if steps == 0 || steps > 1_000_000 || warmup > 1_000_000 {
                return Err(SpecError::new(format!("bench train: --steps = {steps}, --warmup = {warmup}: --steps must be in [1, 1000000] and --warmup ≤ 1000000")).into());
            }
            if !(1..=100).contains(&rounds) {
                return Err(SpecError::new(format!("bench train: --rounds = {rounds}: must be in [1, 100]")).into());
            }
            // One point per distinct config: seeds are ignored.
            let mut picked: Vec<(usize, String)> = Vec::new();
            for (point, run) in exp.points.iter().zip(&exp.runs) {
                let mut spec = run.spec.clone();
                spec.train.seed = 0;
                let key = serde_json::to_string(&spec)?;
                if !picked.iter().any(|(_, k)| *k == key) {
                    picked.push((point.index, key));
                }
            }
            let each = if rounds > 1 { format!(", {rounds} rounds (points interleaved)") } else { String::new() };
            println!("training benchmark on {device}: {} points, {warmup} warm-up + {steps} timed steps each{each}", picked.len());
            let backend = backend(&device)?;
            if let Some(gpu) = attnlab_exp::device::describe(&backend) {
                println!("device: {gpu}");
            }
            // MFU against the matmul peak in each point's compute type (train.precision).
            let mut peaks = Vec::new();
            for (index, _) in &picked {
                let precision = exp.runs[*index].spec.train.precision;
                attnlab_exp::trainer::check_precision(precision, &backend, &device)?;
                peaks.push((precision, attnlab_exp::peak::peak_flops(&backend, &device, precision.dtype())));
            }
            drop(backend);
            println!("{:<24} {:>5} {:>10} {:>10} {:>9} {:>7} {:>10}{}", "attention", "dtype", "tokens/s", "ms/step", "p90 ms", "MFU", "peak MiB", if rounds > 1 { "  round" } else { "" });
            let exe = std::env::current_exe()?;
            let mut results = Vec::new();
            for round in 1..=rounds {
                // Every other round runs the points in reverse, so that no point always runs first
                // (a position effect would not cancel in the within-round ratios otherwise).
                let mut this_round: Vec<Option<attnlab_exp::bench::TrainPoint>> = vec![None; picked.len()];
                let order: Vec<usize> = if round % 2 == 0 { (0..picked.len()).rev().collect() } else { (0..picked.len()).collect() };
                for slot in order {
                    let index = picked[slot].0;
                    let mut cmd = std::process::Command::new(&exe);
                    cmd.args(["bench", "train-point"]).arg(&file).args([index, steps, warmup].map(|v| v.to_string())).arg(&device).arg(peaks[slot].1.to_string());
                    for set in &sets {
                        cmd.args(["--set", set]);
                    }
                    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
                    if !out.status.success() {
                        return Err(anyhow::anyhow!("training point {index} failed ({})", out.status));
                    }
                    let mut p: attnlab_exp::bench::TrainPoint = serde_json::from_slice(&out.stdout)?;
                    p.round = round;
                    let mib = p.peak_rss_bytes.map_or("n/a".into(), |b| format!("{:.0}", b as f64 / (1u64 << 20) as f64));
                    let tag = if rounds > 1 { format!("  {round:>5}") } else { String::new() };
                    let star = if p.peak_exceeded { "*" } else { "%" };
                    println!("{:<24} {:>5} {:>10.0} {:>10.1} {:>9.1} {:>6.1}{star} {:>10}{tag}", p.attention, p.precision, p.tokens_per_sec, p.ms_per_step_median, p.ms_per_step_p90, 100.0 * p.mfu, mib);
                    this_round[slot] = Some(p);
                }
                results.extend(this_round.into_iter().flatten());
            }
            if !results.is_empty() {
                let mut seen = Vec::new();
                for (precision, peak) in &peaks {
                    if !seen.contains(precision) {
                        seen.push(*precision);
                        println!("peak (best {} matmul over sizes, `bench peak --dtype {0}`): {:.1} GFLOP/s", precision.name(), peak / 1e9);
                    }
                }
                if results.iter().any(|p| p.peak_exceeded) {
                    println!("note: points marked * achieved more FLOP/s than the measured peak; their MFU is taken against the achieved figure (100%)");
                }
            }
            if rounds > 1 {
                let summary = attnlab_exp::bench::round_summary(&results, picked.len());
                println!("over {rounds} rounds: median (min–max)");
                println!("{:<24} {:>24} {:>24}", "attention", "tokens/s", format!("ratio to {}", summary[0].attention));
                for s in &summary {
                    let [t, t0, t1] = s.tokens_per_sec;
                    let [r, r0, r1] = s.ratio;
                    println!("{:<24} {:>24} {:>24}", s.attention, format!("{t:.0} ({t0:.0}–{t1:.0})"), format!("{r:.3} ({r0:.3}–{r1:.3})"));
                }
            }
            if let Some(path) = json {
                attnlab_exp::store::write_atomic(&path, serde_json::to_string_pretty(&results)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::TrainPoint { file, index, steps, warmup, device, peak_flops, sets } } => {
            let backend = backend(&device)?;
            if steps == 0 || steps > 1_000_000 || warmup > 1_000_000 || !(peak_flops.is_finite() && peak_flops > 0.0) {
                return Err(SpecError::new("bench train-point: steps must be in [1, 1000000], warmup ≤ 1000000, peak_flops > 0").into());
            }
            let exp = read_experiment(&file, &sets)?;
            let run = exp.runs.get(index).ok_or_else(|| SpecError::new(format!("bench train-point: no run {index} (the file has {})", exp.runs.len())))?;
            let p = attnlab_exp::bench::train_point(run, &exp.points[index].describe(), warmup, steps, &backend, peak_flops);
            println!("{}", serde_json::to_string(&p)?);
            Ok(())
        }
        Command::Bench { what: BenchCommand::Tasks { samples, seq_len, repeats } } => {
            if samples == 0 || seq_len < 64 || seq_len > 1 << 20 {
                return Err(SpecError::new(format!("bench tasks: --samples = {samples} must be ≥ 1 and --seq-len = {seq_len} in [64, 2^20] (every task at that length)")).into());
            }
            let times = attnlab_exp::bench::task_generation(samples, seq_len, repeats).map_err(|e| SpecError::new(format!("bench tasks: data.task.{} = {}: {}", e.field, e.value, e.allowed)))?;
            println!("task generation: {samples} training examples of {seq_len} tokens, best of {repeats}");
            println!("{:<20} {:>10} {:>14}", "task", "seconds", "Mtokens/s");
            for (kind, s) in times {
                println!("{kind:<20} {s:>10.3} {:>14.1}", (samples * seq_len) as f64 / s / 1e6);
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Peak { device, size, dtype } } => {
            use attnlab_exp::spec::Precision;
            let Some(dt) = Precision::ALL.into_iter().find(|p| p.name() == dtype).map(Precision::dtype) else {
                return Err(SpecError::new(format!("bench peak: --dtype = {dtype:?}: allowed: f32, f16, bf16")).into());
            };
            if size == Some(0) {
                return Err(SpecError::new("bench peak: --size must be ≥ 1").into());
            }
            let largest = size.unwrap_or(attnlab_exp::peak::SIZES[attnlab_exp::peak::SIZES.len() - 1]);
            attnlab_exp::budget::check(&attnlab_exp::budget::matmul(largest), &format!("bench peak --size {largest}"))?;
            let backend = backend(&device)?;
            if !backend.supports_dtype(dt) {
                return Err(SpecError::new(format!("bench peak: --dtype = {dtype}: the {device} device does not compute in it")).into());
            }
            if let Some(gpu) = attnlab_exp::device::describe(&backend) {
                println!("device: {gpu}");
            }
            let sweep = match size {
                Some(n) => {
                    let (flops, seconds) = attnlab_exp::peak::measure_matmul(&backend, n, 5, dt);
                    vec![attnlab_exp::peak::SizePeak { n, flops, seconds }]
                }
                None => attnlab_exp::peak::peak_sweep(&backend, dt, 5),
            };
            for p in &sweep {
                println!("{device}: {dtype} matmul {n}×{n}·{n}×{n}: {:.1} GFLOP/s ({:.3} ms, best of 5)", p.flops / 1e9, p.seconds * 1e3, n = p.n);
            }
            println!("{device}: {dtype} peak: {:.1} GFLOP/s", attnlab_exp::peak::best(&sweep) / 1e9);
            Ok(())
        }
        Command::Report { runs, out, peak_gflops } => {
            if let Some(g) = peak_gflops.filter(|g| !(g.is_finite() && *g > 0.0)) {
                return Err(SpecError::new(format!("--peak-gflops = {g}: must be a finite number > 0 (from `attnlab bench peak`)")).into());
            }
            let names: Vec<String> = runs.iter().map(|r| attnlab_report::store_name(r)).collect();
            let out = out.unwrap_or_else(|| PathBuf::from("reports").join(names.join("-vs-")));
            let groups = attnlab_report::write_report_stores_with(&runs, &out, peak_gflops.map(|g| g * 1e9), &fill_keys_attended)?;
            println!("{} configs → {}", groups.len(), out.join("README.md").display());
            Ok(())
        }
        Command::Kinds { markdown } => {
            if markdown {
                print!("{}", attnlab_attn::kinds::markdown_table());
            } else {
                let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(100);
                print!("{}", attnlab_attn::kinds::plain(width));
            }
            Ok(())
        }
        Command::Unlock { run, force } => {
            println!("{}", attnlab_exp::lock::unlock(&run, force)?);
            Ok(())
        }
        Command::Export { run, format, out } => {
            if format != "safetensors" {
                return Err(SpecError::new(format!("--format = {format:?}: allowed: safetensors")).into());
            }
            let loaded = attnlab_exp::export::load_run(&run, &burn::tensor::Device::flex())?;
            let out = out.unwrap_or_else(|| loaded.root.join("export"));
            for file in attnlab_exp::export::export_run(&loaded, &out)? {
                println!("{}", file.display());
            }
            Ok(())
        }
        Command::Generate { run, prompt, tokens, temperature, top_k, seed, device, weights } => {
            let device = backend(&device)?;
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(SpecError::new(format!("--temperature = {temperature}: must be finite and ≥ 0 (0 = greedy)")).into());
            }
            if top_k == 0 {
                return Err(SpecError::new("--top-k = 0: must be ≥ 1 (1 = greedy; the vocabulary size = no cut)").into());
            }
            let attnlab_exp::export::LoadedRun { root, spec, tokenizer, mut model } = attnlab_exp::export::load_run(&run, &device)?;
            if let Some(file) = &weights {
                model = attnlab_exp::export::import_safetensors(&spec.model, file, &device)?;
            }
            if let Some(e) = spec.model.decode_error() {
                return Err(SpecError::new(format!("{}: {e}", root.display())).into());
            }
            if spec.model.head == attnlab_model::Head::Autoencoder {
                return Err(SpecError::new(format!(
                    "{}: model.head = \"autoencoder\" rebuilds a whole sequence from its last position; it has no token-by-token generation (allowed: runs with model.head = \"lm\")",
                    root.display()
                ))
                .into());
            }
            if let (Tokenizer::Ids { vocab }, "\n") = (&tokenizer, prompt.as_str()) {
                return Err(SpecError::new(format!(
                    "--prompt: {} is a synthetic-task run whose tokens are ids below {vocab}: pass the input as space-separated ids, e.g. --prompt \"1 5 9\"",
                    root.display()
                ))
                .into());
            }
            let ids = tokenizer.encode(&prompt).map_err(|e| SpecError::new(format!("--prompt: {e}")))?;
            if ids.is_empty() {
                return Err(SpecError::new("--prompt: must not be empty").into());
            }
            if tokens > MAX_GENERATE {
                return Err(SpecError::new(format!("--tokens = {tokens}: must be ≤ {MAX_GENERATE}")).into());
            }
            if ids.len() + tokens > spec.model.max_seq + 1 {
                tracing::info!("prompt + tokens = {} > model.max_seq = {}: each token sees the last {} tokens (nanoGPT's crop)", ids.len() + tokens, spec.model.max_seq, spec.model.max_seq);
            }
            let sampling = Sampling { temperature, top_k: Some(top_k), seed };
            let out = generate_cropped(&model, &ids, tokens, sampling, &device);
            println!("{}{}", prompt, tokenizer.decode(&out));
            Ok(())
        }
    }
}

/// Runs recorded before summaries carried `keys_attended`: the fraction derived from the run's
/// config (an untrained model of its shape; the fraction depends on shapes only).
fn fill_keys_attended(dir: &Path, run: &mut attnlab_report::RunRecord) {
    if run.summary.get("keys_attended").is_some() {
        return;
    }
    let Ok(spec) = attnlab_exp::ExperimentSpec::load(&dir.join("config.toml"), &[]) else { return };
    let keys = Gpt::new(&spec.model, &attnlab_attn::burn::tensor::Device::flex()).keys_attended(spec.train.block);
    if let Some(obj) = run.summary.as_object_mut() {
        obj.insert("keys_attended".into(), serde_json::json!(keys));
    }
}
