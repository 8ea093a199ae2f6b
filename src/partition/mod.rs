//! SM-partitioned encoder/decoder streams (issue #4).
//!
//! * [`split`]: requests (`encoder_pct`, `decoder_pct` in 1..=100) and the SM arithmetic of each
//!   backend (green contexts: groups of 8 SMs on Hopper; MPS: exact counts; none).
//! * [`device`]: green-context and MPS execution-affinity partitions, with the SM counts the
//!   driver actually gave; `cuda_available()` for clean skips on machines without a GPU.
//! * [`stage`]: the `StageEngine` trait (encoder/decoder enqueued on any stream; graphs
//!   captured per partition stream).
//! * [`pipeline`]: `PartitionedPi0` — `forward_mps`, the streaming API
//!   (`submit_observation` / `request_actions`), live `set_split` at frame boundaries.
//! * [`swap`]: the GPU-free state machines (frame-boundary swap, bounded cache, prefix slots).
//! * [`synthetic`]: the %smid probe and synthetic stages of π0's shape.
//! * [`mod@bench`]: the six-way benchmark.
//! * [`runtime_kernels`]: NVRTC compile + context-independent load and launch of kernels/partition/
//!   (its `RUNTIME_SOURCES` list is what CI compile-checks).
//! * [`spans`]: GPU timestamps around stage launches (a study tool for the lockstep frame).
//! * [`interference`]: what slows a stage down beside the other (shared power, L2, HBM, launches).
//!
//! docs/tuning.md says how to choose a split; docs/partition-notes.md what was measured.

pub mod bench;
pub mod device;
pub mod interference;
pub mod pi0;
pub mod pipeline;
pub mod runtime_kernels;
pub mod spans;
pub mod split;
pub mod stage;
pub mod swap;
pub mod synthetic;

pub use device::{cuda_available, Partition};
pub use pipeline::{
    ActionChunk, PartitionInfo, PartitionedPi0, PipelineOptions, StreamStats, SwitchRecord,
    SwitchReport,
};
pub use split::{Backend, SmLayout, SplitPlan, SplitRequest, StagePlan};
pub use stage::{StageEngine, StageGraph};
pub use swap::ObsId;
