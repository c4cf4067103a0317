//! Streaming safetensors writer (one file or shards + index), used by `gen-model` and
//! `convert-gguf`. Tensors are produced one at a time so a 9 GB checkpoint never has to
//! sit in memory.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::{DType, ModelError};

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// Writes `specs` into `dir` as `model.safetensors`, or — when their total exceeds
/// `max_shard_bytes` — as `model-0000i-of-0000n.safetensors` plus
/// `model.safetensors.index.json`. `fill(i, spec, buf)` must append exactly
/// `spec.nbytes()` little-endian bytes to `buf`; `on_tensor` is called after each tensor
/// with its byte count (progress).
pub fn write_checkpoint<F, P>(
    dir: &Path,
    specs: &[TensorSpec],
    max_shard_bytes: u64,
    mut fill: F,
    mut on_tensor: P,
) -> Result<(), ModelError>
where
    F: FnMut(usize, &TensorSpec, &mut Vec<u8>) -> Result<(), ModelError>,
    P: FnMut(u64),
{
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    // Plan shards greedily in order.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut cur = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let n = s.nbytes();
        if cur > 0 && cur + n > max_shard_bytes {
            shards.push(Vec::new());
            cur = 0;
        }
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
        cur += n;
    }
    let nshards = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut buf = Vec::new();
    for (si, members) in shards.iter().enumerate() {
        let fname =
            if nshards == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", si + 1, nshards) };
        let path = dir.join(&fname);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut off = 0u64;
        for &i in members {
            let s = &specs[i];
            let n = s.nbytes();
            header.insert(s.name.clone(), json!({"dtype": s.dtype.safetensors_name(), "shape": s.shape, "data_offsets": [off, off + n]}));
            off += n;
            weight_map.insert(s.name.clone(), Value::String(fname.clone()));
        }
        let mut hbytes = serde_json::to_vec(&Value::Object(header)).map_err(|e| ModelError::invalid(&path, e.to_string()))?;
        while !hbytes.len().is_multiple_of(8) {
            hbytes.push(b' ');
        }
        let file = std::fs::File::create(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let io = |e| ModelError::io(&path, e);
        w.write_all(&(hbytes.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&hbytes).map_err(io)?;
        for &i in members {
            let s = &specs[i];
            buf.clear();
            fill(i, s, &mut buf)?;
            if buf.len() as u64 != s.nbytes() {
                return Err(ModelError::invalid(
                    &path,
                    format!("internal: tensor `{}` produced {} bytes, expected {}", s.name, buf.len(), s.nbytes()),
                ));
            }
            w.write_all(&buf).map_err(io)?;
            on_tensor(s.nbytes());
        }
        w.flush().map_err(io)?;
    }
    if nshards > 1 {
        let total: u64 = specs.iter().map(TensorSpec::nbytes).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

/// Writes pretty JSON with a trailing newline.
pub fn write_json(path: &Path, v: &Value) -> Result<(), ModelError> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| ModelError::invalid(path, e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

/// Appends `values` to `out` in `dtype` (round to nearest even for 16-bit types).
pub fn encode_f32(values: &[f32], dtype: DType, out: &mut Vec<u8>) {
    out.reserve(values.len() * dtype.size());
    match dtype {
        DType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())),
        DType::F16 => values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())),
    }
}
