//! SigLIP vision tower (big_vision `siglip.py` as openpi uses it) plus the PaliGemma projector:
//! 14×14/14 patch conv on HWC images in [-1, 1] → + learned pos-emb → pre-LN encoder blocks
//! (MHA with biases, GELU-tanh MLP) → post LayerNorm → linear projector to the LLM width.
//! No √width scaling of the image tokens (openpi's PaliGemma).

use rayon::prelude::*;

use super::ops::{self, AttnShape, Linear};
use super::weights::Vb;
use crate::error::Result;
use crate::model::config::VisionConfig;

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &Vb, width: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get("weight", &[width])?,
            bias: vb.get("bias", &[width])?,
            eps,
        })
    }
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        ops::layer_norm(
            &mut y,
            self.weight.len(),
            &self.weight,
            &self.bias,
            self.eps,
        );
        y
    }
}

/// One encoder block: x += MHA(LN1(x)); x += fc2(gelu(fc1(LN2(x)))).
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(vb: &Vb, c: &VisionConfig) -> Result<Self> {
        let (w, inner) = (c.width, c.num_heads * c.head_dim);
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), w, c.layernorm_eps)?,
            q_proj: attn.linear("q_proj", w, inner, true)?,
            k_proj: attn.linear("k_proj", w, inner, true)?,
            v_proj: attn.linear("v_proj", w, inner, true)?,
            out_proj: attn.linear("out_proj", inner, w, true)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), w, c.layernorm_eps)?,
            fc1: mlp.linear("fc1", w, c.mlp_dim, true)?,
            fc2: mlp.linear("fc2", c.mlp_dim, w, true)?,
        })
    }

    /// `x` holds `views × tokens` rows; attention stays within each view.
    fn forward(&self, x: &mut [f32], tokens: usize, c: &VisionConfig) {
        let inner = c.num_heads * c.head_dim;
        let h = self.layer_norm1.forward(x);
        let mut q = self.q_proj.forward(&h);
        let k = self.k_proj.forward(&h);
        let v = self.v_proj.forward(&h);
        // flax MultiHeadDotProductAttention: query / sqrt(head_dim).
        let scale = (c.head_dim as f32).sqrt();
        for e in &mut q {
            *e /= scale;
        }
        let shape = AttnShape {
            heads: c.num_heads,
            kv_heads: c.num_heads,
            head_dim: c.head_dim,
        };
        let n = tokens * inner;
        let attn: Vec<Vec<f32>> = q
            .par_chunks(n)
            .zip(k.par_chunks(n))
            .zip(v.par_chunks(n))
            .map(|((q, k), v)| ops::attention(q, k, v, tokens, tokens, shape, &|_| tokens))
            .collect();
        let attn = attn.concat();
        ops::add_assign(x, &self.out_proj.forward(&attn));

        let h = self.layer_norm2.forward(x);
        let mut m = self.fc1.forward(&h);
        m.iter_mut().for_each(|e| *e = ops::gelu_tanh(*e));
        ops::add_assign(x, &self.fc2.forward(&m));
    }
}

/// The vision tower and the multimodal projector.
pub struct SiglipVision {
    cfg: VisionConfig,
    /// Patch conv as a matrix `(width, 3·p·p)`, columns ordered (channel, row, column).
    patch_embedding: Linear,
    position_embedding: Vec<f32>,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    projector: Linear,
}

impl SiglipVision {
    /// `vb` at the vision model (`...vision_tower.vision_model`), `projector` at
    /// `...multi_modal_projector.linear`.
    pub fn load(vb: &Vb, projector: &Vb, cfg: &VisionConfig, llm_width: usize) -> Result<Self> {
        let (w, p) = (cfg.width, cfg.patch_size);
        let emb = vb.pp("embeddings");
        let patch = emb.pp("patch_embedding");
        let patch_embedding = Linear {
            weight: patch.get("weight", &[w, 3, p, p])?,
            bias: Some(patch.get("bias", &[w])?),
            in_dim: 3 * p * p,
            out_dim: w,
        };
        let position_embedding = emb
            .pp("position_embedding")
            .get("weight", &[cfg.tokens_per_view(), w])?;
        let layers = (0..cfg.depth)
            .map(|i| EncoderLayer::load(&vb.pp(&format!("encoder.layers.{i}")), cfg))
            .collect::<Result<_>>()?;
        Ok(SiglipVision {
            cfg: cfg.clone(),
            patch_embedding,
            position_embedding,
            layers,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), w, cfg.layernorm_eps)?,
            projector: Linear {
                weight: projector.get("weight", &[llm_width, w])?,
                bias: Some(projector.get("bias", &[llm_width])?),
                in_dim: w,
                out_dim: llm_width,
            },
        })
    }

    /// Patches of one HWC image as rows `(tokens, 3·p·p)`, row-major over the patch grid.
    fn patches(&self, image: &[f32], out: &mut Vec<f32>) {
        let (s, p) = (self.cfg.image_size, self.cfg.patch_size);
        let side = s / p;
        for py in 0..side {
            for px in 0..side {
                for c in 0..3 {
                    for i in 0..p {
                        for j in 0..p {
                            out.push(image[((py * p + i) * s + px * p + j) * 3 + c]);
                        }
                    }
                }
            }
        }
    }

    /// Image tokens after the projector for `images` (each `size × size × 3` HWC):
    /// `images.len() × tokens_per_view` rows of the LLM width. Views are batched through the
    /// linear layers and attend only within themselves.
    pub fn forward(&self, images: &[&[f32]]) -> Vec<f32> {
        let c = &self.cfg;
        let tokens = c.tokens_per_view();
        let mut patches = Vec::with_capacity(images.len() * tokens * c.patch_dim());
        for img in images {
            assert_eq!(img.len(), c.image_size * c.image_size * 3, "image size");
            self.patches(img, &mut patches);
        }
        let mut x = self.patch_embedding.forward(&patches);
        for view in x.chunks_exact_mut(tokens * c.width) {
            ops::add_assign(view, &self.position_embedding);
        }
        for layer in &self.layers {
            layer.forward(&mut x, tokens, c);
        }
        let x = self.post_layernorm.forward(&x);
        self.projector.forward(&x)
    }
}
