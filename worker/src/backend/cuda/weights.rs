//! Weights from the memory-mapped checkpoint to the device as bf16 (f16/f32 converted on
//! the way), with Q|K|V and gate|up fused into one matrix each so a layer runs two GEMMs
//! where it would run five.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::backend::BackendError;
use crate::model::{DType, LlamaWeights, TensorRef};

pub struct GpuLayer {
    pub input_norm: CudaSlice<bf16>,
    /// `[(nh + 2·nkv)·hd, hidden]`: Q rows, then K rows, then V rows.
    pub qkv: CudaSlice<bf16>,
    pub o: CudaSlice<bf16>,
    pub post_norm: CudaSlice<bf16>,
    /// `[2·inter, hidden]`: gate rows, then up rows.
    pub gate_up: CudaSlice<bf16>,
    pub down: CudaSlice<bf16>,
}

pub struct GpuWeights {
    pub embed: CudaSlice<bf16>,
    pub layers: Vec<GpuLayer>,
    pub final_norm: CudaSlice<bf16>,
    /// None when tied to the embedding.
    pub lm_head: Option<CudaSlice<bf16>>,
}

impl GpuWeights {
    pub fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Appends a tensor's values as bf16.
fn push_bf16(t: &TensorRef, out: &mut Vec<bf16>) {
    let b = t.bytes();
    out.reserve(t.numel());
    match t.dtype {
        DType::BF16 => out.extend(b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))),
        DType::F16 => {
            out.extend(b.chunks_exact(2).map(|c| bf16::from_f32(half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())))
        }
        DType::F32 => out.extend(b.chunks_exact(4).map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
    }
}

/// One device buffer holding `parts` back to back. bf16 parts are copied straight from the
/// memory map (no host pass); others are converted through `staging`.
fn upload(
    stream: &Arc<CudaStream>,
    parts: &[&TensorRef],
    staging: &mut Vec<bf16>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<CudaSlice<bf16>, BackendError> {
    let dev = |e: cudarc::driver::DriverError| BackendError::Device(format!("uploading weights: {e:?}"));
    let total: usize = parts.iter().map(|p| p.numel()).sum();
    // SAFETY: every element is written by the copies below before any kernel reads it.
    let mut dst = unsafe { stream.alloc::<bf16>(total) }.map_err(dev)?;
    let mut off = 0;
    for p in parts {
        let n = p.numel();
        let direct: Option<&[bf16]> = if p.dtype == DType::BF16 { bytemuck::try_cast_slice(p.bytes()).ok() } else { None };
        let src: &[bf16] = match direct {
            Some(s) => s,
            None => {
                staging.clear();
                push_bf16(p, staging);
                staging.as_slice()
            }
        };
        stream.memcpy_htod(src, &mut dst.slice_mut(off..off + n)).map_err(dev)?;
        on_bytes(p.bytes().len() as u64);
        off += n;
    }
    Ok(dst)
}

/// Uploads every parameter; `on_bytes` reports progress in checkpoint bytes.
pub fn upload_weights(
    stream: &Arc<CudaStream>,
    w: &LlamaWeights,
    tied: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<GpuWeights, BackendError> {
    let mut staging = Vec::new();
    let embed = upload(stream, &[&w.embed_tokens], &mut staging, on_bytes)?;
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        layers.push(GpuLayer {
            input_norm: upload(stream, &[&l.input_norm], &mut staging, on_bytes)?,
            qkv: upload(stream, &[&l.q_proj, &l.k_proj, &l.v_proj], &mut staging, on_bytes)?,
            o: upload(stream, &[&l.o_proj], &mut staging, on_bytes)?,
            post_norm: upload(stream, &[&l.post_attn_norm], &mut staging, on_bytes)?,
            gate_up: upload(stream, &[&l.gate_proj, &l.up_proj], &mut staging, on_bytes)?,
            down: upload(stream, &[&l.down_proj], &mut staging, on_bytes)?,
        });
    }
    let final_norm = upload(stream, &[&w.final_norm], &mut staging, on_bytes)?;
    let lm_head = if tied { None } else { Some(upload(stream, &[&w.lm_head], &mut staging, on_bytes)?) };
    Ok(GpuWeights { embed, layers, final_norm, lm_head })
}
