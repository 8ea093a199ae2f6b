//! The checkpoint's tensor tree, in the openpi PyTorch layout (our canonical names), with the
//! shape each tensor must have for a given config. One source of truth for validation, the
//! random-checkpoint generator, parameter counting and the engines' weight loaders.
//! PyTorch `Linear` weights are stored `(out, in)`.

use super::config::ModelConfig;

pub const PALIGEMMA: &str = "paligemma_with_expert.paligemma.model";
pub const VISION: &str = "paligemma_with_expert.paligemma.model.vision_tower.vision_model";
pub const LLM: &str = "paligemma_with_expert.paligemma.model.language_model";
pub const EXPERT: &str = "paligemma_with_expert.gemma_expert.model";
pub const EMBED_TOKENS: &str =
    "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight";
/// The tied embedding as openpi's converter stores it.
pub const LM_HEAD: &str = "paligemma_with_expert.paligemma.lm_head.weight";
pub const PROJECTOR: &str = "paligemma_with_expert.paligemma.model.multi_modal_projector.linear";

pub fn vision_layer(i: usize, leaf: &str) -> String {
    format!("{VISION}.encoder.layers.{i}.{leaf}")
}
pub fn llm_layer(i: usize, leaf: &str) -> String {
    format!("{LLM}.layers.{i}.{leaf}")
}
pub fn expert_layer(i: usize, leaf: &str) -> String {
    format!("{EXPERT}.layers.{i}.{leaf}")
}

/// One expected tensor. The token embedding's row count is the config's `vocab_size`.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: InitKind,
}

/// How the random generator fills a tensor (openpi's recipe for the golden data).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitKind {
    /// normal(0, scale / sqrt(fan_in)), fan_in = product of all dims but the first.
    Matrix {
        scale: f32,
    },
    Bias,
    /// Gemma RMSNorm weight, applied as (1 + w): normal(0, 0.1).
    GemmaNorm,
    /// LayerNorm scale: 1 + normal(0, 0.1).
    LayerNormScale,
    Embedding,
    PositionEmbedding,
}

/// Every tensor π0 needs, in a stable order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, kind: InitKind| {
        out.push(TensorSpec { name, shape, kind })
    };
    let m = |scale| InitKind::Matrix { scale };
    let v = &cfg.vision;
    let emb = format!("{VISION}.embeddings");
    push(
        format!("{emb}.patch_embedding.weight"),
        vec![v.width, 3, v.patch_size, v.patch_size],
        m(1.0),
    );
    push(
        format!("{emb}.patch_embedding.bias"),
        vec![v.width],
        InitKind::Bias,
    );
    push(
        format!("{emb}.position_embedding.weight"),
        vec![v.tokens_per_view(), v.width],
        InitKind::PositionEmbedding,
    );
    let vd = v.num_heads * v.head_dim;
    for i in 0..v.depth {
        for ln in ["layer_norm1", "layer_norm2"] {
            push(
                vision_layer(i, &format!("{ln}.weight")),
                vec![v.width],
                InitKind::LayerNormScale,
            );
            push(
                vision_layer(i, &format!("{ln}.bias")),
                vec![v.width],
                InitKind::Bias,
            );
        }
        for p in ["q_proj", "k_proj", "v_proj"] {
            push(
                vision_layer(i, &format!("self_attn.{p}.weight")),
                vec![vd, v.width],
                m(1.0),
            );
            push(
                vision_layer(i, &format!("self_attn.{p}.bias")),
                vec![vd],
                InitKind::Bias,
            );
        }
        push(
            vision_layer(i, "self_attn.out_proj.weight"),
            vec![v.width, vd],
            m(1.0),
        );
        push(
            vision_layer(i, "self_attn.out_proj.bias"),
            vec![v.width],
            InitKind::Bias,
        );
        push(
            vision_layer(i, "mlp.fc1.weight"),
            vec![v.mlp_dim, v.width],
            m(1.0),
        );
        push(
            vision_layer(i, "mlp.fc1.bias"),
            vec![v.mlp_dim],
            InitKind::Bias,
        );
        push(
            vision_layer(i, "mlp.fc2.weight"),
            vec![v.width, v.mlp_dim],
            m(1.0),
        );
        push(
            vision_layer(i, "mlp.fc2.bias"),
            vec![v.width],
            InitKind::Bias,
        );
    }
    push(
        format!("{VISION}.post_layernorm.weight"),
        vec![v.width],
        InitKind::LayerNormScale,
    );
    push(
        format!("{VISION}.post_layernorm.bias"),
        vec![v.width],
        InitKind::Bias,
    );
    push(
        format!("{PROJECTOR}.weight"),
        vec![cfg.llm.width, v.width],
        m(1.0),
    );
    push(
        format!("{PROJECTOR}.bias"),
        vec![cfg.llm.width],
        InitKind::Bias,
    );
    push(
        EMBED_TOKENS.to_string(),
        vec![cfg.vocab_size, cfg.llm.width],
        InitKind::Embedding,
    );

    for (prefix, g) in [(LLM, &cfg.llm), (EXPERT, &cfg.expert)] {
        let layer = |i: usize, leaf: &str| format!("{prefix}.layers.{i}.{leaf}");
        for i in 0..g.depth {
            push(
                layer(i, "input_layernorm.weight"),
                vec![g.width],
                InitKind::GemmaNorm,
            );
            push(
                layer(i, "post_attention_layernorm.weight"),
                vec![g.width],
                InitKind::GemmaNorm,
            );
            push(
                layer(i, "self_attn.q_proj.weight"),
                vec![g.q_dim(), g.width],
                m(2.0),
            );
            push(
                layer(i, "self_attn.k_proj.weight"),
                vec![g.kv_dim(), g.width],
                m(2.0),
            );
            push(
                layer(i, "self_attn.v_proj.weight"),
                vec![g.kv_dim(), g.width],
                m(1.0),
            );
            push(
                layer(i, "self_attn.o_proj.weight"),
                vec![g.width, g.q_dim()],
                m(1.0),
            );
            push(
                layer(i, "mlp.gate_proj.weight"),
                vec![g.mlp_dim, g.width],
                m(1.0),
            );
            push(
                layer(i, "mlp.up_proj.weight"),
                vec![g.mlp_dim, g.width],
                m(1.0),
            );
            push(
                layer(i, "mlp.down_proj.weight"),
                vec![g.width, g.mlp_dim],
                m(1.0),
            );
        }
        push(
            format!("{prefix}.norm.weight"),
            vec![g.width],
            InitKind::GemmaNorm,
        );
    }

    let (e, a) = (cfg.expert.width, cfg.action_dim);
    let mut linear = |name: &str, out_dim: usize, in_dim: usize| {
        push(format!("{name}.weight"), vec![out_dim, in_dim], m(1.0));
        push(format!("{name}.bias"), vec![out_dim], InitKind::Bias);
    };
    linear("state_proj", e, a);
    linear("action_in_proj", e, a);
    linear("action_time_mlp_in", e, 2 * e);
    linear("action_time_mlp_out", e, e);
    linear("action_out_proj", a, e);
    out
}

/// Parameter count of a config (token embedding included).
pub fn parameter_count(cfg: &ModelConfig) -> u64 {
    expected_tensors(cfg)
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pi0_has_3_24_billion_parameters() {
        let n = parameter_count(&ModelConfig::pi0());
        assert!((3.235e9..3.245e9).contains(&(n as f64)), "{n}");
        let emb = 257_152u64 * 2048;
        let without = n - emb;
        assert!((2.705e9..2.715e9).contains(&(without as f64)), "{without}");
    }

    #[test]
    fn golden_tiny_parameter_counts_match_dims_json() {
        // pi0-tiny dims.json: params_total 22335008 with the full 257152-row vocabulary.
        let mut cfg = ModelConfig::tiny();
        cfg.vocab_size = 257_152;
        assert_eq!(parameter_count(&cfg), 22_335_008);
    }
}
