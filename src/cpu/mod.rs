//! The f32 CPU reference engine (openpi's math, no shortcuts that change results).
//!
//! Layout follows candle's habits: `siglip` (vision tower + projector), `gemma` (one Gemma
//! split at its attention so the LLM and the action expert can share it), `pi0` (token
//! embedding, action/state/time heads), `ops` (the f32 kernels), `weights` (a prefixed loader
//! that fetches tensors by their checkpoint names).
//!
//! Inference = [`CpuEngine::encode_prefix`] (vision → LLM, keeping each layer's K/V for the
//! valid prefix rows only: masked views and prompt padding are dropped, which is exactly what
//! openpi's masks compute) + `num_steps` Euler steps of [`CpuEngine::velocity`].
//! Weights are held as one f32 copy (≈13 GB for full-size π0; the LLM's last-layer o-proj/MLP
//! and final norm, whose outputs π0 never uses, are not loaded).

pub mod gemma;
pub mod ops;
pub mod pi0;
pub mod siglip;
pub mod weights;

use std::path::Path;

use crate::engine::{noise_chunk, ModelInput, PolicyEngine};
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, LoadedCheckpoint};
use crate::model::config::ModelConfig;
use crate::model::keys;

use gemma::Gemma;
use ops::AttnShape;
use pi0::{ActionHeads, TokenEmbedding};
use siglip::SiglipVision;
use weights::Vb;

/// The LLM's per-layer K/V over the valid prefix rows (valid views' image tokens, then the
/// prompt tokens), at positions `0..len`.
#[derive(Clone, Debug)]
pub struct PrefixCache {
    /// Valid prefix rows.
    pub len: usize,
    /// Image-token rows (256 per unmasked view); prompt rows follow them.
    pub image_rows: usize,
    /// Per LLM layer: `len × kv_heads·head_dim`, RoPE applied.
    pub k: Vec<Vec<f32>>,
    /// Per LLM layer: `len × kv_heads·head_dim`.
    pub v: Vec<Vec<f32>>,
}

impl PrefixCache {
    /// RoPE position of prefix row `i` (masked rows were dropped, so they never advanced it).
    pub fn position(&self, i: usize) -> usize {
        i
    }
}

/// One Euler step: the time it ran at, the velocity, and x after the update.
#[derive(Clone, Debug)]
pub struct Step {
    pub t: f32,
    pub v_t: Vec<f32>,
    pub x_t: Vec<f32>,
}

/// Everything one `sample_actions` computed after the prefix.
#[derive(Clone, Debug)]
pub struct Trace {
    pub actions: Vec<f32>,
    pub steps: Vec<Step>,
}

/// The f32 reference engine.
pub struct CpuEngine {
    cfg: ModelConfig,
    vision: SiglipVision,
    embed: TokenEmbedding,
    llm: Gemma,
    expert: Gemma,
    heads: ActionHeads,
}

impl CpuEngine {
    /// Copies every tensor π0 uses out of `ckpt` as f32.
    pub fn new(ckpt: &LoadedCheckpoint) -> Result<Self> {
        let cfg = ckpt.config.clone();
        cfg.validate()?;
        let root = Vb::root(&ckpt.checkpoint);
        let vision = SiglipVision::load(
            &root.pp(keys::VISION),
            &root.pp(keys::PROJECTOR),
            &cfg.vision,
            cfg.llm.width,
        )?;
        let embed = TokenEmbedding::load(&root, &cfg)?;
        let llm = Gemma::load(&root.pp(keys::LLM), &cfg.llm, false, false)?;
        let expert = Gemma::load(&root.pp(keys::EXPERT), &cfg.expert, true, true)?;
        let heads = ActionHeads::load(&root, &cfg)?;
        Ok(CpuEngine {
            cfg,
            vision,
            embed,
            llm,
            expert,
            heads,
        })
    }

    /// Loads the checkpoint at `path` (see `checkpoint::load`) and builds the engine.
    pub fn load(path: &Path) -> Result<Self> {
        Self::new(&checkpoint::load(path)?)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// One view's image tokens after the projector: `tokens_per_view × llm width`.
    pub fn embed_image(&self, image: &[f32]) -> Result<Vec<f32>> {
        let px = self.cfg.vision.image_size * self.cfg.vision.image_size * 3;
        if image.len() != px {
            return Err(Error::Input(format!(
                "image has {} values, expected {px}",
                image.len()
            )));
        }
        Ok(self.vision.forward(&[image]))
    }

    /// The valid prefix rows' embeddings: [unmasked views' image tokens | prompt tokens · √width],
    /// `rows × llm width`, and the number of image rows.
    pub fn embed_prefix(&self, input: &ModelInput) -> Result<(Vec<f32>, usize)> {
        input.validate(&self.cfg)?;
        let views: Vec<&[f32]> = input.images.iter().flatten().map(Vec::as_slice).collect();
        let mut x = self.vision.forward(&views);
        let image_rows = x.len() / self.cfg.llm.width;
        x.extend(self.embed.forward(&input.tokens)?);
        Ok((x, image_rows))
    }

    /// Runs the LLM over the prefix (bidirectional attention among valid rows) and keeps each
    /// layer's K (after RoPE) and V.
    pub fn encode_prefix(&self, input: &ModelInput) -> Result<PrefixCache> {
        let (mut x, image_rows) = self.embed_prefix(input)?;
        let c = &self.cfg.llm;
        let len = x.len() / c.width;
        let positions: Vec<usize> = (0..len).collect();
        let (sin, cos) = ops::rope_tables(&positions, c.head_dim, c.rope_max_wavelength);
        let shape = attn_shape(c);
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for (i, layer) in self.llm.layers.iter().enumerate() {
            let qkv = layer.attn_in(&x, c, &sin, &cos);
            if i + 1 < self.llm.layers.len() {
                let attn = ops::attention(&qkv.q, &qkv.k, &qkv.v, len, len, shape, &|_| len);
                layer.attn_out(&mut x, &attn, c);
            }
            ks.push(qkv.k);
            vs.push(qkv.v);
        }
        Ok(PrefixCache {
            len,
            image_rows,
            k: ks,
            v: vs,
        })
    }

    /// The flow velocity v_t for x_t (`chunk × action_dim`) at time `t`: the expert over
    /// [state token | chunk action tokens] at positions `prefix.len + 0..=chunk`, attending to
    /// the prefix K/V; the state token sees prefix + itself, action tokens see everything.
    pub fn velocity(
        &self,
        prefix: &PrefixCache,
        state: &[f32],
        x_t: &[f32],
        t: f32,
    ) -> Result<Vec<f32>> {
        let a = self.cfg.action_dim;
        if state.len() != a {
            return Err(Error::Input(format!(
                "state has {} values, expected {a}",
                state.len()
            )));
        }
        let chunk = noise_chunk(x_t, &self.cfg)?;
        let c = &self.cfg.expert;
        if prefix.k.len() != c.depth || prefix.v.len() != c.depth {
            return Err(Error::Input(format!(
                "prefix cache has {} layers, the model {}",
                prefix.k.len(),
                c.depth
            )));
        }
        let kv = c.kv_dim() * prefix.len;
        if prefix.k.iter().chain(&prefix.v).any(|t| t.len() != kv) {
            return Err(Error::Input(format!(
                "prefix cache layers do not hold {} rows of {} K/V values",
                prefix.len,
                c.kv_dim()
            )));
        }
        let time_emb = pi0::time_embedding(
            t,
            self.cfg.time_embed_dim(),
            self.cfg.time_min_period,
            self.cfg.time_max_period,
        );
        let mut x = self.heads.suffix_tokens(state, x_t, &time_emb);
        let rows = 1 + chunk;
        let p = prefix.len;
        let positions: Vec<usize> = (p..p + rows).collect();
        let (sin, cos) = ops::rope_tables(&positions, c.head_dim, c.rope_max_wavelength);
        let shape = attn_shape(c);
        let nk = p + rows;
        let visible = move |i: usize| if i == 0 { p + 1 } else { nk };
        for (l, layer) in self.expert.layers.iter().enumerate() {
            let qkv = layer.attn_in(&x, c, &sin, &cos);
            let k = [prefix.k[l].as_slice(), &qkv.k].concat();
            let v = [prefix.v[l].as_slice(), &qkv.v].concat();
            let attn = ops::attention(&qkv.q, &k, &v, rows, nk, shape, &visible);
            layer.attn_out(&mut x, &attn, c);
        }
        let x = self.expert.final_norm(&x);
        Ok(self.heads.action_out_proj.forward(&x[c.width..]))
    }

    /// The Euler loop from `noise` (x at t = 1): `num_steps` steps of x += dt·v_t with
    /// dt = −1/num_steps, t accumulated in f32 from 1.0. Returns every step.
    pub fn denoise(&self, prefix: &PrefixCache, state: &[f32], noise: &[f32]) -> Result<Trace> {
        noise_chunk(noise, &self.cfg)?;
        let dt = (-1.0f64 / self.cfg.num_steps as f64) as f32;
        let mut x = noise.to_vec();
        let mut t = 1.0f32;
        let mut steps = Vec::with_capacity(self.cfg.num_steps);
        for _ in 0..self.cfg.num_steps {
            let v_t = self.velocity(prefix, state, &x, t)?;
            for (x, v) in x.iter_mut().zip(&v_t) {
                *x += dt * v;
            }
            steps.push(Step {
                t,
                v_t,
                x_t: x.clone(),
            });
            t += dt;
        }
        Ok(Trace { actions: x, steps })
    }

    /// Prefix once, then the Euler loop; every intermediate step kept.
    pub fn sample_actions_traced(&self, input: &ModelInput, noise: &[f32]) -> Result<Trace> {
        input.validate(&self.cfg)?;
        noise_chunk(noise, &self.cfg)?;
        let prefix = self.encode_prefix(input)?;
        self.denoise(&prefix, &input.state, noise)
    }
}

fn attn_shape(c: &crate::model::config::GemmaConfig) -> AttnShape {
    AttnShape {
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    }
}

impl PolicyEngine for CpuEngine {
    fn name(&self) -> &str {
        "cpu"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn sample_actions(&mut self, input: &ModelInput, noise: &[f32]) -> Result<Vec<f32>> {
        Ok(self.sample_actions_traced(input, noise)?.actions)
    }
}
