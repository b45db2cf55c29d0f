//! `--set dotted.key=value` overrides on the parsed TOML, before it becomes typed config.
//!
//! The value is read as TOML (`4`, `1e-3`, `"gelu"`, `{kind = "gqa", kv_heads = 2}`), falling
//! back to a plain string (`--set model.mlp=swiglu`). Setting a `kind` key replaces its whole
//! table, so `--set model.attention.kind=mla` drops the fields of the previous kind.

use toml::{Table, Value};

pub fn parse_toml(text: &str) -> Result<Value, String> {
    text.parse::<Table>().map(Value::Table).map_err(|e| e.to_string().trim().to_string())
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Applies one `key=value` to `root`.
pub fn apply_set(root: &mut Value, set: &str) -> Result<(), String> {
    let (key, raw) = set.split_once('=').ok_or("expected dotted.key=value")?;
    set_path(root, key.trim(), parse_value(raw.trim()))
}

/// Sets the dotted `key` of `root` to `value`, creating tables on the way. Setting a `kind`
/// clears its table first.
pub fn set_path(root: &mut Value, key: &str, value: Value) -> Result<(), String> {
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key {key:?}"));
    }
    let (last, parents) = path.split_last().expect("non-empty");
    let mut table = root.as_table_mut().ok_or("the document is not a table")?;
    for (i, part) in parents.iter().enumerate() {
        let entry = table.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("{} is not a table", path[..=i].join(".")))?;
    }
    if *last == "kind" {
        table.clear();
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// The value at the dotted `key`, if any.
pub fn get_path<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(root, |v, part| v.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_values_and_resets_kind_tables() {
        let mut v = parse_toml("[model]\nheads = 4\n[model.attention]\nkind = \"gqa\"\nkv_heads = 2\n").unwrap();
        apply_set(&mut v, "model.heads=8").unwrap();
        apply_set(&mut v, "model.attention.kind=mla").unwrap();
        apply_set(&mut v, "model.attention.kv_latent=32").unwrap();
        apply_set(&mut v, "train.lr=3e-4").unwrap();
        assert_eq!(v["model"]["heads"].as_integer(), Some(8));
        assert_eq!(v["model"]["attention"]["kind"].as_str(), Some("mla"));
        assert!(v["model"]["attention"].get("kv_heads").is_none());
        assert_eq!(v["train"]["lr"].as_float(), Some(3e-4));
        assert!(apply_set(&mut v, "model.heads.x=1").is_err());
        assert!(apply_set(&mut v, "novalue").is_err());
    }
}
