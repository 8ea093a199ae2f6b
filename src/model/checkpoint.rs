//! Memory-mapped safetensors checkpoints in the openpi PyTorch layout or the LeRobot
//! `lerobot/pi0` layout (optional `model.` prefix, old or new language-model nesting, the
//! token embedding as `embed_tokens` or the tied `lm_head`), one file or sharded with an
//! index, BF16 / F16 / F32. Names are normalised to the openpi layout (see `keys`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::config::ModelConfig;
use super::keys::{self, expected_tensors};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F16,
    F32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    /// None when the stored dtype is one we cannot read (reported only if the tensor is used).
    dtype: Result<Dtype, String>,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A borrowed view of one stored tensor.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
    pub fn to_bf16(&self) -> Vec<bf16> {
        match self.dtype {
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => self.to_f32().into_iter().map(bf16::from_f32).collect(),
        }
    }
}

/// An opened checkpoint: the mapped files and an index of canonical tensor names.
pub struct Checkpoint {
    path: PathBuf,
    files: Vec<Mmap>,
    entries: HashMap<String, Entry>,
    aliases: HashMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("files", &self.files.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// A checkpoint with the config it was validated against.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
}

/// Opens a checkpoint (a directory, a `.safetensors` file, or a `.safetensors.index.json`),
/// reads its config (see `ModelConfig::from_checkpoint_dir`), takes the vocabulary size from
/// the embedding tensor and checks every tensor's presence, dtype and shape.
pub fn load(path: &Path) -> Result<LoadedCheckpoint> {
    let checkpoint = Checkpoint::open(path)?;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut config = ModelConfig::from_checkpoint_dir(&dir)?;
    config.vocab_size = checkpoint.embedding_rows(config.llm.width)?;
    checkpoint.validate(&config)?;
    Ok(LoadedCheckpoint { config, checkpoint })
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::checkpoint(path, "no such file or directory"));
        }
        let files = if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                shard_files(&index)?
            } else {
                let candidates = ["model.safetensors", "weights.safetensors"];
                let found = candidates
                    .iter()
                    .map(|c| path.join(c))
                    .find(|p| p.is_file());
                vec![found.ok_or_else(|| {
                    Error::checkpoint(
                        path,
                        "directory holds none of model.safetensors, weights.safetensors, \
                         model.safetensors.index.json",
                    )
                })?]
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            shard_files(path)?
        } else {
            vec![path.to_path_buf()]
        };

        let mut ckpt = Checkpoint {
            path: path.to_path_buf(),
            files: Vec::new(),
            entries: HashMap::new(),
            aliases: HashMap::new(),
        };
        for file in files {
            ckpt.add_file(&file)?;
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while we run is a user error
        // that can at worst produce wrong numbers, never memory unsafety in safe code paths that
        // copy out of the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::checkpoint(path, reason);
        if map.len() < 8 {
            return Err(bad(format!(
                "file is {} bytes: truncated or not safetensors",
                map.len()
            )));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
        if header_len > map.len() - 8 {
            return Err(bad(format!(
                "header claims {header_len} bytes but the file has {}: truncated or not safetensors",
                map.len()
            )));
        }
        let header: serde_json::Value = serde_json::from_slice(&map[8..8 + header_len])
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let header = header
            .as_object()
            .ok_or_else(|| bad("header is not a JSON object".into()))?;
        let data_start = 8 + header_len;
        let data_len = map.len() - data_start;
        let file_index = self.files.len();
        for (raw_name, info) in header {
            if raw_name == "__metadata__" {
                if let Some(meta) = info.as_object() {
                    for (k, v) in meta {
                        if let Some(target) = v.as_str() {
                            self.aliases
                                .insert(canonical_name(k), canonical_name(target));
                        }
                    }
                }
                continue;
            }
            let dtype_str = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
            let dtype = match dtype_str {
                "BF16" => Ok(Dtype::BF16),
                "F16" => Ok(Dtype::F16),
                "F32" => Ok(Dtype::F32),
                other => Err(other.to_string()),
            };
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad(format!("tensor `{raw_name}` has no shape")))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("tensor `{raw_name}` has a malformed shape")))?;
            let offsets = info
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
                .ok_or_else(|| bad(format!("tensor `{raw_name}` has malformed data_offsets")))?;
            let (start, end) = offsets;
            if start > end || end > data_len {
                return Err(bad(format!(
                    "tensor `{raw_name}` lies at bytes {start}..{end} but the data section has \
                     {data_len} bytes: the file is truncated or corrupt"
                )));
            }
            if let Ok(dt) = dtype {
                let want = shape.iter().product::<usize>() * dt.size();
                if want != end - start {
                    return Err(bad(format!(
                        "tensor `{raw_name}` of shape {shape:?} {dtype_str} needs {want} bytes, \
                         the header gives {}",
                        end - start
                    )));
                }
            }
            self.entries.insert(
                canonical_name(raw_name),
                Entry {
                    file: file_index,
                    dtype,
                    shape,
                    start: data_start + start,
                    end: data_start + end,
                },
            );
        }
        self.files.push(map);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Canonical names of all stored tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn resolve(&self, name: &str) -> Option<(&str, &Entry)> {
        if let Some((k, e)) = self.entries.get_key_value(name) {
            return Some((k.as_str(), e));
        }
        if let Some(target) = self.aliases.get(name) {
            if let Some((k, e)) = self.entries.get_key_value(target) {
                return Some((k.as_str(), e));
            }
        }
        if name == keys::EMBED_TOKENS {
            return self.resolve(keys::LM_HEAD);
        }
        None
    }

    /// The stored tensor `name` (canonical), checked against `expected` shape.
    pub fn view(&self, name: &str, expected: &[usize]) -> Result<TensorView<'_>> {
        let (stored, entry) = self.resolve(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            expected: expected.to_vec(),
        })?;
        if entry.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let dtype = entry.dtype.clone().map_err(|dtype| Error::TensorDtype {
            name: name.to_string(),
            dtype,
        })?;
        Ok(TensorView {
            name: stored,
            dtype,
            shape: &entry.shape,
            bytes: &self.files[entry.file][entry.start..entry.end],
        })
    }

    pub fn tensor_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.view(name, expected)?.to_f32())
    }

    pub fn tensor_bf16(&self, name: &str, expected: &[usize]) -> Result<Vec<bf16>> {
        Ok(self.view(name, expected)?.to_bf16())
    }

    /// Shape of a stored tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.resolve(name).map(|(_, e)| e.shape.as_slice())
    }

    /// Rows of the token embedding (the vocabulary actually stored); `width` is the LLM width.
    pub fn embedding_rows(&self, width: usize) -> Result<usize> {
        match self.shape(keys::EMBED_TOKENS) {
            Some([rows, w]) if *w == width => Ok(*rows),
            Some(other) => Err(Error::TensorShape {
                name: keys::EMBED_TOKENS.into(),
                expected: vec![other.first().copied().unwrap_or(0), width],
                found: other.to_vec(),
            }),
            None => Err(Error::checkpoint(
                &self.path,
                format!(
                    "missing tensor `{}` (or the tied `{}`), expected shape [vocab_size, {width}]",
                    keys::EMBED_TOKENS,
                    keys::LM_HEAD
                ),
            )),
        }
    }

    /// Checks that every tensor `cfg` needs is present with a readable dtype and its shape.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        for spec in expected_tensors(cfg) {
            self.view(&spec.name, &spec.shape)?;
        }
        Ok(())
    }

    /// Parameters that `cfg` uses from this checkpoint (unused extras such as the expert's
    /// `lm_head` are not counted).
    pub fn parameter_count(&self, cfg: &ModelConfig) -> u64 {
        expected_tensors(cfg)
            .iter()
            .filter_map(|s| self.shape(&s.name))
            .map(|s| s.iter().product::<usize>() as u64)
            .sum()
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(index, format!("index is not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::checkpoint(index, "index has no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::checkpoint(index, "index lists no shard files"));
    }
    Ok(files)
}

/// Maps a stored tensor name onto the openpi PyTorch layout.
pub fn canonical_name(raw: &str) -> String {
    let roots = [
        "paligemma_with_expert.",
        "state_proj.",
        "action_in_proj.",
        "action_out_proj.",
        "action_time_mlp_in.",
        "action_time_mlp_out.",
    ];
    let name = match raw.strip_prefix("model.") {
        Some(rest) if roots.iter().any(|r| rest.starts_with(r)) => rest,
        _ => raw,
    };
    // Pre-transformers-4.52 nesting used by the older LeRobot export.
    name.replace(".paligemma.language_model.lm_head.", ".paligemma.lm_head.")
        .replace(
            ".paligemma.language_model.model.",
            ".paligemma.model.language_model.",
        )
        .replace(".paligemma.vision_tower.", ".paligemma.model.vision_tower.")
        .replace(
            ".paligemma.multi_modal_projector.",
            ".paligemma.model.multi_modal_projector.",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lerobot_names_map_to_openpi_layout() {
        assert_eq!(
            canonical_name(
                "model.paligemma_with_expert.paligemma.language_model.model.layers.3.mlp.up_proj.weight"
            ),
            keys::llm_layer(3, "mlp.up_proj.weight")
        );
        assert_eq!(
            canonical_name("model.paligemma_with_expert.paligemma.language_model.lm_head.weight"),
            keys::LM_HEAD
        );
        assert_eq!(
            canonical_name(
                "model.paligemma_with_expert.paligemma.vision_tower.vision_model.post_layernorm.bias"
            ),
            format!("{}.post_layernorm.bias", keys::VISION)
        );
        assert_eq!(
            canonical_name(
                "model.paligemma_with_expert.paligemma.multi_modal_projector.linear.bias"
            ),
            format!("{}.bias", keys::PROJECTOR)
        );
        assert_eq!(
            canonical_name("model.state_proj.weight"),
            "state_proj.weight"
        );
        assert_eq!(canonical_name("state_proj.weight"), "state_proj.weight");
    }
}
