//! What the partition layer needs from an engine: the two stages as functions that enqueue on
//! any stream. `gpu::Pi0Cuda` implements it (see `pi0.rs`); `SyntheticStages` is a stand-in
//! with the same shape for tests and for measuring the layer on its own.

use std::sync::Arc;

use cudarc::driver::{sys, CudaStream};

use crate::engine::ModelInput;
use crate::error::Result;

/// The encoder/decoder stages of a π0 engine, enqueued on a caller-chosen stream.
///
/// Contract (what the pipeline guarantees, and what it expects):
/// * calls for the encoder are serialised among themselves, and so are calls for the decoder;
///   an encoder call and a decoder call may run at the same time on two threads, so the two
///   stages must not share host-side mutable state or device scratch;
/// * the pipeline fences prefix slots with events: a slot is never written while a decoder
///   that reads it may still run, and a decoder only reads a slot whose encoder has finished
///   (or waits on its event);
/// * the same stream is passed for every call of one frame of one stage;
/// * graphs are captured with `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL` from a thread other than
///   the hot path's, while the hot path keeps running on other streams: `enqueue_*` may be
///   called for capture concurrently with a hot-path call of the same stage (it only records;
///   host-side state it touches must be synchronised, as `Pi0Cuda`'s per-slot mutexes are).
pub trait StageEngine: Send + Sync {
    fn name(&self) -> String;
    /// Number of prefix K/V slots (at least 2: double-buffered).
    fn prefix_slots(&self) -> usize;
    /// Length of one action chunk (`chunk × action_dim`).
    fn action_len(&self) -> usize;
    fn upload_observation(
        &self,
        stream: &Arc<CudaStream>,
        slot: usize,
        input: &ModelInput,
    ) -> Result<()>;
    fn enqueue_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<()>;
    fn upload_decoder_inputs(
        &self,
        stream: &Arc<CudaStream>,
        state: &[f32],
        noise: &[f32],
    ) -> Result<()>;
    fn enqueue_decoder(&self, stream: &Arc<CudaStream>, prefix_slot: usize) -> Result<()>;
    /// Copies the actions out (synchronises `stream`).
    fn download_actions(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>>;
    /// A key of the input shape the encoder of `slot` has now (a graph is valid only for the
    /// shape it was captured at); None: nothing uploaded yet, nothing to capture.
    fn encoder_shape(&self, _slot: usize) -> Option<u64> {
        Some(0)
    }
    /// The same for the decoder reading `prefix_slot` (prefix length, chunk).
    fn decoder_shape(&self, _prefix_slot: usize) -> Option<u64> {
        Some(0)
    }
    /// Captures the encoder of `slot` as a graph on `stream` (bound to that stream's SMs).
    /// Must only enqueue (no warm-up run): the hot path may be using the slot meanwhile.
    fn capture_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<StageGraph> {
        capture(stream, || self.enqueue_encoder(stream, slot))
    }
    /// Captures the decoder reading `prefix_slot` as a graph on `stream`.
    fn capture_decoder(&self, stream: &Arc<CudaStream>, prefix_slot: usize) -> Result<StageGraph> {
        capture(stream, || self.enqueue_decoder(stream, prefix_slot))
    }
}

/// An instantiated graph of one stage, bound to the SMs of the stream it was captured on.
pub use crate::gpu::Graph as StageGraph;

/// Captures what `body` enqueues on `stream` into an instantiated graph.
pub fn capture(stream: &Arc<CudaStream>, body: impl FnOnce() -> Result<()>) -> Result<StageGraph> {
    let g = StageGraph::capture(stream, sys::CUgraphInstantiate_flags(0), body)?;
    if upload_where() == GraphUpload::Capture {
        g.upload()?;
    }
    Ok(g)
}

/// Where a captured stage graph is uploaded (`PI0_GRAPH_UPLOAD`): a placement experiment for
/// the two frame states of a re-made split (partition-notes v18); on the H200 none of the
/// three placements changed the frame (v19).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GraphUpload {
    /// On the capture stream, right after instantiation (the default).
    Capture,
    /// On the stage stream the graph will be launched on, before it is installed.
    Launch,
    /// Not uploaded ahead: the first launch uploads it.
    FirstLaunch,
}

pub fn upload_where() -> GraphUpload {
    match std::env::var("PI0_GRAPH_UPLOAD").as_deref() {
        Ok("launch") => GraphUpload::Launch,
        Ok("none") => GraphUpload::FirstLaunch,
        _ => GraphUpload::Capture,
    }
}
