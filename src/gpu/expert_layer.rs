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
    /// CTAs each weight GEMM aims for (split-K grows until reached).
    pub target_ctas: usize,
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
            target_ctas: ws.target_ctas,
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

    /// Bytes of split-K partials the expert needs for `rows` token rows (the largest of its
    /// four weight GEMMs).
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
            .map(|&(n, k)| {
                // The split count does not depend on the operand type.
                skinny::plan(rows, n, k, ws.target_ctas, skinny::Operands::Bf16).splits
                    * rows
                    * n
                    * 4
            })
            .max()
            .unwrap_or(0)
    }
}
