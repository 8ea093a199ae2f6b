//! Writing checkpoints: a seeded random π0 of any dimensions (demos and benchmarks without the
//! real weights), and re-encoding an existing checkpoint in another layout, dtype or sharding.
//! Tensors are streamed to disk one at a time, so a full-size model never sits in memory twice.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::checkpoint::{Checkpoint, Dtype};
use super::config::ModelConfig;
use super::keys::{self, expected_tensors, InitKind, TensorSpec};
use crate::error::{Error, Result};

/// Key layout of a written checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// openpi's JAX→PyTorch converter names (tied embedding stored as `lm_head`).
    Openpi,
    /// `lerobot/pi0`: `model.` prefix, pre-4.52 language-model nesting, `lm_head` embedding.
    LeRobot,
}

/// How to write: layout, dtype and the number of shards (1 = one `model.safetensors`).
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    pub layout: Layout,
    pub dtype: Dtype,
    pub shards: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            layout: Layout::Openpi,
            dtype: Dtype::BF16,
            shards: 1,
        }
    }
}

/// Stored name of a canonical tensor in `layout`.
pub fn stored_name(canonical: &str, layout: Layout) -> String {
    let canonical = if canonical == keys::EMBED_TOKENS {
        keys::LM_HEAD
    } else {
        canonical
    };
    match layout {
        Layout::Openpi => canonical.to_string(),
        Layout::LeRobot => {
            let old = canonical
                .replace(".paligemma.lm_head.", ".paligemma.language_model.lm_head.")
                .replace(
                    ".paligemma.model.language_model.",
                    ".paligemma.language_model.model.",
                )
                .replace(".paligemma.model.vision_tower.", ".paligemma.vision_tower.")
                .replace(
                    ".paligemma.model.multi_modal_projector.",
                    ".paligemma.multi_modal_projector.",
                );
            format!("model.{old}")
        }
    }
}

/// Writes a seeded random π0 checkpoint for `cfg` into `dir` (weights, config.json, dims.json).
/// Returns the parameter count. The same seed gives the same bytes.
pub fn write_random_checkpoint(
    cfg: &ModelConfig,
    dir: &Path,
    seed: u64,
    opts: WriteOptions,
) -> Result<u64> {
    cfg.validate()?;
    let specs = expected_tensors(cfg);
    let count = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum();
    write_tensors(dir, cfg, &specs, opts, |index, spec| {
        random_values(spec, seed, index as u64)
    })?;
    Ok(count)
}

/// Re-writes `src` (validated against `cfg`) into `dir` with other options.
pub fn rewrite_checkpoint(
    src: &Checkpoint,
    cfg: &ModelConfig,
    dir: &Path,
    opts: WriteOptions,
) -> Result<()> {
    let specs = expected_tensors(cfg);
    write_tensors(dir, cfg, &specs, opts, |_, spec| {
        src.tensor_f32(&spec.name, &spec.shape)
    })
}

fn write_tensors(
    dir: &Path,
    cfg: &ModelConfig,
    specs: &[TensorSpec],
    opts: WriteOptions,
    mut values: impl FnMut(usize, &TensorSpec) -> Result<Vec<f32>>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shards = opts.shards.max(1);
    let total_bytes: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>() * opts.dtype.size())
        .sum();
    let per_shard = total_bytes.div_ceil(shards);

    // Assign tensors to shards in order, starting a new shard when one is full.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut filled = 0usize;
    for (i, s) in specs.iter().enumerate() {
        let bytes = s.shape.iter().product::<usize>() * opts.dtype.size();
        if filled > 0 && filled + bytes > per_shard && groups.len() < shards {
            groups.push(Vec::new());
            filled = 0;
        }
        groups.last_mut().unwrap().push(i);
        filled += bytes;
    }
    let n = groups.len();
    let file_name = |k: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
        }
    };

    let mut weight_map = BTreeMap::new();
    for (k, group) in groups.iter().enumerate() {
        let path = dir.join(file_name(k));
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for &i in group {
            let s = &specs[i];
            let bytes = s.shape.iter().product::<usize>() * opts.dtype.size();
            let name = stored_name(&s.name, opts.layout);
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": match opts.dtype { Dtype::BF16 => "BF16", Dtype::F16 => "F16", Dtype::F32 => "F32" },
                    "shape": s.shape,
                    "data_offsets": [offset, offset + bytes],
                }),
            );
            offset += bytes;
            weight_map.insert(name, file_name(k));
        }
        header.insert(
            "__metadata__".into(),
            serde_json::json!({ "format": "pt", "writer": "pi0_mps" }),
        );
        let mut header_bytes = serde_json::to_vec(&header).expect("json");
        while header_bytes.len() % 8 != 0 {
            header_bytes.push(b' ');
        }
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 22, file);
        let io = |e| Error::io(&path, e);
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header_bytes).map_err(io)?;
        for &i in group {
            let data = values(i, &specs[i])?;
            w.write_all(&encode(&data, opts.dtype)).map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_bytes },
            "weight_map": weight_map,
        });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    write_json(&dir.join("dims.json"), &cfg.to_dims_json())?;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "action_dim": cfg.action_dim,
            "action_horizon": cfg.action_horizon,
            "max_token_len": cfg.max_token_len,
            "pi05": false,
            "precision": "bfloat16",
        }),
    )?;
    Ok(())
}

fn write_json(path: &PathBuf, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json");
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn encode(data: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::BF16 => data
            .par_iter()
            .flat_map_iter(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        Dtype::F16 => data
            .par_iter()
            .flat_map_iter(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// openpi's recipe for the golden data: matrices normal(0, scale/sqrt(fan_in)), biases
/// normal(0, 0.1), Gemma norm weights normal(0, 0.1), LayerNorm scales 1 + normal(0, 0.1),
/// embedding normal(0, 1/sqrt(width)), position embedding normal(0, 0.2). Chunks are seeded
/// from (seed, tensor, chunk) so the result does not depend on the thread count.
fn random_values(spec: &TensorSpec, seed: u64, tensor_index: u64) -> Result<Vec<f32>> {
    let len: usize = spec.shape.iter().product();
    let fan_in: usize = spec.shape[1..].iter().product::<usize>().max(1);
    let width = *spec.shape.last().unwrap_or(&1);
    let (std, mean) = match spec.kind {
        InitKind::Matrix { scale } => (scale / (fan_in as f32).sqrt(), 0.0),
        InitKind::Bias | InitKind::GemmaNorm => (0.1, 0.0),
        InitKind::LayerNormScale => (0.1, 1.0),
        InitKind::Embedding => (1.0 / (width as f32).sqrt(), 0.0),
        InitKind::PositionEmbedding => (0.2, 0.0),
    };
    const CHUNK: usize = 1 << 20;
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let s = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(tensor_index.wrapping_mul(0xD1B5_4A32_D192_ED03))
                .wrapping_add(c as u64);
            let mut rng = rand::rngs::SmallRng::seed_from_u64(s);
            for x in chunk {
                let z: f32 = rng.sample(StandardNormal);
                // Round to bf16 so that bf16 and f32 copies of one seed hold the same numbers.
                *x = bf16::from_f32(mean + std * z).to_f32();
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint;

    #[test]
    fn lerobot_stored_names_round_trip() {
        for spec in expected_tensors(&ModelConfig::tiny()) {
            let stored = stored_name(&spec.name, Layout::LeRobot);
            let back = checkpoint::canonical_name(&stored);
            let want = if spec.name == keys::EMBED_TOKENS {
                keys::LM_HEAD.to_string()
            } else {
                spec.name.clone()
            };
            assert_eq!(back, want, "{stored}");
        }
    }

    #[test]
    fn random_tiny_checkpoint_loads_and_is_deterministic() {
        let cfg = ModelConfig::tiny();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let n = write_random_checkpoint(&cfg, a.path(), 7, WriteOptions::default()).unwrap();
        write_random_checkpoint(&cfg, b.path(), 7, WriteOptions::default()).unwrap();
        let fa = std::fs::read(a.path().join("model.safetensors")).unwrap();
        let fb = std::fs::read(b.path().join("model.safetensors")).unwrap();
        assert!(fa == fb, "same seed must give the same bytes");
        let loaded = checkpoint::load(a.path()).unwrap();
        assert_eq!(loaded.config, cfg);
        assert_eq!(loaded.checkpoint.parameter_count(&cfg), n);
        // Values are random, not constant: check the spread of one matrix.
        let q = loaded
            .checkpoint
            .tensor_f32(&keys::llm_layer(0, "self_attn.q_proj.weight"), &[128, 64])
            .unwrap();
        let mean = q.iter().sum::<f32>() / q.len() as f32;
        let var = q.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / q.len() as f32;
        let want = 2.0 / 64f32.sqrt();
        assert!(
            (var.sqrt() - want).abs() < 0.1 * want,
            "std {} want {want}",
            var.sqrt()
        );
    }
}
