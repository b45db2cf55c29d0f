//! The binary: bad input exits with code 2 and one line before any compute, writing nothing;
//! a tiny run trains and `generate` samples from it.

mod common;

use common::{attnlab, TINY};

/// `attnlab train FILE --out OUT ARGS` exits 2 with one `error:` line containing the needle,
/// writing nothing, for each case.
fn refused_by_train(file: &std::path::Path, out: &std::path::Path, cases: &[(&[&str], &str)]) {
    for (args, needle) in cases {
        let o = attnlab().arg("train").arg(file).arg("--out").arg(out).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: stderr {err}");
        let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{args:?}: {err}");
        assert!(error_lines[0].contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing may be written on bad input");
    }
}

#[test]
fn bad_input_exits_2_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY).unwrap();
    let out = dir.path().join("runs");
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "model.attention.kind=gqa", "--set", "model.attention.kv_heads=3"], "model.attention.kv_heads = 3"),
        (&["--set", "model.bogus=1"], "bogus"),
        (&["--set", "train.block=64"], "train.block = 64"),
        (&["--set", "model.attention={kind = \"mta\", conv_layers = [7]}"], "model.attention.conv_layers = 7"),
        (&["--set", "model.attention={kind = \"mta\", key_kernel = 4}"], "model.attention.key_kernel = 4"),
        (&["--device", "tpu"], "--device"),
        (&["--set", "data.corpus=file", "--set", "data.path=\"/nonexistent/x.txt\""], "not found"),
    ];
    refused_by_train(&file, &out, cases);
}

#[test]
fn a_tiny_run_trains_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY).unwrap();
    let out = dir.path().join("runs");
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A short summary that says where the run is; every metric in its summary.json.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.lines().count() <= 4 && stdout.contains("best val loss"), "{stdout}");
    let folder = stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).expect("the run folder is printed");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(folder).join("summary.json")).unwrap()).unwrap();
    for key in ["best_val_loss", "final_val_loss", "train_tokens_per_sec", "params", "kv_bytes_per_token", "wall_seconds", "device"] {
        assert!(summary.get(key).is_some(), "summary lacks {key}");
    }
    assert!(stdout.contains(&format!("{:.4}", summary["best_val_loss"].as_f64().unwrap())), "{stdout}");
    let run_dir = out.join("tiny").join(summary["run_id"].as_str().unwrap());
    assert_eq!(std::path::Path::new(folder), run_dir);
    for f in ["config.toml", "metrics.jsonl", "summary.json", "tokenizer.json", "checkpoint/model.bpk"] {
        assert!(run_dir.join(f).exists(), "missing {f}");
    }
    let g = attnlab().arg("generate").arg(&run_dir).args(["--prompt", "The ", "--tokens", "20"]).output().unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let text = String::from_utf8_lossy(&g.stdout);
    assert!(text.starts_with("The ") && text.trim_end().chars().count() >= 4 + 10, "{text:?}");
    // `export` writes the three files; an existing output folder and an unknown format are
    // input errors (exit 2) that write nothing.
    let e = attnlab().arg("export").arg(&run_dir).output().unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let listed: Vec<String> = String::from_utf8_lossy(&e.stdout).lines().map(String::from).collect();
    let export = run_dir.join("export");
    for f in ["model.safetensors", "config.json", "probe.safetensors"] {
        assert!(listed.contains(&export.join(f).display().to_string()), "{listed:?}");
    }
    let before = std::fs::read(export.join("model.safetensors")).unwrap();
    for args in [&["--out"][..], &["--format", "onnx", "--out"][..]] {
        let e = attnlab().arg("export").arg(&run_dir).args(args).arg(if args.len() == 1 { export.clone() } else { dir.path().join("x") }).output().unwrap();
        assert_eq!(e.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&e.stderr));
    }
    assert_eq!(std::fs::read(export.join("model.safetensors")).unwrap(), before);
    assert!(!dir.path().join("x").exists());
    // An empty --out (an unset shell variable) writes nothing into the working directory.
    let e = attnlab().current_dir(dir.path()).arg("export").arg(&run_dir).args(["--out", ""]).output().unwrap();
    assert_eq!(e.status.code(), Some(2), "{}", String::from_utf8_lossy(&e.stderr));
    assert!(!dir.path().join("model.safetensors").exists());
    // `generate --weights` imports them: the same greedy text as from the checkpoint; a file
    // of another model is refused naming the mismatch.
    let greedy = |extra: &[&std::path::Path]| {
        let mut c = attnlab();
        c.arg("generate").arg(&run_dir).args(["--prompt", "The ", "--tokens", "12", "--temperature", "0"]);
        for w in extra {
            c.arg("--weights").arg(w);
        }
        c.output().unwrap()
    };
    let (a, b) = (greedy(&[]), greedy(&[&export.join("model.safetensors")]));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout);
    let w = greedy(&[&export.join("probe.safetensors")]);
    assert_eq!(w.status.code(), Some(2), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(String::from_utf8_lossy(&w.stderr).contains("embed.weight: missing"), "{}", String::from_utf8_lossy(&w.stderr));
    // `eval` with an inference-time setting stores its record, which `report` tabulates; a bad
    // setting exits 2 and stores nothing.
    let ev = attnlab().arg("eval").arg(&run_dir).args(["--set", "eval.inference.kind=star", "--set", "eval.inference.block=8", "--set", "eval.inference.anchor=0"]).output().unwrap();
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    assert!(String::from_utf8_lossy(&ev.stdout).contains("phase 1"), "{}", String::from_utf8_lossy(&ev.stdout));
    let bad = attnlab().arg("eval").arg(&run_dir).args(["--set", "eval.inference.kind=star", "--set", "eval.inference.blok=8"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("blok"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert_eq!(std::fs::read_to_string(run_dir.join("evals.jsonl")).unwrap().lines().count(), 1);
    let rep = attnlab().arg("report").arg(out.join("tiny")).arg("--out").arg(dir.path().join("report")).output().unwrap();
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let md = std::fs::read_to_string(dir.path().join("report").join("README.md")).unwrap();
    assert!(md.contains("## Evaluations") && md.contains("star block=8 anchor=0 hosts=2"), "{md}");
    // A tokenizer that does not match the checkpoint's vocabulary is refused, naming both.
    std::fs::write(run_dir.join("tokenizer.json"), r#"{"kind":"char","chars":["a","b","c"]}"#).unwrap();
    let g = attnlab().arg("generate").arg(&run_dir).args(["--prompt", "a"]).output().unwrap();
    let err = String::from_utf8_lossy(&g.stderr);
    assert_eq!(g.status.code(), Some(2), "{err}");
    assert!(err.contains("model.vocab") && err.contains("3 tokens"), "{err}");
}

#[test]
fn sigint_checkpoints_and_the_next_call_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY.replace("steps = 20", "steps = 1000").replace("every = 10", "every = 1000")).unwrap();
    let out = dir.path().join("runs");
    let mut child = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until training is under way (metrics being written), then interrupt it.
    let started = std::time::Instant::now();
    let metrics = || -> usize {
        std::fs::read_dir(out.join("tiny")).ok().and_then(|mut d| d.next()).and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path().join("metrics.jsonl")).ok()).map(|s| s.lines().count()).unwrap_or(0)
    };
    while metrics() < 3 {
        assert!(started.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits with 130");
    let run_dir = std::fs::read_dir(out.join("tiny")).unwrap().next().unwrap().unwrap().path();
    assert!(run_dir.join("checkpoint/state.json").exists(), "interrupt must write a checkpoint");
    assert!(!run_dir.join("summary.json").exists());
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("checkpoint/state.json")).unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(step > 0 && step < 1000, "checkpoint at step {step}");
    assert_eq!(state["interrupted"], true, "the run is marked interrupted");
    let dry = attnlab().args(["sweep", "--dry-run", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).contains(&format!("interrupted@{step}")), "{}", String::from_utf8_lossy(&dry.stdout));
    // The same command resumes and finishes; the metrics hold each logged step once.
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run_dir.join("summary.json").exists());
    let logged: Vec<u64> = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap().lines()
        .filter(|l| l.contains("\"train\"")).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    let mut dedup = logged.clone();
    dedup.dedup();
    assert_eq!(logged, dedup, "no step logged twice");
    assert_eq!(logged.len(), 101, "steps 0, 10, …, 990 and the last");
}

#[test]
fn bench_decode_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, format!("{TINY}\n[sweep]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"mla\", kv_latent = 8, rope_dim = 4}}]\n")).unwrap();
    let json = dir.path().join("decode.json");
    let o = attnlab().args(["bench", "decode"]).arg(&file).args(["--contexts", "8,20", "--batches", "1,2", "--tokens", "2", "--json"]).arg(&json).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 8);
    // MHA, 1 layer, 4 heads of 8: 2·4·8·4 bytes per token; MLA: (8 + 4)·4.
    assert_eq!(rows[0]["state_bytes_per_token"], 256);
    assert_eq!(rows[7]["state_bytes_per_token"], 48);
    assert_eq!(rows[2]["state_bytes_per_sequence"], 256 * 20);
    assert!(rows.iter().all(|r| r["decode_tokens_per_sec"].as_f64().unwrap() > 0.0));
    // MoSA's expert choice is not causal and has no decode: refused before any compute.
    let single = dir.path().join("mosa.toml");
    std::fs::write(&single, TINY).unwrap();
    let o = attnlab().args(["bench", "decode"]).arg(&single).args(["--set", "model.attention={kind = \"mosa\", rho = 2, routing = \"expert_choice\"}", "--contexts", "8", "--batches", "1", "--tokens", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("model.attention.routing") && err.contains("prefix"), "{err}");
    // Beside points that have one, it is left out and said.
    let mixed = dir.path().join("mixed.toml");
    std::fs::write(&mixed, format!("{TINY}\n[sweep]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"mosa\", rho = 2, routing = \"expert_choice\"}}]\n")).unwrap();
    let o = attnlab().args(["bench", "decode"]).arg(&mixed).args(["--contexts", "8", "--batches", "1", "--tokens", "2"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("left out (no decode)") && out.contains("1 configs"), "{out}");
}

#[test]
fn a_diverging_run_is_stopped_and_marked_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, format!("{TINY}\n[sweep]\n\"train.lr\" = [1e-3, 1e30]\n").replace("[train]\n", "[train]\nmin_lr = 0.0\nlog_every = 1\n")).unwrap();
    let out = dir.path().join("runs");
    let o = attnlab().args(["sweep", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "the sweep goes on past a diverged run: {}", String::from_utf8_lossy(&o.stderr));
    let summaries: Vec<serde_json::Value> = std::fs::read_dir(out.join("tiny")).unwrap()
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.unwrap().path().join("summary.json")).unwrap()).unwrap())
        .collect();
    assert_eq!(summaries.len(), 2);
    let diverged: Vec<&serde_json::Value> = summaries.iter().filter(|s| s["status"] == "diverged").collect();
    assert_eq!(diverged.len(), 1, "{summaries:?}");
    assert!(diverged[0]["diverged_at_step"].as_u64().unwrap() < 20);
    // Re-running skips both; the report lists the diverged run instead of dropping it.
    let again = attnlab().args(["sweep", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let rep = dir.path().join("rep");
    let r = attnlab().arg("report").arg(out.join("tiny")).arg("--out").arg(&rep).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let md = std::fs::read_to_string(rep.join("README.md")).unwrap();
    assert!(md.contains("diverged at step"), "{md}");
}

#[test]
fn sigkill_leaves_a_stale_lock_and_the_next_call_resumes_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    let spec = TINY.replace("steps = 20", "steps = 400").replace("every = 10", "every = 400").replace("warmup = 2", "warmup = 2\ncheckpoint_every = 5");
    std::fs::write(&file, spec).unwrap();
    let out = dir.path().join("runs");
    let mut child = attnlab().args(["sweep", "--quiet", "--out"]).arg(&out).arg(&file).stdout(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    let run_dir = || std::fs::read_dir(out.join("tiny")).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.path());
    let checkpointed = || run_dir().is_some_and(|d| d.join("checkpoint.prev/state.json").exists());
    while !checkpointed() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    let run_dir = run_dir().unwrap();
    assert!(run_dir.join("lock").exists(), "a killed process leaves its lock behind");
    assert!(!run_dir.join("summary.json").exists());
    let o = attnlab().args(["sweep", "--out"]).arg(&out).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stale lock") && err.contains("resuming from checkpoint"), "{err}");
    assert!(run_dir.join("summary.json").exists() && !run_dir.join("lock").exists());
}

#[test]
fn bench_train_scaling_and_peak_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, format!("{TINY}\n[sweep]\nseeds = [0, 1]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"tiled\", block_q = 8, block_k = 8}}]\n")).unwrap();
    let json = dir.path().join("train.json");
    let o = attnlab().args(["bench", "train"]).arg(&file).args(["--steps", "2", "--warmup", "1", "--rounds", "2", "--json"]).arg(&json).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2, "one point per config (seeds ignored) per round");
    let order: Vec<(u64, &str)> = rows.iter().map(|r| (r["round"].as_u64().unwrap(), r["attention"].as_str().unwrap())).collect();
    assert_eq!(order, [(1, "mha"), (1, "tiled-8x8"), (2, "mha"), (2, "tiled-8x8")], "points interleaved round by round");
    for r in rows {
        let mfu = r["mfu"].as_f64().unwrap();
        assert!(r["tokens_per_sec"].as_f64().unwrap() > 0.0 && mfu > 0.0 && mfu < 1.0, "{r}");
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("over 2 rounds") && out.contains("ratio to mha"), "{out}");
    let bad = attnlab().args(["bench", "train"]).arg(&file).args(["--rounds", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--rounds = 0: must be in [1, 100]"));

    let json = dir.path().join("scaling.json");
    let o = attnlab().args(["bench", "scaling"]).arg(&file).args(["--lengths", "8,24", "--modes", "infer,train", "--reps", "1", "--json"]).arg(&json).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2 * 2 * 2);
    let bad = attnlab().args(["bench", "scaling"]).arg(&file).args(["--modes", "fast"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("allowed: infer, train, train-ckpt"));

    let o = attnlab().args(["bench", "peak", "--size", "64"]).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GFLOP/s"));
}

/// A sweep of several runs that all fall back to the built-in corpus prints that warning once
/// (it printed once per run before: 18 times for an 18-run sweep). Planted: calling
/// `tracing::warn!` directly again makes it print 3 times here.
#[test]
fn a_repeated_warning_prints_once_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.toml");
    let text = TINY.replace("corpus = \"builtin\"", "corpus = \"tinyshakespeare\"\nfallback_builtin = true")
        + "[sweep]\nseeds = [0, 1, 2]\n";
    std::fs::write(&file, text).unwrap();
    let o = attnlab().current_dir(dir.path()).args(["sweep", "--dry-run"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains("new")).count(), 3, "three runs listed: {stdout}");
    assert_eq!(err.matches("Tiny Shakespeare not found").count(), 1, "{err}");
}

/// Under a batch job (stderr a file, `--quiet`), every evaluation is a plain log line (no
/// colour codes) with the step, train and val loss and tokens/s; `| head` closing the pipe
/// ends the process quietly.
///
/// Planted, and seen to fail: evaluation lines through the progress bar (`pb.println`: none
/// in the log); the tracing subscriber with ANSI codes always on; SIGPIPE left ignored
/// (`println!` panics: exit 101).
#[test]
fn batch_logs_are_plain_lines_and_a_closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY).unwrap();
    let log = std::fs::File::create(dir.path().join("job.log")).unwrap();
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(dir.path().join("runs")).arg(&file).stderr(log).output().unwrap();
    assert!(o.status.success());
    let log = std::fs::read_to_string(dir.path().join("job.log")).unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log:?}");
    let evals: Vec<&str> = log.lines().filter(|l| l.contains("val loss")).collect();
    assert_eq!(evals.len(), 2, "steps 10 and 20: {log}");
    assert!(evals.iter().all(|l| l.contains("train loss") && l.contains("tok/s") && l.contains("/20")), "{log}");

    let sweep = dir.path().join("sweep.toml");
    std::fs::write(&sweep, format!("{TINY}\n[sweep]\nseeds = [{}]\n", (0..400).map(|s| s.to_string()).collect::<Vec<_>>().join(", "))).unwrap();
    let mut child = attnlab().args(["sweep", "--dry-run"]).arg(&sweep).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // `| head -0`: the reader is gone before the first line
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(101), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

/// `sweep --set` on a swept path is an error naming it (it was silently ignored); `train
/// --point N` trains one point of a sweep, where a `--set` of a swept field overrides that
/// point; `generate` crops a long generation's context to
/// `max_seq` (nanoGPT's rule) instead of refusing it; a task run with no prompt says what to
/// pass.
///
/// Planted, and seen to fail: the swept-path check removed (exit 0, the --set ignored);
/// `generate` back to plain `generate` (a panic past max_seq).
#[test]
fn overrides_points_long_generations_and_task_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.toml");
    std::fs::write(&file, format!("{TINY}\n[sweep]\nseeds = [0, 1]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"gqa\", kv_heads = 2}}]\n")).unwrap();
    let out = dir.path().join("runs");
    for set in ["train.seed=3", "model.attention.kv_heads=1", "model.attention={kind = \"mqa\"}"] {
        let o = attnlab().args(["sweep", "--dry-run", "--set", set]).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains("is swept") && err.contains(set.split('=').next().unwrap()), "{set}: {err}");
    }
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--point"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = attnlab().args(["train", "--quiet", "--point", "9", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = attnlab().args(["train", "--quiet", "--point", "3", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let folder = std::path::PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap());
    let config = std::fs::read_to_string(folder.join("config.toml")).unwrap();
    assert!(config.contains("seed = 1") && config.contains("gqa"), "point 3 = gqa, seed 1: {config}");
    // On one point, a --set of a swept field overrides that point (here GQA-2 → GQA-1).
    let o = attnlab().args(["train", "--quiet", "--point", "3", "--set", "model.attention.kv_heads=1", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let over = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap().to_string());
    let config = std::fs::read_to_string(over.join("config.toml")).unwrap();
    assert!(config.contains("seed = 1") && config.contains("gqa") && config.contains("kv_heads = 1"), "point 3 with kv_heads = 1: {config}");
    assert_ne!(over, folder);

    // max_seq = 48: a prompt of 4 and 100 new tokens.
    let g = attnlab().arg("generate").arg(&folder).args(["--prompt", "The ", "--tokens", "100"]).output().unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let text = String::from_utf8_lossy(&g.stdout);
    assert!(text.starts_with("The "));
    assert_eq!(text.strip_suffix('\n').unwrap().chars().count(), 4 + 100, "{text:?}");

    let task = dir.path().join("task.toml");
    std::fs::write(&task, "name = \"task\"\n[data.task]\nkind = \"mqar\"\nvocab = 32\nseq_len = 32\nnum_pairs = 4\nnum_queries = 4\n[model]\nd_model = 32\nlayers = 1\nheads = 4\nmax_seq = 64\n[train]\nsteps = 2\nbatch = 2\nwarmup = 1\n[eval]\nevery = 2\nbatches = 1\n").unwrap();
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&task).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let folder = stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap().to_string();
    let g = attnlab().arg("generate").arg(&folder).output().unwrap();
    assert_eq!(g.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&g.stderr).contains("space-separated ids"), "{}", String::from_utf8_lossy(&g.stderr));
    let g = attnlab().arg("generate").arg(&folder).args(["--prompt", "1 5 9", "--tokens", "3"]).output().unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
}

/// `train --extend RUN` continues a finished run to more steps as a new run: RUN is left as it
/// is, the new run's metrics start with RUN's and go on to the new count, its summary names
/// RUN, and its id differs from a run trained for the new count from scratch. A config that
/// differs in more than `train.steps`, or fewer steps, is refused naming the field.
///
/// Planted, and seen to fail: the extension starting from scratch (the first 20 steps'
/// metrics differ from RUN's); the id not hashing RUN's (equal to the from-scratch run's).
#[test]
fn a_finished_run_extends_to_more_steps_as_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY).unwrap();
    let out = dir.path().join("runs");
    let folder = |o: &std::process::Output| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap().to_string());
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success());
    let old = folder(&o);
    let old_metrics = std::fs::read_to_string(old.join("metrics.jsonl")).unwrap();
    let old_summary = std::fs::read(old.join("summary.json")).unwrap();
    let extend = |sets: &[&str]| {
        let mut c = attnlab();
        c.args(["train", "--quiet", "--out"]).arg(&out).arg(&file).arg("--extend").arg(&old);
        for s in sets {
            c.args(["--set", s]);
        }
        c.output().unwrap()
    };
    for (sets, needle) in [(&["train.steps=30", "train.lr=0.002"][..], "train.lr"), (&["train.steps=20"][..], "train.steps = 20")] {
        let o = extend(sets);
        assert_eq!(o.status.code(), Some(2), "{sets:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{sets:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Another tokenizer in the old run (a rewritten tokenizer file, say) is refused.
    let tokenizer = std::fs::read(old.join("tokenizer.json")).unwrap();
    std::fs::write(old.join("tokenizer.json"), r#"{"kind":"byte"}"#).unwrap();
    let o = extend(&["train.steps=30"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokenizer.json differs"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(old.join("tokenizer.json"), tokenizer).unwrap();
    let o = extend(&["train.steps=30"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = folder(&o);
    assert_ne!(new, old);
    assert_eq!(std::fs::read(old.join("summary.json")).unwrap(), old_summary, "the extended run is left as it is");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(new.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 30);
    assert_eq!(summary["extended_from"].as_str(), old.file_name().unwrap().to_str());
    assert_eq!(summary["extended_from_step"], 20);
    let metrics = std::fs::read_to_string(new.join("metrics.jsonl")).unwrap();
    let losses = |text: &str, upto: u64| -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["step"].as_u64().unwrap() <= upto)
            .map(|v| format!("{} {} {}", v["step"], v["loss"], v["val_loss"]))
            .collect()
    };
    assert_eq!(losses(&metrics, 20), losses(&old_metrics, 20), "the first 20 steps are the extended run's");
    assert!(metrics.lines().any(|l| l.contains("\"step\":30")), "{metrics}");
    let scratch = attnlab().args(["train", "--quiet", "--set", "train.steps=30", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(scratch.status.success());
    assert_ne!(folder(&scratch), new, "a from-scratch 30-step run is another run");
}

/// `attnlab kinds` lists every kind, with its fields; `--markdown` prints the README's table.
#[test]
fn kinds_lists_every_kind() {
    let o = attnlab().arg("kinds").env("COLUMNS", "72").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for kind in attnlab_attn::config::KINDS {
        assert!(text.lines().any(|l| l == *kind), "{kind}: {text}");
    }
    assert!(text.contains("fields: kv_heads") && text.contains("Kimi Delta Attention"), "{text}");
    let md = attnlab().args(["kinds", "--markdown"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&md.stdout), attnlab_attn::kinds::markdown_table());
}

/// A finished run has `history.jsonl` (W&B's layout: one row per step, slash-named scalars)
/// matching `metrics.jsonl`, and a TensorBoard event file whose records are framed with valid
/// CRCs (`bench/check_tensorboard.py` reads it with TensorBoard's own reader).
#[test]
fn runs_write_history_and_tensorboard_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY.replace("[train]\n", "[train]\nlog_every = 5\n")).unwrap();
    let out = dir.path().join("runs");
    let o = attnlab().args(["train", "--quiet", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success());
    let run = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("run folder: ")).unwrap().to_string());
    let history: Vec<serde_json::Value> = std::fs::read_to_string(run.join("history.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for m in &metrics {
        let row = history.iter().find(|h| h["_step"] == m["step"]).expect("a row per step");
        match m["kind"].as_str().unwrap() {
            "train" => assert_eq!(row["train/loss"], m["loss"]),
            _ => assert_eq!(row["val/loss"], m["val_loss"]),
        }
    }
    let steps: Vec<u64> = history.iter().map(|h| h["_step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let events = std::fs::read(run.join("events.out.tfevents.attnlab")).unwrap();
    let (mut at, mut records) = (0, 0);
    while at < events.len() {
        let len = u64::from_le_bytes(events[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
        records += 1;
    }
    assert_eq!(at, events.len());
    assert_eq!(records, 1 + metrics.len(), "the file version, then one event per metric line");
}

/// `sweep --report` prints the results as an aligned table that fits the terminal's width
/// (`COLUMNS` when stdout is not a terminal); the run table of `--dry-run` too.
/// Planted, and seen to fail: the Markdown lines printed as they are (wider than 70 columns).
#[test]
fn terminal_tables_fit_the_width() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, format!("{TINY}\n[sweep]\n\"model.attention\" = [{{kind = \"mha\"}}, {{kind = \"mqa\"}}]\n")).unwrap();
    let out = dir.path().join("runs");
    let o = attnlab().env("COLUMNS", "70").args(["sweep", "--quiet", "--report", "--out"]).arg(&out).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let tables: Vec<&str> = text.lines().filter(|l| l.contains('│') || l.contains('═') || l.contains('─')).collect();
    assert!(tables.len() > 4, "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 70), "{text}");
    assert!(text.contains("mha") && text.contains("mqa") && text.contains("report: "), "{text}");
}

/// `data.tokenizer = "bpe"`: a run learns its vocabulary, saves it, and `generate` reads it
/// back; two processes learn byte-identical vocabularies (a resume compares them, and the
/// `tokenizers` crate's hash maps are seeded per process). The merge rule itself is tested
/// against a naive BPE in `attnlab-data/tests/bpe.rs`.
#[test]
fn a_bpe_run_saves_its_vocabulary_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, TINY).unwrap();
    let train = |out: &str| {
        let o = attnlab()
            .args(["train", "--quiet", "--set", "data.tokenizer=\"bpe\"", "--set", "data.vocab_size=300", "--out"])
            .arg(dir.path().join(out))
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        std::path::PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("run folder: ")).expect("run folder"))
    };
    let (a, b) = (train("a"), train("b"));
    let saved = std::fs::read(a.join("tokenizer.json")).unwrap();
    assert_eq!(saved, std::fs::read(b.join("tokenizer.json")).unwrap());
    assert!(String::from_utf8_lossy(&saved).starts_with(r#"{"kind":"bpe","tokenizer":{"#));
    let g = attnlab().arg("generate").arg(&a).args(["--prompt", "The quick ", "--tokens", "8"]).output().unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    assert!(String::from_utf8_lossy(&g.stdout).starts_with("The quick "));
}

/// MAD's bad inputs (issue 21) exit 2 before any compute, naming field, value and what is
/// allowed, and write nothing.
#[test]
fn bad_mad_input_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mad.toml");
    std::fs::write(&file, "name = \"m\"\n[data.task]\nkind = \"mad_recall\"\nvocab = 16\nseq_len = 32\n[model]\nd_model = 16\nheads = 2\nlayers = 1\nmax_seq = 64\n[train]\nbatch = 4\n[eval]\nbatches = 2\n").unwrap();
    let out = dir.path().join("runs");
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "data.task.seq_len=31"], "data.task.seq_len = 31"),
        (&["--set", "data.task={kind=\"mad_selective_copy\", vocab=16, seq_len=33, num_tokens=16}"], "data.task.seq_len = 33"),
        (&["--set", "data.task={kind=\"mad_fuzzy_recall\", vocab=6, seq_len=32}"], "data.task.vocab = 6"),
        (&["--set", "data.task={kind=\"mad_noisy_recall\", vocab=17, noise_vocab=16, seq_len=32}"], "data.task.vocab = 17"),
        (&["--set", "data.train_samples=0"], "data.train_samples = 0"),
        (&["--set", "model.head=\"autoencoder\""], "model.head = \"autoencoder\""),
        (&["--set", "data.task={kind=\"mad_compression\"}"], "model.head = \"lm\""),
        (&["--set", "train.epochs=3"], "data.train_samples"),
        (&["--set", "data.train_samples=64", "--set", "train.epochs=3", "--set", "train.steps=9"], "train.steps = 9"),
    ];
    refused_by_train(&file, &out, cases);
}

/// Every ready-made experiment file is valid: `sweep --dry-run` checks each point (shapes,
/// tasks, hybrid schedules) before it lists the runs. Run from the repository root, as the
/// files' headers say (their `data.path`s are relative to it). Planted, and seen to fail:
/// `partial_rope = 0.35` in `experiments/qwen3_next.toml` (round(0.35 · 32) = 11 rotated dims).
#[test]
fn every_experiment_file_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root.join("experiments")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let o = attnlab().current_dir(&root).args(["sweep", "--dry-run", "--out"]).arg(out.path()).arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        // A study that starts from trained runs (train.init_from, e.g. lolcats.toml) is valid up
        // to its sources, which a fresh checkout has not trained: that must be the only error.
        let missing_source = stderr.contains("train.init_from") && stderr.contains("must be a finished run folder");
        assert!(o.status.success() || missing_source, "{}: {stderr}", file.display());
    }
}
