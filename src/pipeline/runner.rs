//! [`PolicyRunner`]: camera frames + joint state + prompt → model input → engine → un-normalised
//! action chunk with timing. Shared by the ROS node and the offline tools (bag replay,
//! `pi0-offline`), so all of them compute the same actions for the same inputs.
//!
//! Stages (each callable from its own thread; the runner is `Sync`):
//! - [`PolicyRunner::prepare_image`]: one `sensor_msgs/Image`-like frame → 224×224×3 model
//!   image (the node does this when a frame arrives, which also validates it).
//! - [`PolicyRunner::encode`] ("encoder"): the views of one observation + the prompt →
//!   a [`Prefix`] (on the CPU engine: the LLM's K/V cache).
//! - [`PolicyRunner::decode`] ("decoder"): a prefix + a joint state → an [`ActionChunk`].
//!
//! Noise: inference `index` (0, 1, 2, ... since start, counted by the caller) uses
//! `engine::gaussian_noise(seed + index, chunk, action_dim)`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cpu::{CpuEngine, PrefixCache};
use crate::engine::{gaussian_noise, ModelInput, PolicyEngine};
use crate::error::{Error, Result};
use crate::gpu::{GpuOptions, Pi0Cuda};
use crate::model::checkpoint;
use crate::model::config::ModelConfig;
use crate::model::normalize::{find_norm_stats, NormMode, Normalizer};
use crate::model::preprocess::{self, RawImage};
use crate::model::tokenizer::{self, PromptTokenizer};
use crate::partition::pi0::Pi0Stages;
use crate::partition::{Backend as SmBackend, PartitionedPi0, PipelineOptions, SplitRequest};

use super::settings::{BackendChoice, NodeSettings, Partition};
use super::sync::{Observation, Stamp};

/// A camera frame that owns its bytes (a `sensor_msgs/Image` without the header).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedImage {
    pub width: usize,
    pub height: usize,
    pub encoding: String,
    pub step: usize,
    pub data: Vec<u8>,
}

impl OwnedImage {
    pub fn as_raw(&self) -> RawImage<'_> {
        RawImage {
            width: self.width,
            height: self.height,
            encoding: &self.encoding,
            step: self.step,
            data: &self.data,
        }
    }
}

/// A model image: `image_size² × 3` HWC f32 in [-1, 1].
pub type ModelImage = Vec<f32>;

/// Maps `sensor_msgs/JointState` (names + positions) to the state vector.
#[derive(Clone, Debug)]
pub struct JointMap {
    names: Vec<String>,
}

impl JointMap {
    pub fn new(state_joints: &[String]) -> Self {
        JointMap {
            names: state_joints.to_vec(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Positions of the configured joints, in order. Refuses a message that lacks one of
    /// them, has fewer positions than names, or has a non-finite position.
    pub fn extract(&self, names: &[String], positions: &[f64]) -> Result<Vec<f64>> {
        if positions.len() != names.len() {
            return Err(Error::State(format!(
                "{} names but {} positions",
                names.len(),
                positions.len()
            )));
        }
        self.names
            .iter()
            .map(|want| {
                let i = names.iter().position(|n| n == want).ok_or_else(|| {
                    Error::State(format!("joint {want:?} is missing (message has {names:?})"))
                })?;
                let x = positions[i];
                if !x.is_finite() {
                    return Err(Error::State(format!("joint {want:?} position is {x}")));
                }
                Ok(x)
            })
            .collect()
    }
}

/// The model behind the runner.
pub enum EngineHandle {
    /// The CPU reference engine: encoder and decoder run separately (and concurrently).
    Cpu(Arc<CpuEngine>),
    /// Any engine through [`PolicyEngine`]: one whole inference per decode; the encoder
    /// stage only pre-processes and tokenizes.
    Whole(Mutex<Box<dyn PolicyEngine>>),
    /// The CUDA engine on SM-partitioned encoder/decoder streams (`partition::PartitionedPi0`):
    /// `encode` runs on the encoder partition, `decode` on the decoder partition (newest
    /// complete prefix), and the split changes live.
    Partitioned {
        pipe: Box<PartitionedPi0<Pi0Stages>>,
        cfg: Box<ModelConfig>,
    },
}

impl EngineHandle {
    pub fn name(&self) -> String {
        match self {
            EngineHandle::Cpu(_) => "cpu".into(),
            EngineHandle::Whole(e) => e.lock().map(|e| e.name().to_string()).unwrap_or_default(),
            EngineHandle::Partitioned { pipe, .. } => {
                let p = pipe.partition();
                format!(
                    "cuda ({}; {} partition: encoder {} / decoder {} of {} SMs)",
                    pipe.engine().engine.device_name(),
                    p.backend,
                    p.encoder_sms,
                    p.decoder_sms,
                    p.total_sms
                )
            }
        }
    }
    fn config(&self) -> ModelConfig {
        match self {
            EngineHandle::Cpu(e) => e.config().clone(),
            EngineHandle::Whole(e) => e.lock().expect("engine lock").config().clone(),
            EngineHandle::Partitioned { cfg, .. } => (**cfg).clone(),
        }
    }
}

enum PrefixData {
    Cpu(PrefixCache),
    /// Model input without the state, for [`EngineHandle::Whole`].
    Input(ModelInput),
    /// Encoded on the GPU (the pipeline keeps the K/V in its prefix slots).
    Gpu,
}

/// The encoder's result for one observation.
pub struct Prefix {
    /// Stamp of the observation's images.
    pub stamp: Stamp,
    /// View slots that were masked.
    pub masked_slots: Vec<usize>,
    /// Prompt it was encoded with.
    pub prompt: String,
    /// Encoder wall time (ms), tokenization included.
    pub encoder_ms: f64,
    data: PrefixData,
}

/// Per-inference timing, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    /// Encoder stage (vision + LLM prefix; for a whole-only engine: tokenization only).
    pub encoder_ms: f64,
    /// Decoder stage (all flow-matching steps; for a whole-only engine: the whole model).
    pub decoder_ms: f64,
    /// Encoder + decoder for one observation in sequential mode; the decoder alone in
    /// concurrent mode (the prefix was ready before).
    pub end_to_end_ms: f64,
}

/// One action chunk, un-normalised, ready to publish.
#[derive(Clone, Debug)]
pub struct ActionChunk {
    /// The observation's stamp (sequential: images; concurrent: the joint state).
    pub stamp: Stamp,
    /// Stamp of the images the prefix came from.
    pub image_stamp: Stamp,
    pub joint_names: Vec<String>,
    /// `chunk` rows of `joint_names.len()` positions.
    pub points: Vec<Vec<f64>>,
    /// Seconds between points.
    pub dt: f64,
    pub index: u64,
    pub seed: u64,
    pub masked_slots: Vec<usize>,
    pub timing: Timing,
}

impl ActionChunk {
    /// When point `k` is due, after the observation: (k + 1) control periods, in nanoseconds.
    /// The node's and the bag tools' `JointTrajectory` both use this.
    pub fn point_time_ns(&self, k: usize) -> i64 {
        ((k + 1) as f64 * self.dt * 1e9).round() as i64
    }
}

/// Where the runner's model came from (for logs and diagnostics).
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub checkpoint: PathBuf,
    /// True for the built-in seeded random checkpoint.
    pub random_weights: bool,
    pub engine: String,
    pub tokenizer: String,
    pub normalization: String,
}

/// See the module docs.
pub struct PolicyRunner {
    engine: EngineHandle,
    cfg: ModelConfig,
    tokenizer: Box<dyn PromptTokenizer>,
    norm: Normalizer,
    camera_slots: Vec<usize>,
    joints: JointMap,
    action_joints: Vec<String>,
    chunk: usize,
    dt: f64,
    seed: u64,
    info: ModelInfo,
}

impl PolicyRunner {
    /// Assembles a runner; checks the mappings against the model.
    pub fn new(
        engine: EngineHandle,
        tokenizer: Box<dyn PromptTokenizer>,
        norm: Normalizer,
        settings: &NodeSettings,
        info: ModelInfo,
    ) -> Result<Self> {
        let cfg = engine.config();
        settings.validate().map_err(|reason| Error::Parameter {
            name: "camera_slots".into(),
            reason,
        })?;
        let param = |name: &str, reason: String| Error::Parameter {
            name: name.into(),
            reason,
        };
        if let Some(&s) = settings.camera_slots.iter().find(|&&s| s >= cfg.num_views) {
            return Err(param(
                "camera_slots",
                format!("slot {s} but the model has {} view slots", cfg.num_views),
            ));
        }
        for (name, list) in [
            ("state_joints", &settings.state_joints),
            ("action_joints", &settings.action_joints),
        ] {
            if list.len() > cfg.action_dim {
                return Err(param(
                    name,
                    format!(
                        "{} joints but the model's action_dim is {}",
                        list.len(),
                        cfg.action_dim
                    ),
                ));
            }
        }
        if let Some(st) = norm.stats() {
            for (name, n, have) in [
                ("state_joints", settings.state_joints.len(), st.state.len()),
                (
                    "action_joints",
                    settings.action_joints.len(),
                    st.actions.len(),
                ),
            ] {
                if n > have {
                    return Err(param(
                        name,
                        format!("{n} joints but the normalization statistics have {have} values"),
                    ));
                }
            }
        }
        let chunk = if settings.chunk == 0 {
            cfg.action_horizon
        } else {
            settings.chunk
        };
        Ok(PolicyRunner {
            engine,
            tokenizer,
            norm,
            camera_slots: settings.camera_slots.clone(),
            joints: JointMap::new(&settings.state_joints),
            action_joints: settings.action_joints.clone(),
            chunk,
            dt: settings.control_period_s(),
            seed: settings.seed,
            cfg,
            info,
        })
    }

    /// Loads everything the settings name: checkpoint (or the built-in random one), engine for
    /// the backend, tokenizer, normalization statistics.
    pub fn from_settings(settings: &NodeSettings) -> Result<Self> {
        let (ckpt, random) = if settings.checkpoint.is_empty() {
            (builtin_checkpoint(&settings.model_cache)?, true)
        } else {
            (PathBuf::from(&settings.checkpoint), false)
        };
        if random {
            log::warn!(
                "no `checkpoint` parameter: running the built-in SEEDED RANDOM tiny pi0 ({}). \
                 Its actions are meaningless; set checkpoint:=<dir> for a real policy.",
                ckpt.display()
            );
        }
        let engine = load_engine(settings, &ckpt)?;
        let tok_src = if settings.tokenizer.is_empty() {
            ckpt.clone()
        } else {
            PathBuf::from(&settings.tokenizer)
        };
        let tokenizer = tokenizer::load_tokenizer(&tok_src)?;
        let norm = if !settings.norm_stats.is_empty() {
            Normalizer::load(Path::new(&settings.norm_stats), NormMode::ZScore)?
        } else if let Some(p) = find_norm_stats(&ckpt) {
            Normalizer::load(&p, NormMode::ZScore)?
        } else {
            if !random {
                log::warn!(
                    "no norm_stats.json for {}: states and actions are NOT normalized",
                    ckpt.display()
                );
            }
            Normalizer::identity()
        };
        let info = ModelInfo {
            checkpoint: ckpt,
            random_weights: random,
            engine: engine.name(),
            tokenizer: tokenizer.describe(),
            normalization: if norm.is_identity() {
                "identity".into()
            } else {
                format!("{:?}", norm.mode())
            },
        };
        Self::new(engine, tokenizer, norm, settings, info)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    pub fn joint_map(&self) -> &JointMap {
        &self.joints
    }
    pub fn chunk(&self) -> usize {
        self.chunk
    }
    pub fn camera_slots(&self) -> &[usize] {
        &self.camera_slots
    }

    /// Applies a live SM split / mode to the GPU partitions (prepared off the hot path, in
    /// effect at each stage's next frame boundary). `Ok(None)`: this engine has no partitions.
    pub fn reconfigure(
        &self,
        encoder_pct: u32,
        decoder_pct: u32,
        concurrent: bool,
    ) -> Result<Option<String>> {
        let EngineHandle::Partitioned { pipe, .. } = &self.engine else {
            return Ok(None);
        };
        let now = pipe.partition();
        let r = pipe.reconfigure(
            now.backend,
            SplitRequest::new(encoder_pct, decoder_pct)?,
            concurrent,
            now.use_graphs,
        )?;
        let p = pipe.partition();
        Ok(Some(format!(
            "{} partition: encoder {} SMs, decoder {} SMs ({} shared) of {}, concurrent {} (generation {})",
            p.backend, p.encoder_sms, p.decoder_sms, p.shared_sms, p.total_sms, p.concurrent, r.generation
        )))
    }

    /// One frame → model image (validates encoding, sizes, data length).
    pub fn prepare_image(&self, img: &RawImage) -> Result<ModelImage> {
        preprocess::image_to_model_input(img, self.cfg.vision.image_size)
    }

    /// Noise seed of inference `index`.
    pub fn noise_seed(&self, index: u64) -> u64 {
        self.seed.wrapping_add(index)
    }

    /// Encoder stage: `views[i]` is camera i's model image (`None` = masked), mapped to its
    /// view slot by `camera_slots`.
    pub fn encode(&self, views: &[Option<&[f32]>], prompt: &str, stamp: Stamp) -> Result<Prefix> {
        let start = Instant::now();
        if views.len() != self.camera_slots.len() {
            return Err(Error::Input(format!(
                "{} camera images for {} configured cameras",
                views.len(),
                self.camera_slots.len()
            )));
        }
        let n_slots = self.camera_slots.iter().max().map_or(1, |m| m + 1);
        let mut images: Vec<Option<Vec<f32>>> = vec![None; n_slots];
        for (view, &slot) in views.iter().zip(&self.camera_slots) {
            images[slot] = view.map(<[f32]>::to_vec);
        }
        let masked_slots = (0..n_slots).filter(|&s| images[s].is_none()).collect();
        let tokens = self
            .tokenizer
            .encode_prompt(prompt, self.cfg.max_token_len)?;
        let input = ModelInput {
            images,
            tokens,
            state: vec![0.0; self.cfg.action_dim],
        };
        input.validate(&self.cfg)?;
        let data = match &self.engine {
            EngineHandle::Cpu(e) => PrefixData::Cpu(e.encode_prefix(&input)?),
            EngineHandle::Whole(_) => PrefixData::Input(input),
            EngineHandle::Partitioned { pipe, .. } => {
                pipe.encode(&input)?;
                PrefixData::Gpu
            }
        };
        Ok(Prefix {
            stamp,
            masked_slots,
            prompt: prompt.to_string(),
            encoder_ms: ms(start),
            data,
        })
    }

    /// Decoder stage: prefix + state (positions of `state_joints`) → action chunk.
    pub fn decode(
        &self,
        prefix: &Prefix,
        state: &[f64],
        stamp: Stamp,
        index: u64,
    ) -> Result<ActionChunk> {
        let start = Instant::now();
        if state.len() != self.joints.names().len() {
            return Err(Error::State(format!(
                "{} state values for {} state_joints",
                state.len(),
                self.joints.names().len()
            )));
        }
        if state.iter().any(|x| !x.is_finite()) {
            return Err(Error::State("state contains NaN or Inf".into()));
        }
        let model_state = self.norm.normalize_state(state, self.cfg.action_dim)?;
        let seed = self.noise_seed(index);
        let noise = gaussian_noise(seed, self.chunk, self.cfg.action_dim);
        let actions = match (&prefix.data, &self.engine) {
            (PrefixData::Cpu(p), EngineHandle::Cpu(e)) => {
                e.denoise(p, &model_state, &noise)?.actions
            }
            (PrefixData::Input(input), EngineHandle::Whole(e)) => {
                let mut input = input.clone();
                input.state = model_state;
                e.lock()
                    .map_err(|_| Error::Input("engine poisoned by an earlier panic".into()))?
                    .sample_actions(&input, &noise)?
            }
            (PrefixData::Gpu, EngineHandle::Partitioned { pipe, .. }) => {
                pipe.request_actions(&model_state, &noise)?.actions
            }
            _ => return Err(Error::Input("prefix from another engine".into())),
        };
        let n = self.action_joints.len();
        let actions = self
            .norm
            .unnormalize_actions(&actions, self.cfg.action_dim, n)?;
        let points: Vec<Vec<f64>> = actions
            .chunks_exact(n)
            .map(|row| row.iter().map(|&x| x as f64).collect())
            .collect();
        if points.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Input("the model produced NaN or Inf actions".into()));
        }
        let decoder_ms = ms(start);
        Ok(ActionChunk {
            stamp,
            image_stamp: prefix.stamp,
            joint_names: self.action_joints.clone(),
            points,
            dt: self.dt,
            index,
            seed,
            masked_slots: prefix.masked_slots.clone(),
            timing: Timing {
                encoder_ms: prefix.encoder_ms,
                decoder_ms,
                end_to_end_ms: decoder_ms,
            },
        })
    }

    /// Both stages for one assembled observation (sequential mode, replays).
    pub fn infer(
        &self,
        obs: &Observation<ModelImage>,
        prompt: &str,
        index: u64,
    ) -> Result<ActionChunk> {
        let joints = obs
            .joints
            .as_ref()
            .ok_or_else(|| Error::State("observation has no joint state".into()))?;
        let views: Vec<Option<&[f32]>> = obs
            .images
            .iter()
            .map(|f| f.as_ref().map(|f| f.image.as_slice()))
            .collect();
        let prefix = self.encode(&views, prompt, obs.stamp)?;
        let mut chunk = self.decode(&prefix, &joints.positions, obs.stamp, index)?;
        chunk.timing.end_to_end_ms = chunk.timing.encoder_ms + chunk.timing.decoder_ms;
        Ok(chunk)
    }

    /// Convenience for tools: raw frames (per camera, `None` = masked) and a joint state by
    /// names → action chunk, through exactly the node's stages.
    pub fn infer_raw(
        &self,
        images: &[Option<RawImage>],
        joint_names: &[String],
        positions: &[f64],
        prompt: &str,
        stamp: Stamp,
        index: u64,
    ) -> Result<ActionChunk> {
        let prepared: Vec<Option<ModelImage>> = images
            .iter()
            .map(|i| i.as_ref().map(|i| self.prepare_image(i)).transpose())
            .collect::<Result<_>>()?;
        let views: Vec<Option<&[f32]>> = prepared.iter().map(|p| p.as_deref()).collect();
        let state = self.joints.extract(joint_names, positions)?;
        let prefix = self.encode(&views, prompt, stamp)?;
        let mut chunk = self.decode(&prefix, &state, stamp, index)?;
        chunk.timing.end_to_end_ms = chunk.timing.encoder_ms + chunk.timing.decoder_ms;
        Ok(chunk)
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Builds the engine the settings ask for: `cuda` = the CUDA engine on SM-partitioned
/// streams (an error without a usable GPU); `auto` = that when a GPU is usable (falling back
/// to the CPU with a warning if it fails), else the CPU reference engine; `cpu` = the CPU.
pub fn load_engine(settings: &NodeSettings, ckpt: &Path) -> Result<EngineHandle> {
    let gpu_problem = || -> Option<String> {
        if let Err(e) = crate::partition::cuda_available() {
            return Some(e);
        }
        crate::gpu::skip_reason()
    };
    match settings.backend {
        BackendChoice::Cuda => {
            if let Some(why) = gpu_problem() {
                return Err(Error::Gpu(format!("backend cuda: {why}")));
            }
            load_cuda(settings, ckpt)
        }
        BackendChoice::Auto => match gpu_problem() {
            None => load_cuda(settings, ckpt).or_else(|e| {
                log::warn!("CUDA engine unavailable ({e}); falling back to the CPU engine");
                load_cpu(ckpt)
            }),
            Some(why) => {
                log::info!("no usable GPU ({why}): CPU engine");
                load_cpu(ckpt)
            }
        },
        BackendChoice::Cpu => load_cpu(ckpt),
    }
}

fn load_cpu(ckpt: &Path) -> Result<EngineHandle> {
    log::info!("loading {} on the CPU reference engine", ckpt.display());
    Ok(EngineHandle::Cpu(Arc::new(CpuEngine::load(ckpt)?)))
}

fn sm_backend(p: Partition) -> SmBackend {
    match p {
        Partition::Green => SmBackend::Green,
        Partition::Mps => SmBackend::Mps,
        Partition::None => SmBackend::None,
    }
}

fn load_cuda(settings: &NodeSettings, ckpt: &Path) -> Result<EngineHandle> {
    log::info!("loading {} on the CUDA engine", ckpt.display());
    let loaded = checkpoint::load(ckpt)?;
    let cfg = loaded.config.clone();
    let chunk = if settings.chunk == 0 {
        cfg.action_horizon
    } else {
        settings.chunk
    };
    let opts = GpuOptions {
        max_chunk: chunk.max(GpuOptions::default().max_chunk),
        ..GpuOptions::default()
    };
    let engine = Pi0Cuda::new(&loaded, opts)?;
    let ctx = engine.context().clone();
    let pipe = PartitionedPi0::new(
        ctx,
        Pi0Stages::new(engine, chunk),
        PipelineOptions {
            backend: sm_backend(settings.partition),
            split: SplitRequest::new(settings.encoder_pct, settings.decoder_pct)?,
            concurrent: settings.concurrent,
            ..PipelineOptions::default()
        },
    )?;
    Ok(EngineHandle::Partitioned {
        pipe: Box::new(pipe),
        cfg: Box::new(cfg),
    })
}

/// Seed of the built-in random checkpoint.
pub const BUILTIN_SEED: u64 = 0;

/// The built-in seeded random tiny checkpoint (`ModelConfig::tiny()`), written once into the
/// cache directory (`model_cache`, else `$XDG_CACHE_HOME/pi0_mps`, else `~/.cache/pi0_mps`,
/// else the system temp dir) and reused. Safe against concurrent writers (write + rename).
pub fn builtin_checkpoint(model_cache: &str) -> Result<PathBuf> {
    use crate::model::generate::{write_random_checkpoint, WriteOptions};
    let base = if !model_cache.is_empty() {
        PathBuf::from(model_cache)
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("pi0_mps")
    } else if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(h).join(".cache").join("pi0_mps")
    } else {
        std::env::temp_dir().join("pi0_mps")
    };
    let dir = base.join(format!("random-tiny-seed{BUILTIN_SEED}-v1"));
    let marker = dir.join(".complete");
    if marker.is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = base.join(format!(".tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    log::info!(
        "writing the built-in random checkpoint to {}",
        dir.display()
    );
    write_random_checkpoint(
        &ModelConfig::tiny(),
        &tmp,
        BUILTIN_SEED,
        WriteOptions::default(),
    )?;
    std::fs::write(tmp.join(".complete"), b"ok").map_err(|e| Error::io(&tmp, e))?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process won the race; its copy is identical (same seed).
        let _ = std::fs::remove_dir_all(&tmp);
        if !marker.is_file() {
            return Err(Error::checkpoint(
                &dir,
                "could not install the built-in checkpoint",
            ));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn joint_map_picks_by_name_and_refuses_bad_states() {
        let m = JointMap::new(&s(&["b", "a"]));
        assert_eq!(
            m.extract(&s(&["a", "b", "c"]), &[1.0, 2.0, 3.0]).unwrap(),
            vec![2.0, 1.0]
        );
        let e = m.extract(&s(&["a"]), &[1.0]).unwrap_err().to_string();
        assert!(e.contains("\"b\" is missing"), "{e}");
        let e = m
            .extract(&s(&["a", "b"]), &[1.0, f64::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(m.extract(&s(&["a", "b"]), &[1.0]).is_err());
    }
}
