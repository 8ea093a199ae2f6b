//! The π0-specific pieces around the two Gemmas (openpi `pi0.py`): the token embedding, the
//! state / action / time heads, and the sin-cos time embedding.

use super::ops::{self, Linear};
use super::weights::Vb;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::keys;

/// The LLM's token embedding (tied with the LM head in the checkpoint), scaled by √width on use.
pub struct TokenEmbedding {
    table: Vec<f32>,
    vocab: usize,
    width: usize,
    scale: f32,
}

impl TokenEmbedding {
    pub fn load(vb: &Vb, cfg: &ModelConfig) -> Result<Self> {
        let (vocab, width) = (cfg.vocab_size, cfg.llm.width);
        Ok(TokenEmbedding {
            table: vb.get(keys::EMBED_TOKENS, &[vocab, width])?,
            vocab,
            width,
            scale: cfg.embed_scale(),
        })
    }

    /// gemma.py `Embedder.encode`: `table[token]` · √width, `tokens.len() × width`.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len() * self.width);
        for &t in tokens {
            let t = t as usize;
            if t >= self.vocab {
                return Err(Error::Input(format!(
                    "token id {t} outside the vocabulary ({})",
                    self.vocab
                )));
            }
            out.extend(
                self.table[t * self.width..(t + 1) * self.width]
                    .iter()
                    .map(|v| v * self.scale),
            );
        }
        Ok(out)
    }
}

/// `state_proj`, `action_in_proj`, `action_time_mlp_in/out`, `action_out_proj`.
pub struct ActionHeads {
    pub state_proj: Linear,
    pub action_in_proj: Linear,
    pub action_time_mlp_in: Linear,
    pub action_time_mlp_out: Linear,
    pub action_out_proj: Linear,
}

impl ActionHeads {
    pub fn load(vb: &Vb, cfg: &ModelConfig) -> Result<Self> {
        let (e, a) = (cfg.expert.width, cfg.action_dim);
        Ok(ActionHeads {
            state_proj: vb.linear("state_proj", a, e, true)?,
            action_in_proj: vb.linear("action_in_proj", a, e, true)?,
            action_time_mlp_in: vb.linear("action_time_mlp_in", 2 * e, e, true)?,
            action_time_mlp_out: vb.linear("action_time_mlp_out", e, e, true)?,
            action_out_proj: vb.linear("action_out_proj", e, a, true)?,
        })
    }

    /// pi0.py `embed_suffix` (π0, not π0.5): [state_proj(state) ; action tokens], where an action
    /// token is action_time_mlp_out(swish(action_time_mlp_in([action_in_proj(x_t), emb(t)]))).
    /// Returns `(1 + chunk) × expert width`.
    pub fn suffix_tokens(&self, state: &[f32], x_t: &[f32], time_emb: &[f32]) -> Vec<f32> {
        let e = self.action_in_proj.out_dim;
        let mut out = self.state_proj.forward(state);
        let actions = self.action_in_proj.forward(x_t);
        let mut cat = Vec::with_capacity(actions.len() * 2);
        for row in actions.chunks_exact(e) {
            cat.extend_from_slice(row);
            cat.extend_from_slice(time_emb);
        }
        let mut h = self.action_time_mlp_in.forward(&cat);
        h.iter_mut().for_each(|v| *v = ops::silu(*v));
        out.extend(self.action_time_mlp_out.forward(&h));
        out
    }
}

/// A Python float literal as the f64 it denotes (openpi writes `min_period=4e-3` in Python;
/// our config holds the nearest f32, whose shortest decimal form is that literal).
fn py_float(x: f32) -> f64 {
    format!("{x}").parse().expect("a float prints as a float")
}

/// pi0.py `posemb_sincos` in f32 as JAX computes it: fraction = linspace(0, 1, dim/2),
/// period = min_period · (max_period/min_period)^fraction, x = t · (1/period · 2 · π),
/// [sin(x), cos(x)] (sin half first).
pub fn time_embedding(t: f32, dim: usize, min_period: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let ratio = (py_float(max_period) / py_float(min_period)) as f32;
    let div = (half.max(2) - 1) as f32;
    let x: Vec<f32> = (0..half)
        .map(|i| {
            let fraction = if i + 1 == half && half > 1 {
                1.0
            } else {
                i as f32 / div
            };
            let period = min_period * ratio.powf(fraction);
            let scale = 1.0 / period * 2.0 * std::f32::consts::PI;
            t * scale
        })
        .collect();
    let mut out: Vec<f32> = x.iter().map(|v| v.sin()).collect();
    out.extend(x.iter().map(|v| v.cos()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_embedding_matches_f64_formula() {
        for &t in &[1.0f32, 0.9, 0.79999995, 0.1, 0.0] {
            let got = time_embedding(t, 64, 4e-3, 4.0);
            assert_eq!(got.len(), 64);
            for i in 0..32 {
                let fraction = i as f64 / 31.0;
                let period = 4e-3 * 1000f64.powf(fraction);
                let x = t as f64 * 2.0 * std::f64::consts::PI / period;
                // f32 rounding of arguments up to ~1570 rad allows ~2e-4 of difference.
                assert!((got[i] as f64 - x.sin()).abs() < 3e-4, "sin {i} at {t}");
                assert!(
                    (got[32 + i] as f64 - x.cos()).abs() < 3e-4,
                    "cos {i} at {t}"
                );
            }
        }
        let zero = time_embedding(0.0, 8, 4e-3, 4.0);
        assert_eq!(zero, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn py_float_recovers_the_literal() {
        assert_eq!(py_float(4e-3), 0.004f64);
        assert_eq!((py_float(4.0) / py_float(4e-3)) as f32, 1000.0);
    }
}
