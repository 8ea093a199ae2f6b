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
        self.validate_shapes(cfg)?;
        for (i, img) in self.images.iter().enumerate() {
            if let Some(img) = img {
                if !all_finite(img) {
                    return Err(non_finite_view(i));
                }
            }
        }
        Ok(())
    }

    /// `validate` without the scan of the image values: for engines that check them while
    /// copying the images anyway (`copy_finite`).
    pub fn validate_shapes(&self, cfg: &ModelConfig) -> Result<()> {
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
        if !all_finite(&self.state) {
            return Err(Error::Input("state contains NaN or Inf".into()));
        }
        Ok(())
    }
}

/// The error for a view slot holding NaN or Inf.
pub fn non_finite_view(slot: usize) -> Error {
    Error::Input(format!("view {slot} contains NaN or Inf"))
}

/// Lanes per block of the finite scans: wide enough for the compiler to vectorise the
/// bit tests, which `iter().any(..)` (early exit per element) does not.
const SCAN_LANES: usize = 64;

fn non_finite_bits(x: f32) -> u32 {
    ((x.to_bits() & 0x7f80_0000) == 0x7f80_0000) as u32
}

/// Whether every value is finite (no NaN, no ±Inf).
pub fn all_finite(v: &[f32]) -> bool {
    let mut chunks = v.chunks_exact(SCAN_LANES);
    let mut bad = 0u32;
    for c in &mut chunks {
        bad |= c.iter().fold(0u32, |m, &x| m | non_finite_bits(x));
    }
    bad |= chunks
        .remainder()
        .iter()
        .fold(0u32, |m, &x| m | non_finite_bits(x));
    bad == 0
}

/// Copies `src` into `dst` (same length) and says whether every value was finite: one pass
/// over an image instead of a scan and a copy.
pub fn copy_finite(src: &[f32], dst: &mut [f32]) -> bool {
    assert_eq!(src.len(), dst.len(), "copy_finite: lengths differ");
    let mut bad = 0u32;
    let mut d = dst.chunks_exact_mut(SCAN_LANES);
    let mut s = src.chunks_exact(SCAN_LANES);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut m = 0u32;
        for (o, &x) in dc.iter_mut().zip(sc) {
            m |= non_finite_bits(x);
            *o = x;
        }
        bad |= m;
    }
    for (o, &x) in d.into_remainder().iter_mut().zip(s.remainder()) {
        bad |= non_finite_bits(x);
        *o = x;
    }
    bad == 0
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
    if !all_finite(noise) {
        return Err(Error::Input("noise contains NaN or Inf".into()));
    }
    Ok(noise.len() / cfg.action_dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_scans_find_every_bad_value_anywhere() {
        // 200 values: three full 64-lane blocks and a remainder of 8.
        let clean: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 1e-3).collect();
        assert!(all_finite(&clean));
        let mut out = vec![0f32; clean.len()];
        assert!(copy_finite(&clean, &mut out));
        assert_eq!(out, clean);
        for pos in [0, 63, 64, 130, 191, 192, 199] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = clean.clone();
                v[pos] = bad;
                assert!(!all_finite(&v), "{bad} at {pos}");
                let mut out = vec![0f32; v.len()];
                assert!(!copy_finite(&v, &mut out), "{bad} at {pos}");
            }
        }
        // The largest finite values and subnormals are finite.
        assert!(all_finite(&[
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE / 2.0,
            -0.0
        ]));
    }
}
