//! Memory-mapped safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Nothing is copied: a [`TensorRef`] points into the map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype as StDtype;
use serde_json::Value;

use super::ModelError;

/// Element types we serve. Everything else in a checkpoint is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    BF16,
    F16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
        }
    }

    /// The safetensors header spelling.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
        }
    }

    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Some(DType::BF16),
            "f16" | "fp16" | "float16" | "half" => Some(DType::F16),
            "f32" | "fp32" | "float32" | "float" => Some(DType::F32),
            _ => None,
        }
    }
}

/// A tensor inside a memory-mapped file.
#[derive(Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    map: Arc<Mmap>,
    start: usize,
    end: usize,
    file: Arc<PathBuf>,
}

impl std::fmt::Debug for TensorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?} in {}", self.name, self.dtype.name(), self.shape, self.file.display())
    }
}

impl TensorRef {
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Element `i` widened to f32 (for small tensors such as norms; hot paths read bytes).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        }
    }
}

/// Every tensor of a checkpoint directory, by name.
pub struct Checkpoint {
    tensors: HashMap<String, TensorRef>,
    files: Vec<PathBuf>,
    /// Each file's safetensors header bytes (used for the content hash).
    headers: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards of `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if index.exists() {
            shard_files(dir, &index)?
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::missing(&single, "no model.safetensors and no model.safetensors.index.json in the model directory"));
        };
        let mut ck = Checkpoint { tensors: HashMap::new(), files: files.clone(), headers: Vec::new() };
        for file in files {
            ck.add_file(&file)?;
        }
        Ok(ck)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), ModelError> {
        let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only and private. Checkpoint files are not supposed to be
        // modified while a worker runs; if one is truncated underneath us, reads fault (as
        // with every mmap-based loader, including transformers' safetensors).
        let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| ModelError::invalid(path, format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        self.headers.push(map[..data_start].to_vec());
        let map = Arc::new(map);
        let file = Arc::new(path.to_path_buf());
        for (name, info) in meta.tensors() {
            let dtype = match info.dtype {
                StDtype::BF16 => DType::BF16,
                StDtype::F16 => DType::F16,
                StDtype::F32 => DType::F32,
                other => {
                    return Err(ModelError::unsupported(
                        path,
                        format!("tensor `{name}` has dtype {other:?}; only BF16, F16 and F32 are supported"),
                    ));
                }
            };
            let (s, e) = info.data_offsets;
            let t = TensorRef {
                name: name.clone(),
                dtype,
                shape: info.shape.clone(),
                map: map.clone(),
                start: data_start + s,
                end: data_start + e,
                file: file.clone(),
            };
            if self.tensors.insert(name.clone(), t).is_some() {
                return Err(ModelError::invalid(path, format!("tensor `{name}` appears in more than one shard")));
            }
        }
        Ok(())
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorRef, ModelError> {
        let t = self.tensors.get(name).ok_or_else(|| {
            let where_ = self.files.first().cloned().unwrap_or_default();
            ModelError::invalid(&where_, format!("missing tensor `{name}` (expected shape {shape:?})"))
        })?;
        if t.shape != shape {
            return Err(ModelError::invalid(t.file(), format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn headers(&self) -> &[Vec<u8>] {
        &self.headers
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.end - t.start).sum()
    }

    /// The dtype most of the parameters have (by bytes).
    pub fn dominant_dtype(&self) -> DType {
        let mut by: HashMap<DType, usize> = HashMap::new();
        for t in self.tensors.values() {
            *by.entry(t.dtype).or_default() += t.end - t.start;
        }
        by.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d).unwrap_or(DType::F32)
    }
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::invalid(index, format!("not valid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| ModelError::invalid(index, "missing object `weight_map`"))?;
    let mut files: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::invalid(index, format!("weight_map[`{name}`] is not a file name")))?;
        if file.contains('/') || file.contains("..") {
            return Err(ModelError::invalid(index, format!("weight_map[`{name}`] = `{file}` must be a file in the model directory")));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    let paths: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    for p in &paths {
        if !p.exists() {
            return Err(ModelError::missing(p, "shard listed in model.safetensors.index.json does not exist"));
        }
    }
    if paths.is_empty() {
        return Err(ModelError::invalid(index, "weight_map is empty"));
    }
    Ok(paths)
}
