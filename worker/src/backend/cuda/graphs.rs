//! Decode steps replayed from captured CUDA graphs. A decode step of a few sequences is
//! ~10 launches per layer; at bs1 on Minitron-4B their host-side launch cost is estimated at
//! about a millisecond (≈ 330 launches × 3–4 µs; the H200 run measured 3.72 ms against a
//! 1.93 ms floor, not yet with graphs), so each (batch bucket, table width) shape is captured
//! once and replayed with one launch.
//!
//! The first step of a shape runs eagerly (which also tunes its GEMMs, something that cannot
//! happen under capture), then the same launches are captured; later steps of the shape only
//! upload their inputs and replay. A graph holds raw device addresses, so every buffer it
//! reads lives in the step buffers, and a buffer that has to move drops all graphs.

use std::collections::HashMap;

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::buffers::StepInputs;
use super::forward::Launch;
use super::inflight::Launched;
use super::{CudaBackend, dev};
use crate::backend::cuda_graph_plan::{GraphKey, batch_bucket, pad_decode, width_bucket};
use crate::backend::{BLOCK_SIZE, BackendError, StepBatch};

/// Captured graphs kept at once (each is small: kernel nodes only, no memory of its own).
const MAX_GRAPHS: usize = 128;

/// A captured graph that may move with the backend to the engine thread.
struct Graph(CudaGraph);

// SAFETY: CUDA graph objects are not internally synchronised, i.e. must not be used from two
// threads at once; they have no thread affinity otherwise. The cache is owned by the backend
// and only touched through `&mut CudaBackend`, so one thread uses a graph at a time.
unsafe impl Send for Graph {}

/// The captured decode graphs by shape.
#[derive(Default)]
pub(super) struct GraphCache {
    graphs: HashMap<GraphKey, Graph>,
    /// Steps replayed and graphs captured (for the log and the bench).
    pub replays: u64,
    pub captures: u64,
}

impl GraphCache {
    pub fn clear(&mut self) {
        self.graphs.clear();
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }
}

impl CudaBackend {
    /// Queues `batch` padded to `key`'s shape on `slot`: replayed from its graph, or run
    /// eagerly (and captured when `graphs`).
    pub(super) fn enqueue_padded(&mut self, batch: &StepBatch, key: GraphKey, graphs: bool, slot: usize) -> Result<Launched, BackendError> {
        let real_rows = batch.seqs.len();
        let pad_block = u32::try_from(self.num_blocks).map_err(|_| BackendError::Device("KV pool too large for a block id".into()))?;
        let padded = pad_decode(batch, key, pad_block);
        let inputs = StepInputs::build(&padded, &self.cap, key.table_width)?;
        if inputs.table_width != key.table_width {
            return Err(BackendError::InvalidBatch(format!(
                "block table of {} blocks in a graph of width {}",
                inputs.table_width, key.table_width
            )));
        }
        // The plan of the whole width bucket: the same launch grid for every step of it.
        let launch = Launch { max_context_len: key.table_width * BLOCK_SIZE, ..Launch::of(&inputs) };
        self.stage(&inputs, slot)?;
        self.slots[slot].timer.start(&self.stream)?;
        let replayed = match self.graphs.graphs.get(&key) {
            Some(g) if graphs => {
                g.0.launch().map_err(dev("replaying a decode graph"))?;
                self.graphs.replays += 1;
                true
            }
            _ => false,
        };
        if !replayed {
            // Eager first (this step's results, and the GEMM plans of the shape), then capture.
            self.forward(&launch, &inputs.sample_rows)?;
        }
        // Before any capture: an event recorded under capture would become a graph node.
        self.slots[slot].timer.end(&self.stream)?;
        if !replayed
            && graphs
            && let Err(e) = self.capture(key, &launch, &inputs.sample_rows)
        {
            // This step's results are already computed (eagerly); serving goes on without
            // graphs rather than failing requests over an optimisation.
            tracing::warn!(error = %e, "CUDA-graph capture failed: decode steps run eagerly from now on");
            self.graphs.clear();
            self.use_graphs = false;
        }
        // Only the real rows are read back (the padding rows come after them).
        self.finish_enqueue(&inputs, real_rows, slot)
    }

    /// Runs one all-padding decode step of every batch bucket the buffers allow, so that
    /// GEMM tuning (and, with graphs, capture at the narrowest table width) happens before
    /// the worker reports SERVING instead of in the first requests' steps.
    pub(super) fn warm_up_buckets(&mut self) -> Result<usize, BackendError> {
        if !self.launched.is_empty() {
            return Err(BackendError::InvalidBatch("warm-up while steps are in flight".into()));
        }
        let limit = self.cap.max_seqs.min(self.cap.max_tokens);
        let Some(width) = width_bucket(1, self.cap.max_blocks_per_seq()) else { return Ok(0) };
        let mut n = 1;
        let mut steps = 0;
        while let Some(b) = batch_bucket(n, limit) {
            // Nothing to read back (no real rows), but the step's errors must surface here.
            self.enqueue_padded(&StepBatch::default(), GraphKey { batch: b, table_width: width }, self.use_graphs, 0)?;
            self.stream.synchronize().map_err(dev("warm-up step"))?;
            steps += 1;
            n = b + 1;
        }
        Ok(steps)
    }

    fn capture(&mut self, key: GraphKey, launch: &Launch, sample_rows: &[usize]) -> Result<(), BackendError> {
        if self.graphs.graphs.len() >= MAX_GRAPHS {
            self.graphs.clear();
        }
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(dev("beginning a graph capture"))?;
        let launched = self.forward(launch, sample_rows);
        // End the capture whatever happened, so the stream is usable again.
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        let graph = ended.map_err(dev("instantiating a decode graph"))?;
        if let Some(g) = graph {
            g.upload().map_err(dev("uploading a decode graph"))?;
            self.graphs.graphs.insert(key, Graph(g));
            self.graphs.captures += 1;
            tracing::debug!(batch = key.batch, table_width = key.table_width, graphs = self.graphs.len(), "captured a decode graph");
        }
        Ok(())
    }
}
