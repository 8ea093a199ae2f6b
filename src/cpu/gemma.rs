//! A Gemma transformer (gemma.py as openpi uses it), split at the attention so that two of them
//! (the PaliGemma LLM and the action expert) can share attention layer by layer:
//! `attn_in` (RMSNorm (1+w) → q/k/v → split-half RoPE → q·head_dim^-0.5) and `attn_out`
//! (o-proj + residual → RMSNorm (1+w) → gelu_tanh(gate) ⊙ up → down + residual).

use super::ops::{self, Linear};
use super::weights::Vb;
use crate::error::Result;
use crate::model::config::GemmaConfig;

/// Output projection and MLP of a layer (absent on the LLM's last layer, whose output is unused).
struct LayerTail {
    o_proj: Linear,
    post_attention_layernorm: Vec<f32>,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct GemmaLayer {
    input_layernorm: Vec<f32>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    tail: Option<LayerTail>,
}

/// Projected, rotated query/key/value rows of one layer.
pub struct Qkv {
    /// `rows × heads·head_dim`, RoPE applied and scaled by head_dim^-0.5.
    pub q: Vec<f32>,
    /// `rows × kv_heads·head_dim`, RoPE applied.
    pub k: Vec<f32>,
    /// `rows × kv_heads·head_dim`.
    pub v: Vec<f32>,
}

impl GemmaLayer {
    fn load(vb: &Vb, c: &GemmaConfig, with_tail: bool) -> Result<Self> {
        let w = c.width;
        let attn = vb.pp("self_attn");
        let tail = if with_tail {
            let mlp = vb.pp("mlp");
            Some(LayerTail {
                o_proj: attn.linear("o_proj", c.q_dim(), w, false)?,
                post_attention_layernorm: vb.gemma_norm("post_attention_layernorm", w)?,
                gate_proj: mlp.linear("gate_proj", w, c.mlp_dim, false)?,
                up_proj: mlp.linear("up_proj", w, c.mlp_dim, false)?,
                down_proj: mlp.linear("down_proj", c.mlp_dim, w, false)?,
            })
        } else {
            None
        };
        Ok(GemmaLayer {
            input_layernorm: vb.gemma_norm("input_layernorm", w)?,
            q_proj: attn.linear("q_proj", w, c.q_dim(), false)?,
            k_proj: attn.linear("k_proj", w, c.kv_dim(), false)?,
            v_proj: attn.linear("v_proj", w, c.kv_dim(), false)?,
            tail,
        })
    }

    /// Attention inputs for hidden states `x` (`rows × width`) at RoPE tables `sin`/`cos`.
    pub fn attn_in(&self, x: &[f32], c: &GemmaConfig, sin: &[f32], cos: &[f32]) -> Qkv {
        let h = ops::rms_norm(x, c.width, &self.input_layernorm, c.rms_norm_eps);
        let mut q = self.q_proj.forward(&h);
        let mut k = self.k_proj.forward(&h);
        let v = self.v_proj.forward(&h);
        ops::apply_rope(&mut q, c.num_heads, c.head_dim, sin, cos);
        ops::apply_rope(&mut k, c.num_kv_heads, c.head_dim, sin, cos);
        // gemma.py: `q *= head_dim ** -0.5` (a Python float, applied in f32).
        let scale = (c.head_dim as f64).powf(-0.5) as f32;
        q.iter_mut().for_each(|e| *e *= scale);
        Qkv { q, k, v }
    }

    /// Finishes the layer on `x` in place, given the attention output rows of this model's tokens.
    pub fn attn_out(&self, x: &mut [f32], attn: &[f32], c: &GemmaConfig) {
        let t = self
            .tail
            .as_ref()
            .expect("attn_out on a layer loaded without output projection and MLP");
        ops::add_assign(x, &t.o_proj.forward(attn));
        let h = ops::rms_norm(x, c.width, &t.post_attention_layernorm, c.rms_norm_eps);
        let mut gate = t.gate_proj.forward(&h);
        let up = t.up_proj.forward(&h);
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = ops::gelu_tanh(*g) * u;
        }
        ops::add_assign(x, &t.down_proj.forward(&gate));
    }
}

/// The layers of one Gemma and, optionally, its final norm.
pub struct Gemma {
    pub cfg: GemmaConfig,
    pub layers: Vec<GemmaLayer>,
    /// Final RMSNorm scale (1 + w), when loaded.
    pub norm: Option<Vec<f32>>,
}

impl Gemma {
    /// `vb` at the model (`...language_model` or `...gemma_expert.model`). `full_last_layer` and
    /// `final_norm` say whether the last layer's o-proj/MLP and the final norm are needed.
    pub fn load(
        vb: &Vb,
        cfg: &GemmaConfig,
        full_last_layer: bool,
        final_norm: bool,
    ) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| {
                let with_tail = full_last_layer || i + 1 < cfg.depth;
                GemmaLayer::load(&vb.pp(&format!("layers.{i}")), cfg, with_tail)
            })
            .collect::<Result<_>>()?;
        let norm = if final_norm {
            Some(vb.gemma_norm("norm", cfg.width)?)
        } else {
            None
        };
        Ok(Gemma {
            cfg: cfg.clone(),
            layers,
            norm,
        })
    }

    /// The final norm applied to `x`.
    pub fn final_norm(&self, x: &[f32]) -> Vec<f32> {
        let scale = self.norm.as_ref().expect("final norm not loaded");
        ops::rms_norm(x, self.cfg.width, scale, self.cfg.rms_norm_eps)
    }
}
