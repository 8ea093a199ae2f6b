//! The action expert's Gemma block on the weight-streaming GEMM (kernels/skinny.cu).
//!
//! Same math as `Pi0Cuda::gemma_layer`, arranged around split-K partials: every weight GEMM
//! writes fp32 partial sums to the slot's `part` buffer and the next kernel sums them in split
//! order while doing its own job (RoPE + K/V write, residual + RMSNorm, GELU-gate). The down
//! projection's partials stay pending and are added by the next layer's first norm (or by
//! `finish_residual` after the last layer), so the residual stream is touched once per add.

use super::*;
use crate::gpu::skinny;

/// Weight-streaming settings fixed at engine construction.
#[derive(Clone, Copy, Debug)]
pub(super) struct WeightStreaming {
    /// SMs the weight GEMMs' split-K plans spread over: the whole GPU's (`PI0_WGEMM_SMS`
    /// overrides), or on a partition its own (`PI0_WGEMM_SMS_PART` overrides; never above the
    /// whole GPU's, for which the partial-sum buffers were sized).
    pub plan_sms: usize,
    pub partition_plan_sms: Option<usize>,
    /// How the split counts are chosen (`PI0_WGEMM_SPLITS=balanced`: the study rule).
    pub rule: skinny::SplitRule,
    /// The rule on a partition (`PI0_WGEMM_SPLITS_PART`; None: `partition_split_rule`).
    pub partition_rule: Option<skinny::SplitRule>,
    /// Programmatic dependent launches for these kernels.
    pub pdl: bool,
    /// SMs of the partition the decoder runs in (None: the whole GPU); set per enqueue.
    pub partition_sms: Option<usize>,
    /// Whether GEMMs on a small partition may take the 3-stage ring (three CTAs per SM).
    pub shallow_ring: bool,
    /// The device's shared memory per SM (0: unknown, no refitting).
    pub sm_smem: usize,
    /// Weight tiles streamed with an L2 evict-first policy.
    pub evict_first: bool,
}

impl WeightStreaming {
    /// The settings for a decoder enqueued on a stream with `partition_sms` SMs (None: the
    /// whole GPU). On a partition the split-K plans follow the SMs the stream has: planning
    /// for the whole GPU there doubles the fp32 partials every GEMM writes and rereads, and
    /// that traffic slows the encoder running beside it (the pipeline's frame) more than the
    /// extra CTAs speed the decoder. The splits change, so results differ from the whole
    /// GPU's in the last bits.
    pub fn on_partition(self, partition_sms: Option<usize>) -> Self {
        let Some(sms) = partition_sms else {
            return self;
        };
        let plan_sms = self
            .partition_plan_sms
            .unwrap_or(sms)
            .clamp(1, self.plan_sms);
        WeightStreaming {
            plan_sms,
            rule: self
                .partition_rule
                .unwrap_or_else(|| partition_split_rule(sms)),
            // The shallow ring (same splits, same arithmetic) where only it fits one wave.
            partition_sms: self.shallow_ring.then_some(sms),
            ..self
        }
    }
}

impl Pi0Cuda {
    /// part[splits][rows][n] = X[rows][k] · W[n][k]ᵀ; returns the split count.
    #[allow(clippy::too_many_arguments)]
    fn wgemm(
        &self,
        s: sys::CUstream,
        ws: &WeightStreaming,
        operands: skinny::Operands,
        x: u64,
        ldx: usize,
        w: u64,
        part: u64,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<usize> {
        let run = skinny::Launch {
            plan_sms: ws.plan_sms,
            rule: ws.rule,
            pdl: ws.pdl,
            partition_sms: ws.partition_sms,
            sm_smem: ws.sm_smem,
            evict_first: ws.evict_first,
            operands,
        };
        skinny::launch(&self.kernels, s, &run, (x, ldx), w, part, (rows, n, k))
    }

    /// Whether the weight-streaming kernel covers the expert of `cfg` for up to `max_rows` token
    /// rows (decided once: the expert weights are stored in its tiled layout).
    pub(super) fn weight_streaming_fits(cfg: &ModelConfig, d: &Dims, max_rows: usize) -> bool {
        let g = &cfg.expert;
        [g.width, d.heads * d.hd, g.mlp_dim]
            .iter()
            .all(|&k| skinny::supports(max_rows, k))
    }

    /// One expert layer; `pending` are the previous layer's down-projection splits still to be
    /// added to the residual (0 for the first layer). Returns this layer's pending splits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn expert_layer(
        &self,
        s: sys::CUstream,
        lt: &mut LtCache,
        ws: &WeightStreaming,
        l: &GemmaLayer,
        rows: usize,
        b: &GemmaBufs,
        part: u64,
        pending: usize,
        at: &LayerAttention,
    ) -> Result<usize> {
        let g = &self.cfg.expert;
        let (w, f) = (g.width, g.mlp_dim);
        let (hh, hd) = (self.d.heads, self.d.hd);
        let qkvw = self.d.qkv_e;
        let eps = g.rms_norm_eps;
        // The norm-fed GEMMs (q|k|v, gate|up) in fp16 where the layer's weights allow it.
        let fed = if l.norm_fed_f16 {
            skinny::Operands::F16
        } else {
            skinny::Operands::Bf16
        };
        let bf = skinny::Operands::Bf16;
        let norm = |add: (u64, usize), scale: u64| {
            self.resid_rms(
                s,
                ws.pdl,
                b.x,
                add,
                rows,
                w,
                Some((b.xn, scale, l.norm_fed_f16)),
                eps,
            )
        };
        norm((part, pending), l.pre.ptr)?;
        let splits = self.wgemm(s, ws, fed, b.xn, w, l.qkv_w.ptr, part, rows, qkvw, w)?;
        self.rope_kv(s, ws.pdl, (part, splits), rows, b, at)?;
        self.attend(s, lt, ws.pdl, rows, b, at)?;
        let splits = self.wgemm(
            s,
            ws,
            bf,
            b.attn,
            hh * hd,
            l.o_w.ptr,
            part,
            rows,
            w,
            hh * hd,
        )?;
        norm((part, splits), l.post.ptr)?;
        let splits = self.wgemm(s, ws, fed, b.xn, w, l.gu_w.ptr, part, rows, 2 * f, w)?;
        let n4 = (rows * f).div_ceil(4);
        self.kernels.launch_ex(
            K::GeluPart,
            (n4.div_ceil(256) as u32, 1, 1),
            256,
            0,
            s,
            &[
                A::P(part),
                A::I(splits as i32),
                A::I(rows as i32),
                A::I(f as i32),
                A::P(b.h),
            ],
            ws.pdl,
        )?;
        self.wgemm(s, ws, bf, b.h, f, l.down_w.ptr, part, rows, w, f)
    }

    /// Adds the last layer's pending down-projection partials to the residual stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_residual(
        &self,
        s: sys::CUstream,
        ws: &WeightStreaming,
        b: &GemmaBufs,
        part: u64,
        pending: usize,
        rows: usize,
    ) -> Result<()> {
        let g = &self.cfg.expert;
        self.resid_rms(
            s,
            ws.pdl,
            b.x,
            (part, pending),
            rows,
            g.width,
            None,
            g.rms_norm_eps,
        )
    }

    /// Bytes of split-K partials the expert needs for `rows` token rows: the largest of its
    /// four weight GEMMs, planned for any SM count up to `ws.plan_sms` (a partition's plan may
    /// split more than the whole GPU's).
    pub(super) fn partial_bytes(
        cfg: &ModelConfig,
        d: &Dims,
        ws: &WeightStreaming,
        rows: usize,
    ) -> usize {
        let g = &cfg.expert;
        let (w, f, a) = (g.width, g.mlp_dim, d.heads * d.hd);
        [(d.qkv_e, w), (w, a), (2 * f, w), (w, f)]
            .iter()
            .flat_map(|&(n, k)| {
                // The split count does not depend on the operand type.
                (1..=ws.plan_sms).flat_map(move |sms| {
                    // Either rule may be chosen on a partition (`partition_split_rule`).
                    [skinny::SplitRule::Pow2, skinny::SplitRule::Balanced].map(|rule| {
                        skinny::plan(rows, n, k, sms, rule, skinny::Operands::Bf16).splits
                            * rows
                            * n
                            * 4
                    })
                })
            })
            .max()
            .unwrap_or(0)
    }
}

/// The split rule on a partition of `sms` SMs. Balanced counts (fewer CTAs, fewer fp32
/// partials through the L2 that the encoder beside it contends for) measured faster on 64-68
/// SMs, the 50-50 split's halves, and slower on 40, 56 and 92 (docs/partition-notes.md v15,
/// v20), where powers of two stay.
pub fn partition_split_rule(sms: usize) -> skinny::SplitRule {
    if (60..=72).contains(&sms) {
        skinny::SplitRule::Balanced
    } else {
        skinny::SplitRule::Pow2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole_h100() -> WeightStreaming {
        WeightStreaming {
            plan_sms: 132,
            partition_plan_sms: None,
            rule: skinny::SplitRule::Pow2,
            partition_rule: Some(skinny::SplitRule::Pow2),
            pdl: true,
            partition_sms: None,
            shallow_ring: true,
            sm_smem: 233_472,
            evict_first: true,
        }
    }

    fn splits(ws: &WeightStreaming, n: usize, k: usize) -> usize {
        skinny::plan(51, n, k, ws.plan_sms, ws.rule, skinny::Operands::Bf16).splits
    }

    #[test]
    fn the_whole_gpu_keeps_its_plan() {
        let w = whole_h100();
        let same = w.on_partition(None);
        assert_eq!(same.plan_sms, w.plan_sms);
        assert_eq!(same.partition_sms, None);
    }

    #[test]
    fn a_partition_aims_for_its_own_sms() {
        let w = whole_h100();
        let half = w.on_partition(Some(64));
        assert_eq!(half.plan_sms, 64);
        assert_eq!(half.partition_sms, Some(64));
        // The expert's down projection (1024 × 4096): half the split-K partials of the whole
        // GPU's plan, one CTA per SM of the partition.
        assert_eq!(splits(&w, 1024, 4096), 16);
        assert_eq!(splits(&half, 1024, 4096), 8);
        // Without the shallow ring the grid is not refitted, but the target still follows.
        let deep = WeightStreaming {
            shallow_ring: false,
            ..w
        }
        .on_partition(Some(64));
        assert_eq!((deep.plan_sms, deep.partition_sms), (half.plan_sms, None));
    }

    #[test]
    fn the_partition_rule_applies_on_partitions_only() {
        let w = WeightStreaming {
            partition_rule: Some(skinny::SplitRule::Balanced),
            ..whole_h100()
        };
        assert_eq!(w.on_partition(None).rule, skinny::SplitRule::Pow2);
        let half = w.on_partition(Some(64));
        assert_eq!(half.rule, skinny::SplitRule::Balanced);
        // q|k|v (20 bands of 128 rows, k = 1024) on 64 SMs: powers of two give 80 CTAs (two
        // on 16 SMs), the balanced count 3 splits = 60 CTAs, one per SM.
        assert_eq!(splits(&w.on_partition(Some(64)), 2560, 1024), 3);
        assert_eq!(splits(&whole_h100().on_partition(Some(64)), 2560, 1024), 4);
    }

    #[test]
    fn without_a_knob_the_partition_rule_follows_the_sm_count() {
        let w = WeightStreaming {
            partition_rule: None,
            ..whole_h100()
        };
        assert_eq!(w.on_partition(None).rule, skinny::SplitRule::Pow2);
        assert_eq!(w.on_partition(Some(64)).rule, skinny::SplitRule::Balanced);
        assert_eq!(w.on_partition(Some(68)).rule, skinny::SplitRule::Balanced);
        for sms in [40, 56, 92, 116] {
            assert_eq!(
                w.on_partition(Some(sms)).rule,
                skinny::SplitRule::Pow2,
                "{sms}"
            );
        }
    }

    #[test]
    fn an_override_never_exceeds_what_the_buffers_were_sized_for() {
        let w = WeightStreaming {
            partition_plan_sms: Some(1000),
            ..whole_h100()
        };
        assert_eq!(w.on_partition(Some(64)).plan_sms, w.plan_sms);
        let w = WeightStreaming {
            partition_plan_sms: Some(32),
            ..whole_h100()
        };
        assert_eq!(w.on_partition(Some(64)).plan_sms, 32);
        assert_eq!(splits(&w.on_partition(Some(64)), 1024, 4096), 4);
    }
}
