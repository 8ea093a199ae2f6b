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

/// bf16 bits of a finite `x`, rounded to nearest even: what the GPU kernels' `f2b` gives.
/// (Same bits as `half::bf16::from_f32`, which the tests check; that one keeps the loop
/// below from vectorising: ~5x slower per image here.)
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Rounds `src` to bf16 into `dst` (same length) and says whether every value was finite: one
/// pass over an image instead of a scan and a copy, and half the bytes to send to the GPU
/// (whose first use of an image value is this same rounding).
pub fn copy_finite_bf16(src: &[f32], dst: &mut [u16]) -> bool {
    assert_eq!(src.len(), dst.len(), "copy_finite_bf16: lengths differ");
    let mut bad = 0u32;
    let mut d = dst.chunks_exact_mut(SCAN_LANES);
    let mut s = src.chunks_exact(SCAN_LANES);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut m = 0u32;
        for (o, &x) in dc.iter_mut().zip(sc) {
            m |= non_finite_bits(x);
            *o = bf16_bits(x);
        }
        bad |= m;
    }
    for (o, &x) in d.into_remainder().iter_mut().zip(s.remainder()) {
        bad |= non_finite_bits(x);
        *o = bf16_bits(x);
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
    fn bf16_staging_rounds_to_nearest_even_like_the_gpu() {
        // Ties go to even, both ways; random values agree with the half crate (RNE).
        let tie_down = f32::from_bits(0x3f80_8000); // 1 + 2^-8: tie, even neighbour below
        let tie_up = f32::from_bits(0x3f81_8000); // tie, even neighbour above
        let mut out = [0u16; 4];
        assert!(copy_finite_bf16(
            &[tie_down, tie_up, -tie_up, f32::MIN_POSITIVE / 3.0],
            &mut out
        ));
        assert_eq!(out[..3], [0x3f80, 0x3f82, 0xbf82]);
        assert_eq!(
            out[3],
            half::bf16::from_f32(f32::MIN_POSITIVE / 3.0).to_bits()
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let v: Vec<f32> = (0..4099).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut out = vec![0u16; v.len()];
        assert!(copy_finite_bf16(&v, &mut out));
        for (x, b) in v.iter().zip(&out) {
            assert_eq!(*b, half::bf16::from_f32(*x).to_bits(), "{x}");
        }
    }

    #[test]
    fn finite_scans_find_every_bad_value_anywhere() {
        // 200 values: three full 64-lane blocks and a remainder of 8.
        let clean: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 1e-3).collect();
        assert!(all_finite(&clean));
        let mut out = vec![0u16; clean.len()];
        assert!(copy_finite_bf16(&clean, &mut out));
        let want: Vec<u16> = clean
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect();
        assert_eq!(out, want);
        for pos in [0, 63, 64, 130, 191, 192, 199] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = clean.clone();
                v[pos] = bad;
                assert!(!all_finite(&v), "{bad} at {pos}");
                let mut out = vec![0u16; v.len()];
                assert!(!copy_finite_bf16(&v, &mut out), "{bad} at {pos}");
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
