//! pi0_mps: the π0 vision-language-action policy, exact against openpi, on a CPU reference
//! engine and on NVIDIA GPUs (SM-partitioned encoder/decoder streams), served as a ROS 2 node.
//!
//! Layout: `model` (config, checkpoint, tokenizer, pre/post-processing), `cpu` (the f32
//! reference engine), `gpu` (the CUDA engine), `engine` (the interface both implement),
//! `bag` (rosbag2 I/O), `ros` (the r2r node, behind the `ros` feature).

pub mod bag;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod model;
// SM-partitioned encoder/decoder streams (issue #4)
pub mod partition;
pub mod pipeline;
#[cfg(feature = "ros")]
pub mod ros;

pub use engine::{ModelInput, PolicyEngine};
pub use error::{Error, Result};
