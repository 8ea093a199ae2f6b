//! The CUDA engine: π0 on one NVIDIA GPU through cudarc (driver API, cuBLASLt, NVRTC).
//!
//! * Weights are uploaded once in bf16 with exact folds from pi0-model.md §6 item 4
//!   (action-in ∘ time-MLP pre-multiplied in f64, per-step time-bias table, final norm and dt
//!   in the fp32 out-proj + Euler kernel, last LLM layer K/V only, masked views and prompt
//!   padding dropped). Norm scales are applied in fp32 by the norm kernels instead of being
//!   folded into the bf16 weights: folding re-rounds every weight and cost accuracy.
//! * GEMM inputs are bf16 with fp32 accumulation; the residual streams (vision, LLM, expert)
//!   are kept in fp32 (GEMMs accumulate into them with beta = 1); softmax, norms and RoPE in
//!   fp32; the Euler state x_t stays fp32.
//! * Kernels (kernels/*.cu) are compiled by NVRTC for the GPU in use (sm_90a on Hopper), cached
//!   on disk by source hash + arch + driver, and loaded context-independently so they launch on
//!   green-context streams too.
//! * Stages: `upload_observation` → `enqueue_encoder` (prefix slot → K/V) and
//!   `upload_decoder_inputs` → `enqueue_decoder` (prefix slot + decoder slot → actions) →
//!   `download_actions`, on any stream; `capture_encoder` / `capture_decoder` make CUDA graphs
//!   of a stage on a given stream. Prefix slots and decoder slots own separate scratch memory
//!   and cuBLASLt workspaces, so stages of different slots may run concurrently.
//! * `forward` runs both stages as graphs on the engine's stream; `forward_eager` without.

pub(crate) mod device;
mod engine;
mod gateup;
mod graph;
mod lt;
pub mod probe;
mod skinny;
mod weights;

use std::sync::Arc;

use cudarc::driver::CudaStream;

pub use graph::Graph;

pub use device::{
    arch_for, kernel_names, kernel_source, nvrtc_available, nvrtc_compile, nvrtc_compile_with_log,
};
pub use engine::{Pi0Cuda, StageTimes};
pub use probe::{check_libraries, skip_reason};
pub use weights::{time_embedding, RandomSource, WeightSource};

use crate::error::Result;

/// Engine construction options. The maxima size the static buffers (and so bound what
/// `forward` accepts); views are capped at the model's `num_views`, the prompt at its
/// `max_token_len`.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// CUDA device ordinal.
    pub device: usize,
    pub max_views: usize,
    pub max_prompt_len: usize,
    pub max_chunk: usize,
    /// Prefix (encoder output) slots, for double-buffered K/V.
    pub prefix_slots: usize,
    /// Decoder slots (independent state/noise/actions and scratch).
    pub decoder_slots: usize,
    /// Decoder weight GEMMs through the weight-streaming kernel (kernels/skinny.cu); false:
    /// cuBLASLt (the reference path; also used for shapes the kernel does not cover).
    pub weight_streaming: bool,
    /// Programmatic dependent launches (Hopper and newer): the decoder's weight GEMMs prefetch
    /// their first weight tiles while the kernel before them finishes; on streams other than
    /// the engine's own (the partitioned pipeline's) every kernel of ours joins the chain.
    pub pdl: bool,
    /// Vision attention as one fused kernel (kernels/flash.cu) instead of QKᵀ GEMM → softmax →
    /// P·V GEMM on cuBLASLt (the reference path; also used for head dims the kernel lacks).
    pub fused_attention: bool,
    /// The fused kernel for the Gemma blocks too (LLM prefix, action expert; head dim 256).
    /// Off by default: on the H100 it is still slower there than cuBLASLt (docs/gpu-notes.md
    /// v14: decoder 9.34 vs 8.56 ms).
    pub fused_gemma_attention: bool,
    /// The expert's norm-fed weight GEMMs (q|k|v, gate|up) in fp16 instead of bf16, with the
    /// RMSNorms writing fp16 for them (weight-streaming path only; per layer, where weights and
    /// norm outputs fit fp16's range). fp16 keeps 3 more mantissa bits: on the ill-conditioned
    /// full-size 1-view prompt-20 input the bf16 rounding of those inputs is the largest single
    /// error source (docs/gpu-notes.md v23). Same speed.
    pub expert_f16: bool,
    /// The LLM's gate|up GEMM and GELU·up as one kernel (kernels/gateup.cu, Hopper only), so
    /// the 2F-wide gate|up product is never written. A study path, off by default until
    /// measured faster; `PI0_LLM_MLP=fused` turns it on.
    pub fused_llm_mlp: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            device: 0,
            max_views: 3,
            max_prompt_len: 48,
            max_chunk: 64,
            prefix_slots: 2,
            decoder_slots: 2,
            weight_streaming: true,
            pdl: true,
            fused_attention: true,
            fused_gemma_attention: false,
            expert_f16: true,
            fused_llm_mlp: false,
        }
    }
}

/// A captured stage (encoder or decoder) for one (stream, slot, shape). Launch it on any stream;
/// it runs on the SMs of the stream it was captured on.
pub struct StageGraph {
    pub(crate) graph: Graph,
    /// (stage 0 = encoder / 1 = decoder, slot, decoder slot, views or prefix length, prompt
    /// tokens or chunk).
    pub(crate) key: (u8, usize, usize, usize, usize),
}

impl StageGraph {
    /// Launches on the stream it was captured on.
    pub fn launch(&self) -> Result<()> {
        self.graph.launch()
    }
    /// Launches on `stream` (the graph keeps the SM confinement of its capture stream).
    pub fn launch_on(&self, stream: &Arc<CudaStream>) -> Result<()> {
        self.graph.launch_on(stream)
    }
    /// True for an encoder graph, false for a decoder graph.
    pub fn is_encoder(&self) -> bool {
        self.key.0 == 0
    }
    /// (slot, decoder slot, views or prefix length, prompt tokens or chunk).
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.key.1, self.key.2, self.key.3, self.key.4)
    }
}
