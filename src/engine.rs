//! The interface every engine implements (CPU reference, CUDA), and the model-level input.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// One observation as the model consumes it (after pre-processing).
#[derive(Clone, Debug, Default)]
pub struct ModelInput {
    /// One entry per view slot (base, left wrist, right wrist; at most `num_views`):
    /// `Some(224×224×3 HWC f32 in [-1, 1])`, or `None` for a masked / missing camera.
    pub images: Vec<Option<Vec<f32>>>,
    /// Prompt token ids without padding (BOS ... "\n"), at most `max_token_len`.
    pub tokens: Vec<u32>,
    /// Normalised state, zero-padded to `action_dim`.
    pub state: Vec<f32>,
}

impl ModelInput {
    /// Checks sizes and values against `cfg`; engines call this before any work.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let px = cfg.vision.image_size * cfg.vision.image_size * 3;
        if self.images.is_empty() || self.images.len() > cfg.num_views {
            return Err(Error::Input(format!(
                "{} view slots given, the model takes 1..={}",
                self.images.len(),
                cfg.num_views
            )));
        }
        if self.images.iter().all(Option::is_none) {
            return Err(Error::Input("every camera view is masked".into()));
        }
        for (i, img) in self.images.iter().enumerate() {
            if let Some(img) = img {
                if img.len() != px {
                    return Err(Error::Input(format!(
                        "view {i} has {} values, expected {px} (224×224×3)",
                        img.len()
                    )));
                }
                if img.iter().any(|x| !x.is_finite()) {
                    return Err(Error::Input(format!("view {i} contains NaN or Inf")));
                }
            }
        }
        if self.tokens.len() > cfg.max_token_len {
            return Err(Error::Input(format!(
                "{} prompt tokens, at most {}",
                self.tokens.len(),
                cfg.max_token_len
            )));
        }
        if let Some(t) = self.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!(
                "token id {t} outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        if self.state.len() != cfg.action_dim {
            return Err(Error::Input(format!(
                "state has {} values, expected {}",
                self.state.len(),
                cfg.action_dim
            )));
        }
        if self.state.iter().any(|x| !x.is_finite()) {
            return Err(Error::Input("state contains NaN or Inf".into()));
        }
        Ok(())
    }
}

/// A π0 engine: observation + initial noise (x at t = 1) → action chunk (x at t = 0).
pub trait PolicyEngine: Send {
    /// Short name for logs ("cpu", "cuda").
    fn name(&self) -> &str;
    fn config(&self) -> &ModelConfig;
    /// `noise` is `chunk × action_dim` row-major; the result has the same shape (normalised
    /// actions, all `action_dim` columns).
    fn sample_actions(&mut self, input: &ModelInput, noise: &[f32]) -> Result<Vec<f32>>;
}

/// Seeded standard-normal noise, `chunk × action_dim`: the same seed gives the same noise on
/// every machine, which makes replays and node outputs reproducible.
pub fn gaussian_noise(seed: u64, chunk: usize, action_dim: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..chunk * action_dim)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// Validates a noise buffer and returns its chunk size.
pub fn noise_chunk(noise: &[f32], cfg: &ModelConfig) -> Result<usize> {
    if noise.is_empty() || noise.len() % cfg.action_dim != 0 {
        return Err(Error::Input(format!(
            "noise has {} values, not a positive multiple of action_dim {}",
            noise.len(),
            cfg.action_dim
        )));
    }
    if noise.iter().any(|x| !x.is_finite()) {
        return Err(Error::Input("noise contains NaN or Inf".into()));
    }
    Ok(noise.len() / cfg.action_dim)
}
