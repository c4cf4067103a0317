//! Layered configuration for the tokenfleet services: built-in defaults < TOML file
//! (`--config FILE`) < environment (`PREFIX__KEY`, nested with `__`) < command-line flags.
//!
//! Every problem names the key and the layer it came from: an unknown key in the file or
//! the environment, a value of the wrong type, a value out of range.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Value, ValueKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A configuration problem; the message names the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Where a key's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "the built-in default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(k) => write!(f, "flag --{}", k.replace(['_', '.'], "-")),
        }
    }
}

/// A loaded configuration and the layers it was made of.
pub struct Layered<T> {
    pub value: T,
    env_prefix: String,
    file: Option<(PathBuf, BTreeSet<String>)>,
    env: BTreeSet<String>,
    flags: BTreeSet<String>,
}

impl<T> Layered<T> {
    /// The layer that supplied `key` (dotted path, e.g. `otel.endpoint`).
    pub fn source_of(&self, key: &str) -> Source {
        if self.flags.contains(key) {
            return Source::Flag(key.to_string());
        }
        if self.env.contains(key) {
            return Source::Env(format!("{}__{}", self.env_prefix, key.replace('.', "__").to_uppercase()));
        }
        if let Some((p, keys)) = &self.file
            && keys.contains(key)
        {
            return Source::File(p.clone());
        }
        Source::Default
    }

    /// An out-of-range error for `key`, naming where its value came from.
    pub fn range_error(&self, key: &str, problem: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("`{key}` {problem} (set by {})", self.source_of(key)))
    }
}

/// Every leaf key (dotted) of a value tree.
fn leaf_keys(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match &v.kind {
        ValueKind::Table(t) => {
            for (k, child) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_keys(&key, child, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// Every leaf key a configuration type knows, from its defaults serialized as JSON (where
/// `None` and empty lists still appear, so optional settings are known too).
fn known_keys<T: Serialize>(defaults: &T) -> Result<BTreeSet<String>, ConfigError> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, child, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let v = serde_json::to_value(defaults).map_err(|e| ConfigError(format!("internal: defaults do not serialize: {e}")))?;
    let mut leaves = BTreeSet::new();
    walk("", &v, &mut leaves);
    Ok(leaves)
}

fn keys_of(source: Config) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    leaf_keys("", &source.cache, &mut out);
    out
}

fn check_known(keys: &BTreeSet<String>, known: &BTreeSet<String>, origin: impl Fn(&str) -> String) -> Result<(), ConfigError> {
    match keys.iter().find(|k| !known.contains(*k)) {
        Some(k) => Err(ConfigError(format!("unknown key `{k}` in {}", origin(k)))),
        None => Ok(()),
    }
}

/// Loads `T`: its `Default`, then `file`, then environment variables `{env_prefix}__KEY`
/// (`list_keys` hold comma-separated lists), then `flags` (a serializable struct whose
/// `None` fields are skipped).
pub fn load<T, F>(env_prefix: &str, list_keys: &[&str], file: Option<&Path>, flags: &F) -> Result<Layered<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
    F: Serialize,
{
    let known = known_keys(&T::default())?;
    let defaults = Config::try_from(&T::default()).map_err(|e| ConfigError(format!("internal: {e}")))?;
    let mut builder = Config::builder().add_source(defaults);

    let file_layer = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
            let parsed = Config::builder()
                .add_source(File::from_str(&text, FileFormat::Toml))
                .build()
                .map_err(|e| ConfigError(format!("{} is not valid TOML: {e}", p.display())))?;
            let keys = keys_of(parsed);
            check_known(&keys, &known, |_| p.display().to_string())?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
            Some((p.to_path_buf(), keys))
        }
        None => None,
    };

    let mut env_source = Environment::with_prefix(env_prefix).prefix_separator("__").separator("__").try_parsing(true).ignore_empty(true);
    if !list_keys.is_empty() {
        env_source = env_source.list_separator(",");
        for k in list_keys {
            env_source = env_source.with_list_parse_key(k);
        }
    }
    let env_keys = keys_of(Config::builder().add_source(env_source.clone()).build().map_err(|e| ConfigError(e.to_string()))?);
    check_known(&env_keys, &known, |k| format!("environment variable {env_prefix}__{}", k.replace('.', "__").to_uppercase()))?;
    builder = builder.add_source(env_source);

    let flag_cfg = Config::try_from(flags).map_err(|e| ConfigError(format!("internal: flags do not serialize: {e}")))?;
    let flag_keys = keys_of(flag_cfg.clone());
    builder = builder.add_source(flag_cfg);

    let mut layered =
        Layered { value: T::default(), env_prefix: env_prefix.to_string(), file: file_layer, env: env_keys, flags: flag_keys };
    let merged = builder.build().map_err(|e| ConfigError(e.to_string()))?;
    layered.value = merged.try_deserialize().map_err(|e| {
        // Name the layer that supplied the offending key.
        let msg = e.to_string();
        let key = msg.split('`').nth(1).map(str::to_string);
        match key {
            Some(k) if known.contains(&k) => ConfigError(format!("{msg} (set by {})", layered.source_of(&k))),
            _ => ConfigError(msg),
        }
    })?;
    Ok(layered)
}

/// Renders a configuration as TOML-like `key = value` lines (for `print-config`), with
/// secrets (keys in `secret_keys`) redacted.
pub fn render<T: Serialize>(value: &T, secret_keys: &[&str]) -> Result<String, ConfigError> {
    let v: Value = Config::try_from(value).map_err(|e| ConfigError(e.to_string()))?.cache;
    let mut lines = Vec::new();
    flatten("", &v, secret_keys, &mut lines);
    Ok(lines.join("\n"))
}

fn flatten(prefix: &str, v: &Value, secrets: &[&str], out: &mut Vec<String>) {
    match &v.kind {
        ValueKind::Table(t) => {
            let sorted: std::collections::BTreeMap<&String, &Value> = t.iter().collect();
            for (k, child) in sorted {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, child, secrets, out);
            }
        }
        _ => {
            let shown = if secrets.contains(&prefix) && !matches!(v.kind, ValueKind::Nil) && !is_empty(v) {
                "\"<redacted>\"".to_string()
            } else {
                show(v)
            };
            out.push(format!("{prefix} = {shown}"));
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match &v.kind {
        ValueKind::Array(a) => a.is_empty(),
        ValueKind::String(s) => s.is_empty(),
        _ => false,
    }
}

fn show(v: &Value) -> String {
    match &v.kind {
        ValueKind::Nil => "(unset)".into(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        ValueKind::Table(_) => "{...}".into(),
        other => other.to_string(),
    }
}
