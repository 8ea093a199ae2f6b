//! Device weights: read once from a checkpoint (or drawn at random), folded exactly on the host
//! (pi0-model.md §6 item 4), converted to bf16 and uploaded; the expert's norm-fed matrices
//! (q|k|v, gate|up) to fp16 instead where they fit its range (`fp16_fits`, GpuOptions::expert_f16).
//!
//! Norm scales (LayerNorm γ/β, Gemma 1 + w) are applied in fp32 by the norm kernels, not folded
//! into the bf16 weights (folding adds a bf16 rounding of every weight: on full-size random
//! weights it cost ~1e-2 of rel L2 against the f32 reference). Folds kept: q|k|v and gate|up
//! concatenated; action_in ∘ action_time_mlp_in
//! pre-multiplied with the time embedding and all biases in a per-step table; the expert's final
//! norm into action_out_proj (kept fp32 with the Euler update).

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::device::DBuf;
use crate::error::Result;
use crate::model::checkpoint::LoadedCheckpoint;
use crate::model::config::ModelConfig;
use crate::model::keys::{self, InitKind};

/// Where raw tensors come from (canonical names, PyTorch shapes).
pub trait WeightSource: Sync {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    fn bf16(&self, name: &str, shape: &[usize]) -> Result<Vec<bf16>> {
        Ok(self
            .f32(name, shape)?
            .into_iter()
            .map(bf16::from_f32)
            .collect())
    }
}

impl WeightSource for LoadedCheckpoint {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.checkpoint.tensor_f32(name, shape)
    }
    fn bf16(&self, name: &str, shape: &[usize]) -> Result<Vec<bf16>> {
        self.checkpoint.tensor_bf16(name, shape)
    }
}

/// Seeded random weights with openpi's init recipe (benchmarks without a checkpoint).
pub struct RandomSource {
    pub seed: u64,
    kinds: std::collections::HashMap<String, InitKind>,
}

impl RandomSource {
    pub fn new(cfg: &ModelConfig, seed: u64) -> Self {
        let kinds = keys::expected_tensors(cfg)
            .into_iter()
            .map(|t| (t.name, t.kind))
            .collect();
        RandomSource { seed, kinds }
    }
}

impl WeightSource for RandomSource {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let kind = self.kinds.get(name).copied().unwrap_or(InitKind::Bias);
        let len: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let width = *shape.last().unwrap_or(&1);
        let (std, mean) = match kind {
            InitKind::Matrix { scale } => (scale / (fan_in as f32).sqrt(), 0.0),
            InitKind::Bias | InitKind::GemmaNorm => (0.1, 0.0),
            InitKind::LayerNormScale => (0.1, 1.0),
            InitKind::Embedding => (1.0 / (width as f32).sqrt(), 0.0),
            InitKind::PositionEmbedding => (0.2, 0.0),
        };
        let h = name
            .bytes()
            .fold(self.seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
        let mut out = vec![0f32; len];
        out.par_chunks_mut(1 << 18)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(h.wrapping_add(c as u64));
                for x in chunk {
                    let z: f32 = rng.sample(StandardNormal);
                    *x = mean + std * z;
                }
            });
        Ok(out)
    }
}

pub struct VisionLayer {
    /// LayerNorm 1 / 2 gamma and beta (f32, applied in the norm kernel).
    pub ln1_g: DBuf,
    pub ln1_b: DBuf,
    pub ln2_g: DBuf,
    pub ln2_b: DBuf,
    pub qkv_w: DBuf,
    pub qkv_b: DBuf,
    pub o_w: DBuf,
    pub o_b: DBuf,
    pub fc1_w: DBuf,
    pub fc1_b: DBuf,
    pub fc2_w: DBuf,
    pub fc2_b: DBuf,
}

pub struct GemmaLayer {
    /// (1 + w) of the input / post-attention RMSNorms (f32, applied in the norm kernel).
    pub pre: DBuf,
    pub post: DBuf,
    pub qkv_w: DBuf,
    pub o_w: DBuf,
    pub gu_w: DBuf,
    pub down_w: DBuf,
    /// q|k|v and gate|up (the GEMMs fed by the RMSNorms) hold fp16 instead of bf16, and the
    /// norms write fp16 for them (`fp16_fits`).
    pub norm_fed_f16: bool,
}

/// Whether a layer's norm-fed GEMMs can run in fp16 without overflow: every weight within
/// fp16's range (bf16 weights are then exact in fp16 down to 2^-17, and below that off by less
/// than 2^-25), and the norm outputs too: |RMSNorm(x)·scale| <= sqrt(width)·max|scale|.
pub fn fp16_fits(scales: &[&[f32]], width: usize, weights: &[&[f32]]) -> bool {
    const F16_MAX: f32 = 65504.0;
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    scales
        .iter()
        .all(|s| (width as f32).sqrt() * max_abs(s) < F16_MAX)
        && weights.iter().all(|w| max_abs(w) <= F16_MAX)
}

pub struct Weights {
    /// Patch conv as a matrix [W][pd_pad] (columns c, ky, kx; zero-padded to a multiple of 8).
    pub patch_w: DBuf,
    pub patch_b: DBuf,
    pub pos: DBuf,
    pub pd_pad: usize,
    pub vis: Vec<VisionLayer>,
    /// Projector (checkpoint weights; the vision post-LayerNorm is applied in fp32 by the
    /// LayerNorm kernel with `post_g` / `post_b`). Biases of GEMMs that write the fp32
    /// residual streams (patch, o, fc2, projector, action_time_mlp_out) are f32, the others bf16.
    pub proj_w: DBuf,
    pub proj_b: DBuf,
    /// Vision post-LayerNorm gamma / beta.
    pub post_g: DBuf,
    pub post_b: DBuf,
    pub embed: DBuf,
    pub llm: Vec<GemmaLayer>,
    pub exp: Vec<GemmaLayer>,
    pub state_w: DBuf,
    pub state_b: DBuf,
    /// action_time_mlp_in[:, :E] · action_in_proj, f32 [E][A].
    pub wf: DBuf,
    /// Per-step bias table f32 [steps][E].
    pub tb: DBuf,
    pub mlp_out_w: DBuf,
    pub mlp_out_b: DBuf,
    /// action_out_proj with (1 + final_norm) folded in, f32 [A][E].
    pub out_w: DBuf,
    pub out_b: DBuf,
    /// t per step (f32 accumulation like openpi) and dt.
    pub times: Vec<f32>,
    pub dt: f32,
}

fn up_bf16(v: &[f32]) -> Result<DBuf> {
    let b: Vec<bf16> = v.par_iter().map(|&x| bf16::from_f32(x)).collect();
    DBuf::from_slice(&b)
}

/// W[n][k] *= s[k] (rows of length k).
fn scale_cols(w: &mut [f32], s: &[f32]) {
    let k = s.len();
    w.par_chunks_mut(k).for_each(|row| {
        for (x, g) in row.iter_mut().zip(s) {
            *x *= g;
        }
    });
}

/// The sin/cos time embedding of openpi (`posemb_sincos`), in f64.
pub fn time_embedding(t: f64, dim: usize, min_p: f64, max_p: f64) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0f64; dim];
    for i in 0..half {
        let frac = if half > 1 {
            i as f64 / (half - 1) as f64
        } else {
            0.0
        };
        let period = min_p * (max_p / min_p).powf(frac);
        let x = t / period * 2.0 * std::f64::consts::PI;
        out[i] = x.sin();
        out[half + i] = x.cos();
    }
    out
}

impl Weights {
    /// `tiled_expert`: store the expert's four layer matrices in the weight-streaming kernel's
    /// tiled layout (`skinny::tile_weights`) instead of row-major for cuBLASLt; `f16_expert`:
    /// with it, the expert's norm-fed matrices in fp16 where they fit (`fp16_fits`).
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        tiled_expert: bool,
        f16_expert: bool,
    ) -> Result<Self> {
        let v = &cfg.vision;
        let (wv, fv) = (v.width, v.mlp_dim);
        let vd = v.num_heads * v.head_dim;
        let pd = v.patch_dim();
        let pd_pad = pd.div_ceil(8) * 8;
        let emb = format!("{}.embeddings", keys::VISION);
        let pw = src.f32(
            &format!("{emb}.patch_embedding.weight"),
            &[wv, 3, v.patch_size, v.patch_size],
        )?;
        let mut pw_pad = vec![0f32; wv * pd_pad];
        for r in 0..wv {
            pw_pad[r * pd_pad..r * pd_pad + pd].copy_from_slice(&pw[r * pd..(r + 1) * pd]);
        }
        let patch_w = up_bf16(&pw_pad)?;
        let patch_b = DBuf::from_slice(&src.f32(&format!("{emb}.patch_embedding.bias"), &[wv])?)?;
        let pos = up_bf16(&src.f32(
            &format!("{emb}.position_embedding.weight"),
            &[v.tokens_per_view(), wv],
        )?)?;

        // Vision layers: fold on the host in parallel, upload in order.
        let host: Vec<Result<[Vec<f32>; 12]>> = (0..v.depth)
            .into_par_iter()
            .map(|i| {
                let t = |leaf: &str, shape: &[usize]| src.f32(&keys::vision_layer(i, leaf), shape);
                let mut qkv_w = Vec::with_capacity(3 * vd * wv);
                let mut qkv_b = Vec::with_capacity(3 * vd);
                for p in ["q_proj", "k_proj", "v_proj"] {
                    qkv_w.extend(t(&format!("self_attn.{p}.weight"), &[vd, wv])?);
                    qkv_b.extend(t(&format!("self_attn.{p}.bias"), &[vd])?);
                }
                Ok([
                    t("layer_norm1.weight", &[wv])?,
                    t("layer_norm1.bias", &[wv])?,
                    t("layer_norm2.weight", &[wv])?,
                    t("layer_norm2.bias", &[wv])?,
                    qkv_w,
                    qkv_b,
                    t("self_attn.out_proj.weight", &[wv, vd])?,
                    t("self_attn.out_proj.bias", &[wv])?,
                    t("mlp.fc1.weight", &[fv, wv])?,
                    t("mlp.fc1.bias", &[fv])?,
                    t("mlp.fc2.weight", &[wv, fv])?,
                    t("mlp.fc2.bias", &[wv])?,
                ])
            })
            .collect();
        let mut vis = Vec::new();
        for h in host {
            let h = h?;
            vis.push(VisionLayer {
                ln1_g: DBuf::from_slice(&h[0])?,
                ln1_b: DBuf::from_slice(&h[1])?,
                ln2_g: DBuf::from_slice(&h[2])?,
                ln2_b: DBuf::from_slice(&h[3])?,
                qkv_w: up_bf16(&h[4])?,
                qkv_b: up_bf16(&h[5])?,
                o_w: up_bf16(&h[6])?,
                o_b: DBuf::from_slice(&h[7])?,
                fc1_w: up_bf16(&h[8])?,
                fc1_b: up_bf16(&h[9])?,
                fc2_w: up_bf16(&h[10])?,
                fc2_b: DBuf::from_slice(&h[11])?,
            });
        }
        let wl = cfg.llm.width;
        let proj_w = up_bf16(&src.f32(&format!("{}.weight", keys::PROJECTOR), &[wl, wv])?)?;
        let proj_b = DBuf::from_slice(&src.f32(&format!("{}.bias", keys::PROJECTOR), &[wl])?)?;
        let post_g =
            DBuf::from_slice(&src.f32(&format!("{}.post_layernorm.weight", keys::VISION), &[wv])?)?;
        let post_b =
            DBuf::from_slice(&src.f32(&format!("{}.post_layernorm.bias", keys::VISION), &[wv])?)?;
        let embed = DBuf::from_slice(&src.bf16(keys::EMBED_TOKENS, &[cfg.vocab_size, wl])?)?;

        let llm = load_gemma(src, keys::LLM, &cfg.llm, false, false)?;
        let exp = load_gemma(
            src,
            keys::EXPERT,
            &cfg.expert,
            tiled_expert,
            tiled_expert && f16_expert,
        )?;

        // Heads.
        let (e, a) = (cfg.expert.width, cfg.action_dim);
        let lin = |name: &str, o: usize, i: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                src.f32(&format!("{name}.weight"), &[o, i])?,
                src.f32(&format!("{name}.bias"), &[o])?,
            ))
        };
        let (sw, sb) = lin("state_proj", e, a)?;
        let (aw, ab) = lin("action_in_proj", e, a)?;
        let (mw, mb) = lin("action_time_mlp_in", e, 2 * e)?;
        let (ow, ob) = lin("action_time_mlp_out", e, e)?;
        let (pw, pb) = lin("action_out_proj", a, e)?;
        let final_norm = src.f32(&format!("{}.norm.weight", keys::EXPERT), &[e])?;

        // Wf[r][c] = sum_j mw[r][j] * aw[j][c]; base[r] = mb[r] + sum_j mw[r][j] * ab[j].
        let rows: Vec<(Vec<f32>, f64)> = (0..e)
            .into_par_iter()
            .map(|r| {
                let m = &mw[r * 2 * e..r * 2 * e + e];
                let mut acc = vec![0f64; a];
                let mut base = mb[r] as f64;
                for j in 0..e {
                    let mj = m[j] as f64;
                    base += mj * ab[j] as f64;
                    for c in 0..a {
                        acc[c] += mj * aw[j * a + c] as f64;
                    }
                }
                (acc.into_iter().map(|x| x as f32).collect(), base)
            })
            .collect();
        let wf: Vec<f32> = rows.iter().flat_map(|(r, _)| r.iter().copied()).collect();
        let steps = cfg.num_steps;
        let dt = -1.0f32 / steps as f32;
        let mut times = Vec::with_capacity(steps);
        let mut t = 1.0f32;
        for _ in 0..steps {
            times.push(t);
            t += dt;
        }
        let mut tb = vec![0f32; steps * e];
        for (k, &tk) in times.iter().enumerate() {
            let temb = time_embedding(
                tk as f64,
                e,
                cfg.time_min_period as f64,
                cfg.time_max_period as f64,
            );
            tb[k * e..(k + 1) * e]
                .par_iter_mut()
                .enumerate()
                .for_each(|(r, out)| {
                    let m = &mw[r * 2 * e + e..(r + 1) * 2 * e];
                    let s: f64 = m.iter().zip(&temb).map(|(&w, &x)| w as f64 * x).sum();
                    *out = (rows[r].1 + s) as f32;
                });
        }
        let mut out_w = pw;
        let one_plus: Vec<f32> = final_norm.iter().map(|w| 1.0 + w).collect();
        scale_cols(&mut out_w, &one_plus);

        Ok(Weights {
            patch_w,
            patch_b,
            pos,
            pd_pad,
            vis,
            proj_w,
            proj_b,
            post_g,
            post_b,
            embed,
            llm,
            exp,
            state_w: DBuf::from_slice(&sw)?,
            state_b: DBuf::from_slice(&sb)?,
            wf: DBuf::from_slice(&wf)?,
            tb: DBuf::from_slice(&tb)?,
            mlp_out_w: up_bf16(&ow)?,
            mlp_out_b: DBuf::from_slice(&ob)?,
            out_w: DBuf::from_slice(&out_w)?,
            out_b: DBuf::from_slice(&pb)?,
            times,
            dt,
        })
    }
}

/// One Gemma layer on the host: ([pre, post] norm scales, `GemmaLayer::norm_fed_f16`,
/// [qkv, o, gate|up, down] weights as bf16 or fp16 words).
type HostGemmaLayer = ([Vec<f32>; 2], bool, [Vec<u16>; 4]);

fn load_gemma(
    src: &dyn WeightSource,
    prefix: &str,
    g: &crate::model::config::GemmaConfig,
    tiled: bool,
    f16_norm_fed: bool,
) -> Result<Vec<GemmaLayer>> {
    let (w, f, qd, kd) = (g.width, g.mlp_dim, g.q_dim(), g.kv_dim());
    let mut out = Vec::new();
    // Fold a few layers at a time to bound host memory on full-size models.
    for chunk in (0..g.depth).collect::<Vec<_>>().chunks(6) {
        let host: Vec<Result<HostGemmaLayer>> = chunk
            .par_iter()
            .map(|&i| {
                let t = |leaf: &str, shape: &[usize]| {
                    src.f32(&format!("{prefix}.layers.{i}.{leaf}"), shape)
                };
                let pre: Vec<f32> = t("input_layernorm.weight", &[w])?
                    .iter()
                    .map(|x| 1.0 + x)
                    .collect();
                let post: Vec<f32> = t("post_attention_layernorm.weight", &[w])?
                    .iter()
                    .map(|x| 1.0 + x)
                    .collect();
                let mut qkv = t("self_attn.q_proj.weight", &[qd, w])?;
                qkv.extend(t("self_attn.k_proj.weight", &[kd, w])?);
                qkv.extend(t("self_attn.v_proj.weight", &[kd, w])?);
                let mut gu = t("mlp.gate_proj.weight", &[f, w])?;
                gu.extend(t("mlp.up_proj.weight", &[f, w])?);
                // Shapes [n][k] of q|k|v, o, gate|up, down.
                let shapes = [(qd + 2 * kd, w), (w, qd), (2 * f, w), (w, f)];
                let f16 = f16_norm_fed && fp16_fits(&[&pre, &post], w, &[&qkv, &gu]);
                // 16-bit words: bf16, or fp16 for the norm-fed q|k|v (0) and gate|up (2).
                let cv = |v: Vec<f32>, m: usize| -> Vec<u16> {
                    let b: Vec<u16> = if f16 && (m == 0 || m == 2) {
                        v.into_par_iter()
                            .map(|x| half::f16::from_f32(x).to_bits())
                            .collect()
                    } else {
                        v.into_par_iter()
                            .map(|x| bf16::from_f32(x).to_bits())
                            .collect()
                    };
                    if tiled {
                        super::skinny::tile_weights(&b, shapes[m].0, shapes[m].1)
                    } else {
                        b
                    }
                };
                Ok((
                    [pre, post],
                    f16,
                    [
                        cv(qkv, 0),
                        cv(t("self_attn.o_proj.weight", &[w, qd])?, 1),
                        cv(gu, 2),
                        cv(t("mlp.down_proj.weight", &[w, f])?, 3),
                    ],
                ))
            })
            .collect();
        for h in host {
            let (n, f16, h) = h?;
            out.push(GemmaLayer {
                norm_fed_f16: f16,
                pre: DBuf::from_slice(&n[0])?,
                post: DBuf::from_slice(&n[1])?,
                qkv_w: DBuf::from_slice(&h[0])?,
                o_w: DBuf::from_slice(&h[1])?,
                gu_w: DBuf::from_slice(&h[2])?,
                down_w: DBuf::from_slice(&h[3])?,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::fp16_fits;

    #[test]
    fn fp16_needs_weights_and_norm_outputs_in_range() {
        let w = vec![0.02f32, -3.0, 1e-7];
        // 1024 wide: norm outputs up to 32 x max|scale|.
        assert!(fp16_fits(&[&[1.0, 2.0]], 1024, &[&w]));
        assert!(fp16_fits(&[&[2000.0]], 1024, &[&w]));
        assert!(!fp16_fits(&[&[2047.0]], 1024, &[&w]), "32 x 2047 > 65504");
        assert!(!fp16_fits(&[&[-2047.0]], 1024, &[&w]), "signs count");
        assert!(!fp16_fits(&[&[1.0]], 1024, &[&w, &[70000.0]]));
        assert!(fp16_fits(&[&[1.0]], 1024, &[&[65504.0]]));
    }
}
