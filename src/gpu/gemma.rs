//! One Gemma block of `Pi0Cuda` and its parts (residual + RMSNorm, RoPE + K/V write,
//! attention), shared by the LLM over the prefix and the action expert over the suffix.

use super::*;

impl Pi0Cuda {
    /// One Gemma block on `rows` tokens, shared by the LLM (prefix) and the action expert
    /// (suffix): RMSNorm → QKV → RoPE (+ K/V written at `at.first_row`) → attention over
    /// `at.keys` keys → O (+residual) → RMSNorm → gate|up → GELU·up → down (+residual).
    /// `kv_only` stops after the K/V write.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemma_layer(
        &self,
        s: sys::CUstream,
        lt: &mut LtCache,
        g: &GemmaConfig,
        l: &GemmaLayer,
        qkvw: usize,
        rows: usize,
        b: &GemmaBufs,
        at: &LayerAttention,
        kv_only: bool,
    ) -> Result<()> {
        let (w, f) = (g.width, g.mlp_dim);
        let (hh, hd) = (self.d.heads, self.d.hd);
        let handle = self.lt_handle()?;
        let h = &*handle;
        let eps = g.rms_norm_eps;
        let pdl = lt.pdl_all;
        let rms = |scale: u64| {
            self.resid_rms(
                s,
                pdl,
                b.x,
                (0, 0),
                rows,
                w,
                Some((b.xn, scale, false)),
                eps,
            )
        };
        rms(l.pre.ptr)?;
        // q|k|v in fp32 so that RoPE rounds to bf16 once (the weight-streaming decoder does the
        // same from its fp32 partials).
        let qkv = Gemm::linear(rows, qkvw, w).f32out();
        lt.matmul(h, s, qkv, b.xn, l.qkv_w.ptr, b.qkv, 0, 1.0)?;
        self.rope_kv(s, pdl, (b.qkv, 1), rows, b, at)?;
        if kv_only {
            return Ok(());
        }
        self.attend(s, lt, pdl, rows, b, at)?;
        // Residual GEMMs accumulate into the f32 stream `x` (beta = 1).
        let residual = |k: usize| Gemm::linear(rows, w, k).residual().f32out();
        lt.matmul(h, s, residual(hh * hd), b.attn, l.o_w.ptr, b.x, 0, 1.0)?;
        rms(l.post.ptr)?;
        if self.fused_llm_mlp && crate::gpu::gateup::covers(rows, w, f) {
            crate::gpu::gateup::launch(
                &self.kernels,
                s,
                lt.pdl_all,
                b.xn,
                rows,
                l.gu_w.ptr,
                w,
                f,
                b.h,
            )?;
        } else {
            let gate_up = Gemm::linear(rows, 2 * f, w);
            lt.matmul(h, s, gate_up, b.xn, l.gu_w.ptr, b.gu, 0, 1.0)?;
            let n8 = (rows * f).div_ceil(8);
            self.launch(
                s,
                lt.pdl_all,
                K::GeluMul,
                n8.div_ceil(256) as u32,
                256,
                0,
                &[A::P(b.gu), A::P(b.h), A::I(rows as i32), A::I(f as i32)],
            )?;
        }
        lt.matmul(h, s, residual(f), b.h, l.down_w.ptr, b.x, 0, 1.0)
    }

    /// Residual + RMSNorm on `rows` rows of the fp32 stream `x` (resid_rms_k, one block per
    /// row): x += the `add` = (pointer, splits) fp32 partial sums (0 splits: nothing to add);
    /// then, with `norm` = (y, scale, fp16), y = RMSNorm(x)·scale in bf16 (fp16 when asked).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resid_rms(
        &self,
        s: sys::CUstream,
        pdl: bool,
        x: u64,
        add: (u64, usize),
        rows: usize,
        width: usize,
        norm: Option<(u64, u64, bool)>,
        eps: f32,
    ) -> Result<()> {
        let (y, scale, y_f16) = norm.unwrap_or((0, 0, false));
        self.kernels.launch_ex(
            K::ResidRms,
            (rows as u32, 1, 1),
            row_threads(width),
            0,
            s,
            &[
                A::P(x),
                A::P(add.0),
                A::I(add.1 as i32),
                A::I(rows as i32),
                A::I(width as i32),
                A::P(y),
                A::P(scale),
                A::F(eps),
                A::I(y_f16 as i32),
            ],
            pdl,
        )
    }

    /// RoPE (rope_part_k) of q|k|v held as `qkv` = (pointer, splits) fp32 partial sums (one
    /// split for a cuBLASLt output): q into `b.q`, k and v into the layer's cache rows.
    pub(super) fn rope_kv(
        &self,
        s: sys::CUstream,
        pdl: bool,
        qkv: (u64, usize),
        rows: usize,
        b: &GemmaBufs,
        at: &LayerAttention,
    ) -> Result<()> {
        let (hh, hd) = (self.d.heads, self.d.hd);
        let first = (at.first_row * hd) as u64 * 2;
        let out = (b.q, at.k + first, at.v + first);
        let shape = (rows, hh, hd, at.first_row);
        let kernel = rope_kernel(rows);
        launch_rope(&self.kernels, s, pdl, kernel, qkv, out, shape, at.rope)
    }

    /// Attention of `rows` query tokens (q in `b.q`, [rows][heads][hd]) over the layer's K/V
    /// cache: QKᵀ (fp32, scaled) → masked softmax → P·V into `b.attn`, fused in one kernel or as
    /// cuBLASLt GEMMs around the softmax kernel.
    pub(super) fn attend(
        &self,
        s: sys::CUstream,
        lt: &mut LtCache,
        pdl: bool,
        rows: usize,
        b: &GemmaBufs,
        at: &LayerAttention,
    ) -> Result<()> {
        let (hh, hd) = (self.d.heads, self.d.hd);
        if let Some(fa) = self.fused.as_ref().filter(|f| f.gemma) {
            // One K/V head: a token's heads are consecutive query rows of one problem.
            return flash::launch(
                &self.kernels,
                s,
                fa,
                pdl,
                &AttentionProblem {
                    q: (b.q, hd, 0, 0),
                    k: at.k,
                    v: at.v,
                    kv: (hd, 0, 0),
                    o: (b.attn, hd, 0, 0),
                    inner: 1,
                    batch: 1,
                    rows: rows * hh,
                    keys: at.keys,
                    head_dim: hd,
                    mask_rows: at.mask_heads,
                    mask_keys: at.mask_keys,
                },
            );
        }
        let handle = self.lt_handle()?;
        let h = &*handle;
        let (qr, lds) = (rows * hh, at.lds);
        lt.matmul(
            h,
            s,
            Gemm {
                out_f32: true,
                ..Gemm::linear(qr, lds, hd).ld(hd, hd, lds)
            },
            b.q,
            at.k,
            b.s,
            0,
            1.0 / (hd as f32).sqrt(),
        )?;
        let mask = (at.mask_heads, at.mask_keys);
        // The enqueue's scope, not `pdl` (the decoder chain's flag): on `forward`'s own stream
        // the softmax stays an ordinary launch, as timed there in docs/gpu-notes.md v24 (with
        // every kernel programmatic the decoder measured 0.017 ms slower).
        self.softmax(s, lt.pdl_all, (b.s, b.p), qr, lds, at.keys, mask)?;
        lt.matmul(
            h,
            s,
            Gemm {
                w_kn: true,
                ..Gemm::linear(qr, hd, lds).ld(lds, hd, hd)
            },
            b.p,
            at.v,
            b.attn,
            0,
            1.0,
        )
    }

    /// Row softmax (softmax_k, 4 rows per block) of `rows` fp32 score rows of `len` (the row
    /// stride of both the scores and the bf16 probabilities) into `sp` = (scores, probs):
    /// rows see `valid` keys, the first `mask.0` rows only `mask.1`; keys past that up to
    /// `len` get probability 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn softmax(
        &self,
        s: sys::CUstream,
        pdl: bool,
        sp: (u64, u64),
        rows: usize,
        len: usize,
        valid: usize,
        mask: (usize, usize),
    ) -> Result<()> {
        self.launch(
            s,
            pdl,
            K::Softmax,
            rows.div_ceil(4) as u32,
            128,
            0,
            &[
                A::P(sp.0),
                A::L(len as i64),
                A::P(sp.1),
                A::L(len as i64),
                A::I(rows as i32),
                A::I(len as i32),
                A::I(valid as i32),
                A::I(mask.0 as i32),
                A::I(mask.1 as i32),
            ],
        )
    }
}
