//! Model dimensions. Full π0 by default; a checkpoint's `config.json` (openpi converter keys,
//! LeRobot keys, or a `dims.json` with every number) may name other variants or sizes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// SigLIP vision tower.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub width: usize,
    pub depth: usize,
    pub mlp_dim: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub patch_size: usize,
    pub image_size: usize,
    pub layernorm_eps: f32,
}

impl VisionConfig {
    /// So400m/14, the tower of real π0.
    pub fn so400m() -> Self {
        VisionConfig {
            width: 1152,
            depth: 27,
            mlp_dim: 4304,
            num_heads: 16,
            head_dim: 72,
            patch_size: 14,
            image_size: 224,
            layernorm_eps: 1e-6,
        }
    }
    /// Ti/14, used by the golden test models.
    pub fn ti() -> Self {
        VisionConfig {
            width: 192,
            depth: 12,
            mlp_dim: 768,
            num_heads: 3,
            head_dim: 64,
            ..Self::so400m()
        }
    }
    pub fn from_variant(name: &str) -> Result<Self> {
        match name {
            "So400m/14" | "so400m" => Ok(Self::so400m()),
            "Ti/14" | "ti" => Ok(Self::ti()),
            other => Err(Error::Config(format!(
                "unknown vision variant `{other}` (known: So400m/14, Ti/14)"
            ))),
        }
    }
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn tokens_per_view(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }
    /// Values in one patch: patch² × 3 colour channels.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * 3
    }
}

/// A Gemma transformer: the language model or the action expert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmaConfig {
    pub width: usize,
    pub depth: usize,
    pub mlp_dim: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_max_wavelength: f32,
}

impl GemmaConfig {
    pub fn from_variant(name: &str) -> Result<Self> {
        let (width, depth, mlp_dim) = match name {
            "gemma_2b" => (2048, 18, 16384),
            "gemma_300m" => (1024, 18, 4096),
            "dummy" => (64, 4, 128),
            "dummy_asym" => (32, 4, 96),
            other => {
                return Err(Error::Config(format!(
                "unknown gemma variant `{other}` (known: gemma_2b, gemma_300m, dummy, dummy_asym)"
            )))
            }
        };
        let head_dim = if width >= 1024 { 256 } else { 16 };
        Ok(GemmaConfig {
            width,
            depth,
            mlp_dim,
            num_heads: 8,
            num_kv_heads: 1,
            head_dim,
            rms_norm_eps: 1e-6,
            rope_max_wavelength: 10_000.0,
        })
    }
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Dimensions of a whole π0 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vision: VisionConfig,
    pub llm: GemmaConfig,
    pub expert: GemmaConfig,
    /// Rows of the token embedding (taken from the checkpoint's tensor when one is loaded).
    pub vocab_size: usize,
    /// Width of state and action vectors inside the model (robot data is zero-padded to it).
    pub action_dim: usize,
    /// Default action chunk (horizon); engines accept other chunk sizes at run time.
    pub action_horizon: usize,
    /// Longest prompt in tokens (openpi pads/truncates to this).
    pub max_token_len: usize,
    /// Flow-matching Euler steps.
    pub num_steps: usize,
    /// Camera view slots (base, left wrist, right wrist).
    pub num_views: usize,
    pub time_min_period: f32,
    pub time_max_period: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::pi0()
    }
}

impl ModelConfig {
    /// Full-size π0 (SigLIP So400m/14, Gemma-2B, Gemma-300M expert).
    pub fn pi0() -> Self {
        ModelConfig {
            vision: VisionConfig::so400m(),
            llm: GemmaConfig::from_variant("gemma_2b").unwrap(),
            expert: GemmaConfig::from_variant("gemma_300m").unwrap(),
            vocab_size: 257_152,
            action_dim: 32,
            action_horizon: 50,
            max_token_len: 48,
            num_steps: 10,
            num_views: 3,
            time_min_period: 4e-3,
            time_max_period: 4.0,
        }
    }

    /// The golden `pi0-tiny` dimensions (Ti/14 vision, `dummy` Gemmas), vocabulary cut to 16384.
    pub fn tiny() -> Self {
        ModelConfig {
            vision: VisionConfig::ti(),
            llm: GemmaConfig::from_variant("dummy").unwrap(),
            expert: GemmaConfig::from_variant("dummy").unwrap(),
            vocab_size: 16_384,
            ..Self::pi0()
        }
    }

    /// Scale applied to prompt token embeddings: sqrt(LLM width).
    pub fn embed_scale(&self) -> f32 {
        (self.llm.width as f32).sqrt()
    }

    /// Width of the sin/cos time embedding (= expert width in π0).
    pub fn time_embed_dim(&self) -> usize {
        self.expert.width
    }

    /// Reads the dimensions of the checkpoint in `dir`: `dims.json` when present (every number
    /// explicit), else `config.json` (openpi converter or LeRobot keys), else full π0.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<Self> {
        let dims = dir.join("dims.json");
        if dims.is_file() {
            return Self::from_dims_json(&read_json(&dims)?);
        }
        let config = dir.join("config.json");
        if config.is_file() {
            return Self::from_config_json(&read_json(&config)?);
        }
        Ok(Self::pi0())
    }

    /// `dims.json` as written by the golden-data tool and by our generator.
    pub fn from_dims_json(v: &serde_json::Value) -> Result<Self> {
        let get = |path: &[&str]| -> Result<&serde_json::Value> {
            let mut cur = v;
            for p in path {
                cur = cur.get(p).ok_or_else(|| {
                    Error::Config(format!("dims.json lacks `{}`", path.join(".")))
                })?;
            }
            Ok(cur)
        };
        let num = |path: &[&str]| -> Result<usize> {
            get(path)?.as_u64().map(|n| n as usize).ok_or_else(|| {
                Error::Config(format!("dims.json `{}` is not a number", path.join(".")))
            })
        };
        let float = |path: &[&str], default: f32| -> f32 {
            get(path)
                .ok()
                .and_then(|x| x.as_f64())
                .map(|x| x as f32)
                .unwrap_or(default)
        };
        let gemma = |part: &str| -> Result<GemmaConfig> {
            Ok(GemmaConfig {
                width: num(&[part, "width"])?,
                depth: num(&[part, "depth"])?,
                mlp_dim: num(&[part, "mlp_dim"])?,
                num_heads: num(&[part, "num_heads"])?,
                num_kv_heads: num(&[part, "num_kv_heads"])?,
                head_dim: num(&[part, "head_dim"])?,
                rms_norm_eps: float(&[part, "rms_norm_eps"], 1e-6),
                rope_max_wavelength: float(&[part, "rope_max_wavelength"], 10_000.0),
            })
        };
        let cfg = ModelConfig {
            vision: VisionConfig {
                width: num(&["vision", "width"])?,
                depth: num(&["vision", "depth"])?,
                mlp_dim: num(&["vision", "mlp_dim"])?,
                num_heads: num(&["vision", "num_heads"])?,
                head_dim: num(&["vision", "head_dim"])?,
                patch_size: num(&["vision", "patch_size"])?,
                image_size: num(&["vision", "image_size"])?,
                layernorm_eps: float(&["vision", "layernorm_eps"], 1e-6),
            },
            llm: gemma("llm")?,
            expert: gemma("expert")?,
            vocab_size: num(&["llm", "vocab_size"])?,
            action_dim: num(&["action_dim"])?,
            action_horizon: num(&["action_horizon"])?,
            max_token_len: num(&["max_token_len"]).unwrap_or(48),
            num_steps: num(&["num_steps"]).unwrap_or(10),
            num_views: num(&["num_views"]).unwrap_or(3),
            time_min_period: float(&["time_embedding", "min_period"], 4e-3),
            time_max_period: float(&["time_embedding", "max_period"], 4.0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `config.json` from openpi's converter (`paligemma_variant`, `action_expert_variant`,
    /// `action_horizon`, ...) or from LeRobot (`chunk_size`, `max_action_dim`, ...).
    pub fn from_config_json(v: &serde_json::Value) -> Result<Self> {
        let mut cfg = Self::pi0();
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        if v.get("pi05").and_then(|x| x.as_bool()) == Some(true) || s("type") == Some("pi05") {
            return Err(Error::Config(
                "this checkpoint is π0.5; pi0_mps runs π0 only".into(),
            ));
        }
        if let Some(name) = s("paligemma_variant") {
            cfg.llm = GemmaConfig::from_variant(name)?;
        }
        if let Some(name) = s("action_expert_variant") {
            cfg.expert = GemmaConfig::from_variant(name)?;
        }
        if let Some(name) = s("vision_variant") {
            cfg.vision = VisionConfig::from_variant(name)?;
        }
        if let Some(x) = n("action_dim").or(n("max_action_dim")) {
            cfg.action_dim = x;
        }
        if let Some(x) = n("action_horizon").or(n("chunk_size")) {
            cfg.action_horizon = x;
        }
        if let Some(x) = n("max_token_len").or(n("tokenizer_max_length")) {
            cfg.max_token_len = x;
        }
        if let Some(x) = n("num_steps").or(n("num_inference_steps")) {
            cfg.num_steps = x;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations the engines rely on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.llm.depth != self.expert.depth {
            return bad(format!(
                "LLM depth {} != expert depth {}: attention is shared layer by layer",
                self.llm.depth, self.expert.depth
            ));
        }
        if self.llm.head_dim != self.expert.head_dim
            || self.llm.num_heads != self.expert.num_heads
            || self.llm.num_kv_heads != self.expert.num_kv_heads
        {
            return bad("LLM and expert must have the same heads and head_dim".into());
        }
        if self.llm.num_heads % self.llm.num_kv_heads != 0 {
            return bad("num_heads must be a multiple of num_kv_heads".into());
        }
        if self.llm.head_dim % 2 != 0 {
            return bad("head_dim must be even (RoPE)".into());
        }
        if self.vision.image_size % self.vision.patch_size != 0 {
            return bad("image_size must be a multiple of patch_size".into());
        }
        if self.expert.width % 2 != 0 {
            return bad("expert width must be even (sin/cos time embedding)".into());
        }
        if self.action_dim == 0 || self.action_horizon == 0 || self.num_steps == 0 {
            return bad("action_dim, action_horizon and num_steps must be > 0".into());
        }
        if !(1..=3).contains(&self.num_views) {
            return bad(format!("num_views {} not in 1..=3", self.num_views));
        }
        Ok(())
    }

    /// The dims.json form of this config (what `from_dims_json` reads).
    pub fn to_dims_json(&self) -> serde_json::Value {
        let g = |c: &GemmaConfig| {
            serde_json::json!({
                "width": c.width, "depth": c.depth, "mlp_dim": c.mlp_dim,
                "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads, "head_dim": c.head_dim,
                "rms_norm_eps": c.rms_norm_eps, "rope_max_wavelength": c.rope_max_wavelength,
            })
        };
        let mut llm = g(&self.llm);
        llm["vocab_size"] = self.vocab_size.into();
        serde_json::json!({
            "vision": {
                "width": self.vision.width, "depth": self.vision.depth, "mlp_dim": self.vision.mlp_dim,
                "num_heads": self.vision.num_heads, "head_dim": self.vision.head_dim,
                "patch_size": self.vision.patch_size, "image_size": self.vision.image_size,
                "layernorm_eps": self.vision.layernorm_eps,
            },
            "llm": llm,
            "expert": g(&self.expert),
            "action_dim": self.action_dim,
            "state_dim": self.action_dim,
            "action_horizon": self.action_horizon,
            "max_token_len": self.max_token_len,
            "num_views": self.num_views,
            "num_steps": self.num_steps,
            "time_embedding": {
                "dim": self.time_embed_dim(),
                "min_period": self.time_min_period,
                "max_period": self.time_max_period,
            },
        })
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_json_round_trip() {
        let cfg = ModelConfig::tiny();
        let back = ModelConfig::from_dims_json(&cfg.to_dims_json()).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn openpi_config_json_variants() {
        let v = serde_json::json!({"paligemma_variant": "dummy", "action_expert_variant": "dummy_asym",
            "vision_variant": "Ti/14", "action_horizon": 10, "action_dim": 32});
        let cfg = ModelConfig::from_config_json(&v).unwrap();
        assert_eq!(cfg.expert.width, 32);
        assert_eq!(cfg.expert.mlp_dim, 96);
        assert_eq!(cfg.llm.width, 64);
        assert_eq!(cfg.vision.width, 192);
        assert_eq!(cfg.action_horizon, 10);
    }

    #[test]
    fn lerobot_config_json_keys() {
        let v = serde_json::json!({"type": "pi0", "chunk_size": 20, "max_action_dim": 32,
            "tokenizer_max_length": 48, "num_steps": 10});
        let cfg = ModelConfig::from_config_json(&v).unwrap();
        assert_eq!(cfg.action_horizon, 20);
        assert_eq!(cfg.llm.width, 2048);
    }

    #[test]
    fn unknown_variant_and_pi05_are_refused() {
        let e =
            ModelConfig::from_config_json(&serde_json::json!({"paligemma_variant": "gemma_7b"}))
                .unwrap_err();
        assert!(
            e.to_string().contains("unknown gemma variant `gemma_7b`"),
            "{e}"
        );
        let e = ModelConfig::from_config_json(&serde_json::json!({"pi05": true})).unwrap_err();
        assert!(e.to_string().contains("π0.5"), "{e}");
    }

    #[test]
    fn full_pi0_dims() {
        let c = ModelConfig::pi0();
        assert_eq!(c.vision.tokens_per_view(), 256);
        assert_eq!(c.llm.q_dim(), 2048);
        assert_eq!(c.expert.kv_dim(), 256);
        assert!((c.embed_scale() - 2048f32.sqrt()).abs() < 1e-6);
    }
}
