//! Every malformed model directory gives an error naming the file and the problem, and the
//! CLI exits non-zero — never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tokenfleet_worker::model::Model;

/// A fresh copy of the small tied model (its files are small enough to copy per case).
fn copy_model(name: &str) -> PathBuf {
    let src = common::model_dir("tiny-tied", 2);
    let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bad-models/{name}"));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    dst
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

/// Rewrites the safetensors header with `f` applied (keeping the data as is).
fn edit_header(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(p, out).unwrap();
}

fn expect_error(dir: &Path, file: &str, needle: &str) {
    let err = match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should fail with {needle}", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(file), "error `{err}` should name {file}");
    assert!(err.contains(needle), "error `{err}` should say {needle}");
    // The CLI reports the same and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfleet-worker"))
        .args(["generate", "--model"])
        .arg(dir)
        .args(["--prompt-ids", "1,2", "--max-new-tokens", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_files() {
    let d = copy_model("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    expect_error(&d, "config.json", "not found");
    let d = copy_model("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    expect_error(&d, "model.safetensors", "no model.safetensors");
    let d = copy_model("no-tokenizer");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    expect_error(&d, "tokenizer.json", "not found");
    expect_error(Path::new("/nonexistent/model"), "/nonexistent/model", "does not exist");
}

#[test]
fn bad_config() {
    let d = copy_model("arch");
    edit_config(&d, |v| v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]));
    expect_error(&d, "config.json", "GPT2LMHeadModel");
    let d = copy_model("rope");
    edit_config(&d, |v| v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    expect_error(&d, "config.json", "yarn");
    let d = copy_model("json");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    expect_error(&d, "config.json", "not valid JSON");
}

#[test]
fn bad_tensors() {
    let d = copy_model("missing-tensor");
    edit_header(&d, |h| {
        let v = h.remove("model.norm.weight").unwrap();
        h.insert("model.norm.weight_renamed".into(), v);
    });
    expect_error(&d, "model.safetensors", "missing tensor `model.norm.weight`");
    let d = copy_model("shape");
    edit_config(&d, |v| v["intermediate_size"] = serde_json::json!(100));
    expect_error(&d, "model.safetensors", "has shape");
    let d = copy_model("dtype");
    edit_header(&d, |h| {
        // Same byte size, a dtype we do not serve.
        h.get_mut("model.norm.weight").unwrap()["dtype"] = serde_json::json!("I16");
    });
    expect_error(&d, "model.safetensors", "I16");
    let d = copy_model("truncated");
    let p = d.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 1000).unwrap();
    expect_error(&d, "model.safetensors", "not a valid safetensors file");
    let d = copy_model("shards");
    std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map": {"model.norm.weight": "model-00002.safetensors"}}"#).unwrap();
    expect_error(&d, "model-00002.safetensors", "does not exist");
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    use tokenfleet_worker::model::DType;
    use tokenfleet_worker::model::gen_model::{GenModelSpec, write_random_model};
    use tokenfleet_worker::model::presets::Preset;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sharded-tiny-tied");
    let _ = std::fs::remove_dir_all(&dir);
    let spec =
        GenModelSpec { preset: Preset::find("tiny-tied").unwrap(), layers: 2, seed: 2, dtype: DType::BF16, max_shard_bytes: 8 << 20 };
    write_random_model(&spec, &dir, |_| {}).unwrap();
    assert!(dir.join("model.safetensors.index.json").exists());
    let sharded = Model::load(&dir).unwrap();
    let single = Model::load(&common::model_dir("tiny-tied", 2)).unwrap();
    assert!(sharded.weights.embed_tokens.bytes() == single.weights.embed_tokens.bytes());
    assert_eq!(sharded.weights.layers[1].down_proj.bytes(), single.weights.layers[1].down_proj.bytes());
}
