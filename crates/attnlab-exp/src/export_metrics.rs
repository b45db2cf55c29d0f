//! A run's metrics for the tools people already use, written from `metrics.jsonl` (the
//! source of truth) whenever a run stops or ends:
//!
//! - `history.jsonl`: one JSON object per logged step in Weights & Biases' history layout
//!   (`_step`, and slash-named keys `train/loss`, `train/lr`, `train/tokens_per_sec`,
//!   `val/loss`, `val/train_loss`, `val/accuracy`), ready for `wandb.log(row, step=row["_step"])`
//!   or `pandas.read_json(path, lines=True)`;
//! - `events.out.tfevents.attnlab`: a TensorBoard event file with the same scalars
//!   (`tensorboard --logdir runs/`). Its format is TensorFlow's record file: each record is
//!   `u64 length, u32 masked CRC-32C of the length, data, u32 masked CRC-32C of the data`, and
//!   each datum an `Event` protobuf (`wall_time` = 1, `step` = 2, `file_version` = 3,
//!   `summary` = 5; `Summary.value` = 1; `Value.tag` = 1, `Value.simple_value` = 2), encoded
//!   here by hand (no protobuf dependency).

use std::path::Path;

use anyhow::{Context, Result};

use crate::store::write_atomic;
use crate::summary::MetricLine;

/// The scalars of one metric line: `(tag, value)`.
fn scalars(line: &MetricLine) -> Vec<(&'static str, f64)> {
    match line {
        MetricLine::Train { loss, lr, tokens_per_sec, .. } => vec![("train/loss", *loss), ("train/lr", *lr), ("train/tokens_per_sec", *tokens_per_sec)],
        MetricLine::Eval { val_loss, train_loss, val_accuracy, .. } => {
            let mut v = vec![("val/loss", *val_loss), ("val/train_loss", *train_loss)];
            if let Some(a) = val_accuracy {
                v.push(("val/accuracy", *a));
            }
            v
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TensorFlow's masked CRC of a record part.
fn masked(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
    varint(field << 3 | wire, out);
}

fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// One `Event` protobuf: wall time, step, and either a file version or scalar values.
fn event(wall_time: f64, step: u64, file_version: Option<&str>, values: &[(&str, f64)]) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut e);
    varint(step, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !values.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            key(2, 5, &mut v);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(data).to_le_bytes());
}

/// Writes `history.jsonl` and `events.out.tfevents.attnlab` of the run folder `dir` from its
/// `metrics.jsonl` (`wall_time` is the file's time: metrics lines carry no clock).
pub fn export(dir: &Path) -> Result<()> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let wall = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let lines: Vec<MetricLine> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // One history row per step, train and eval scalars merged.
    let mut rows: std::collections::BTreeMap<usize, serde_json::Map<String, serde_json::Value>> = Default::default();
    let mut events = Vec::new();
    record(&event(wall, 0, Some("brain.Event:2"), &[]), &mut events);
    for line in &lines {
        let values = scalars(line);
        let row = rows.entry(line.step()).or_default();
        row.insert("_step".into(), line.step().into());
        for (tag, v) in &values {
            row.insert((*tag).into(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, serde_json::Value::Number));
        }
        record(&event(wall, line.step() as u64, None, &values), &mut events);
    }
    let history: String = rows.into_values().map(|r| format!("{}\n", serde_json::Value::Object(r))).collect();
    write_atomic(&dir.join("history.jsonl"), history.as_bytes())?;
    write_atomic(&dir.join("events.out.tfevents.attnlab"), &events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC-32C check value of the standard catalogue ("123456789" → 0xE3069283), and the
    /// record framing of TensorFlow's record writer. Planted, and seen to fail: the IEEE
    /// polynomial 0xEDB88320.
    #[test]
    fn crc32c_and_record_framing() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let mut out = Vec::new();
        record(b"abc", &mut out);
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
    }
}
