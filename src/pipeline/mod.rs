//! Everything the ROS node does that is not ROS, so that plain `cargo test` covers it and the
//! offline tools (bag replay, `pi0-offline`) run exactly the node's code:
//!
//! - [`settings`]: every node parameter, typed, with descriptions and validation (reasons
//!   as strings; refused values keep the old one).
//! - [`sync`]: approximate time sync of camera frames and joint states into observations
//!   (max age, mask-or-wait for a late camera).
//! - [`runner`]: [`PolicyRunner`]: frames → model images, joint state by names → state,
//!   prompt → tokens, engine, un-normalised [`ActionChunk`] with timing. Noise for inference
//!   `k` is `engine::gaussian_noise(seed + k, chunk, action_dim)`.
//!
//! - [`scheduler`]: the node's work loop (sequential / concurrent, two worker threads,
//!   live settings, orderly shutdown) over tokio channels.
//!
//! A replay loop is: for each message in time order, `prepare_image` / `JointMap::extract`,
//! `ObservationSync::push_*`, then `poll(message_time)` and `PolicyRunner::infer(obs, prompt, k)`.

pub mod runner;
pub mod scheduler;
pub mod settings;
pub mod sync;

pub use runner::{ActionChunk, EngineHandle, JointMap, OwnedImage, PolicyRunner, Prefix, Timing};
pub use settings::{NodeSettings, ParamValue, PARAMS};
pub use sync::{JointSample, Observation, ObservationSync, Stamp, SyncConfig};
