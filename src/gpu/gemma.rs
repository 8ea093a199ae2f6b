//! One Gemma block of `Pi0Cuda` and its parts (residual + RMSNorm, RoPE + K/V write,
//! attention), shared by the LLM over the prefix and the action expert over the suffix.

use super::*;
use crate::gpu::gateup::{self, Problem, Variant};

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
        let mlp_in = Problem {
            x: b.xn,
            rows,
            w: l.gu_w.ptr,
            width: w,
            f,
            h: b.h,
        };
        let path = if self.fused_llm_mlp && gateup::covers(rows, w, f) {
            GateUpPath::Fused(Variant::choose(rows, f))
        } else {
            GateUpPath::Cublaslt
        };
        self.gate_up_gelu(s, lt, h, pdl, path, &mlp_in, b.gu)?;
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

/// One way to compute a Gemma MLP's h = GELU(gate) ⊙ up.
#[derive(Clone, Copy, Debug)]
enum GateUpPath {
    /// The gate|up GEMM on cuBLASLt into a [rows][2F] scratch, then gelu_mul_k.
    Cublaslt,
    /// kernels/gateup.cu in one of its shapes.
    Fused(Variant),
}

impl Pi0Cuda {
    /// Enqueues `mlp_in`'s h on `s` along `path`; `gu` is the cuBLASLt path's [rows][2F]
    /// scratch.
    #[allow(clippy::too_many_arguments)]
    fn gate_up_gelu(
        &self,
        s: sys::CUstream,
        lt: &mut LtCache,
        handle: &LtHandle,
        pdl: bool,
        path: GateUpPath,
        mlp_in: &Problem,
        gu: u64,
    ) -> Result<()> {
        let Problem {
            x,
            rows,
            w,
            width,
            f,
            h,
        } = *mlp_in;
        match path {
            GateUpPath::Fused(v) => gateup::launch(&self.kernels, v, s, pdl, mlp_in),
            GateUpPath::Cublaslt => {
                lt.matmul(
                    handle,
                    s,
                    Gemm::linear(rows, 2 * f, width),
                    x,
                    w,
                    gu,
                    0,
                    1.0,
                )?;
                self.launch(
                    s,
                    pdl,
                    K::GeluMul,
                    (rows * f).div_ceil(8).div_ceil(256) as u32,
                    256,
                    0,
                    &[A::P(gu), A::P(h), A::I(rows as i32), A::I(f as i32)],
                )
            }
        }
    }

    /// Study (`pi0-bench --gate-up-study N`): the LLM's gate|up projection and GELU·up on
    /// prefix slot 0's last input (run `forward` first), every MLP layer's weights in turn, on
    /// the engine's stream, `iters` times per path: cuBLASLt + gelu_mul_k, and on Hopper each
    /// shape of the fused kernel. Returns (path, µs per layer, rel L2 of the last layer's h
    /// against the cuBLASLt path's).
    pub fn study_llm_gate_up(&self, iters: usize) -> Result<Vec<(String, f64, f64)>> {
        let p = self.pslot(0)?;
        let rows = self.prefix_len(0);
        let (w, f) = (self.cfg.llm.width, self.cfg.llm.mlp_dim);
        // The last LLM layer is uploaded K/V-only: it has no MLP weights.
        let layers = &self.w.llm[..self.w.llm.len().saturating_sub(1)];
        if rows == 0 || layers.is_empty() || iters == 0 {
            return Err(Error::Input(
                "gate|up study: run forward first (an empty prefix has no MLP rows)".into(),
            ));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e:?}")))?;
        let s = self.stream.cu_stream();
        let handle = self.lt_handle()?;
        let mut lt = p.lt.lock().unwrap();
        let mut paths = vec![GateUpPath::Cublaslt];
        if gateup::supported(&self.kernels) && gateup::covers(rows, w, f) {
            paths.extend(
                Variant::ALL
                    .into_iter()
                    .filter(|v| v.tiles(f))
                    .map(GateUpPath::Fused),
            );
        }
        let mut run = |path: GateUpPath| -> Result<()> {
            for l in layers {
                let mlp_in = Problem {
                    x: p.xln.ptr,
                    rows,
                    w: l.gu_w.ptr,
                    width: w,
                    f,
                    h: p.h_l.ptr,
                };
                self.gate_up_gelu(s, &mut lt, &handle, false, path, &mlp_in, p.gu_l.ptr)?;
            }
            Ok(())
        };
        let event = || {
            drv(
                self.ctx
                    .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)),
                "event",
            )
        };
        let mut out = Vec::new();
        let mut reference: Option<Vec<f64>> = None;
        for path in paths {
            run(path)?;
            run(path)?;
            let (a, b) = (event()?, event()?);
            drv(a.record(&self.stream), "event")?;
            for _ in 0..iters {
                run(path)?;
            }
            drv(b.record(&self.stream), "event")?;
            let ms = drv(a.elapsed_ms(&b), "elapsed")? as f64;
            drv(self.stream.synchronize(), "synchronize")?;
            let h: Vec<f64> = p
                .h_l
                .download::<u16>(rows * f)?
                .iter()
                .map(|&x| half::bf16::from_bits(x).to_f64())
                .collect();
            let rel = match &reference {
                None => 0.0,
                Some(r) => {
                    let num: f64 = h.iter().zip(r).map(|(a, b)| (a - b).powi(2)).sum();
                    let den: f64 = r.iter().map(|b| b * b).sum();
                    (num / den).sqrt()
                }
            };
            if h.iter().any(|x| !x.is_finite()) {
                return Err(Error::Gpu(format!(
                    "gate|up study: {path:?} wrote non-finite h"
                )));
            }
            reference.get_or_insert(h);
            let us = ms * 1e3 / (iters * layers.len()) as f64;
            out.push((format!("{path:?}"), us, rel));
        }
        Ok(out)
    }
}
