//! The real engine behind the partition layer: `gpu::Pi0Cuda`'s stage functions as a
//! `StageEngine`.
//!
//! Notes for the engine (messages from the partition layer, kept here rather than in src/gpu):
//! * Graphs are captured with the generic enqueue-only capture (`stage::capture`), not with
//!   `Pi0Cuda::capture_encoder/decoder`: those run the stage once eagerly first, which would
//!   race with the hot path using the same slot on another stream (capture happens off the hot
//!   path while frames keep running). The first frame of a shape runs eagerly anyway, so
//!   cuBLASLt heuristics are cached before any capture.
//! * The pipeline uses decoder slot 0 only (decoder frames are serialised).
//! * MPS backend: the engine's stage functions bind the context of the stream they are given
//!   (an MPS execution-affinity context here), keep one cuBLASLt handle per context, and make
//!   their staging-buffer events in that context; its memory (primary context) is used as is.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::stage::StageEngine;
use crate::engine::ModelInput;
use crate::error::Result;
use crate::gpu::Pi0Cuda;

/// `Pi0Cuda` as the two stages of the partitioned pipeline.
pub struct Pi0Stages {
    pub engine: Pi0Cuda,
    action_dim: usize,
    chunk: usize,
}

impl Pi0Stages {
    /// `chunk`: the action chunk length used for `action_len` (noise defines the real one).
    pub fn new(engine: Pi0Cuda, chunk: usize) -> Self {
        let action_dim = crate::PolicyEngine::config(&engine).action_dim;
        Pi0Stages {
            engine,
            action_dim,
            chunk,
        }
    }
}

const DEC: usize = 0;

impl StageEngine for Pi0Stages {
    fn name(&self) -> String {
        format!("pi0-cuda ({})", self.engine.device_name())
    }
    fn prefix_slots(&self) -> usize {
        self.engine.prefix_slots()
    }
    fn action_len(&self) -> usize {
        self.chunk * self.action_dim
    }
    fn upload_observation(
        &self,
        stream: &Arc<CudaStream>,
        slot: usize,
        input: &ModelInput,
    ) -> Result<()> {
        self.engine.upload_observation(stream, slot, input)
    }
    fn enqueue_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<()> {
        self.engine.enqueue_encoder(stream, slot)
    }
    fn upload_decoder_inputs(
        &self,
        stream: &Arc<CudaStream>,
        state: &[f32],
        noise: &[f32],
    ) -> Result<()> {
        self.engine.upload_decoder_inputs(stream, DEC, state, noise)
    }
    fn enqueue_decoder(&self, stream: &Arc<CudaStream>, prefix_slot: usize) -> Result<()> {
        self.engine.enqueue_decoder(stream, prefix_slot, DEC)
    }
    fn download_actions(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        self.engine.download_actions(stream, DEC)
    }
    fn encoder_shape(&self, slot: usize) -> Option<u64> {
        // views × tokens-per-view + prompt tokens: unique since prompts are shorter than a view.
        let l = self.engine.prefix_len(slot);
        (l > 0).then_some(l as u64)
    }
    fn decoder_shape(&self, prefix_slot: usize) -> Option<u64> {
        let l = self.engine.prefix_len(prefix_slot);
        let c = self.engine.chunk(DEC);
        (l > 0 && c > 0).then_some(((l as u64) << 32) | c as u64)
    }
}

impl super::PartitionedPi0<Pi0Stages> {
    /// The partitioned pipeline around a `Pi0Cuda` (on the engine's context). `chunk` is the
    /// action chunk length the caller will use (for sizing reports; noise sets the real one).
    pub fn from_engine(
        engine: Pi0Cuda,
        chunk: usize,
        opts: super::PipelineOptions,
    ) -> Result<Self> {
        let ctx = engine.context().clone();
        super::PartitionedPi0::new(ctx, Pi0Stages::new(engine, chunk), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{ActionChunk, PartitionedPi0, SwitchReport};

    fn send_sync<T: Send + Sync>() {}

    /// The ROS node drives the pipeline from tokio tasks: it must be shareable across threads.
    #[test]
    fn pipeline_is_send_and_sync() {
        send_sync::<PartitionedPi0<Pi0Stages>>();
        send_sync::<PartitionedPi0<crate::partition::synthetic::SyntheticStages>>();
        send_sync::<ActionChunk>();
        send_sync::<SwitchReport>();
    }
}
