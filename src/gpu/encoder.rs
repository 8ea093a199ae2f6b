//! The encoder stage of `Pi0Cuda`: SigLIP over the valid views, the projector and prompt
//! embedding, then Gemma-2B over the prefix, leaving every layer's K/V in the prefix slot.

use super::*;

impl Pi0Cuda {
    /// Enqueues the encoder of prefix slot `slot` on `stream`: SigLIP on the valid views,
    /// projector, prompt embedding, Gemma-2B over the prefix → K/V of every layer in the slot.
    pub fn enqueue_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<()> {
        let p = self.pslot(slot)?;
        let nv = p.nv.load(Ordering::Acquire);
        let ntok = p.ntok.load(Ordering::Acquire);
        if nv == 0 {
            return Err(Error::Gpu(format!(
                "prefix slot {slot} holds no observation (upload_observation first)"
            )));
        }
        bind_stream_context(stream)?;
        let s = stream.cu_stream();
        let mut lt = p.lt.lock().unwrap();
        let lt = &mut *lt;
        lt.sm_target = self.partition_sms(stream);
        lt.cluster_sm_target = self.whole_group_sms(stream, lt.sm_target);
        lt.pdl_all = self.pdl_scope.covers(stream, &self.stream);
        nvtx::range_push!("encoder");
        nvtx::range_push!("vision");
        let r = self.vision(s, p, lt, nv);
        nvtx::range_pop!();
        let r = r.and_then(|_| {
            nvtx::range_push!("llm");
            let r = self.llm(s, p, lt, nv, ntok);
            nvtx::range_pop!();
            r
        });
        nvtx::range_pop!();
        r
    }

    fn vision(&self, s: sys::CUstream, p: &PrefixSlot, lt: &mut LtCache, nv: usize) -> Result<()> {
        let pdl = lt.pdl_all;
        let v = &self.cfg.vision;
        let (wv, fv, hv, dv) = (v.width, v.mlp_dim, v.num_heads, v.head_dim);
        let tpv = self.d.tpv;
        let t = nv * tpv;
        let pd = self.w.pd_pad;
        let handle = self.lt_handle()?;
        let h = &*handle;
        let eps = v.layernorm_eps;
        let bf = 2u64;
        self.launch(
            s,
            pdl,
            K::Patchify,
            t as u32,
            256,
            0,
            &[
                A::P(p.img.ptr),
                A::P(p.patches.ptr),
                A::P(self.w.pos.ptr),
                A::P(p.xv.ptr),
                A::I(v.image_size as i32),
                A::I(v.patch_size as i32),
                A::I(pd as i32),
                A::I(wv as i32),
            ],
        )?;
        lt.matmul(
            h,
            s,
            Gemm::linear(t, wv, pd).bias().residual().f32out(),
            p.patches.ptr,
            self.w.patch_w.ptr,
            p.xv.ptr,
            self.w.patch_b.ptr,
            1.0,
        )?;
        let ln = |x: u64, y: u64, g: u64, b: u64| {
            self.launch(
                s,
                pdl,
                K::LayerNorm,
                t as u32,
                row_threads(wv),
                0,
                &[
                    A::P(x),
                    A::P(y),
                    A::I(wv as i32),
                    A::F(eps),
                    A::P(g),
                    A::P(b),
                    A::I(t as i32),
                ],
            )
        };
        let scale = 1.0 / (dv as f32).sqrt();
        let sv = (tpv * tpv) as i64;
        for l in &self.w.vis {
            ln(p.xv.ptr, p.xvn.ptr, l.ln1_g.ptr, l.ln1_b.ptr)?;
            lt.matmul(
                h,
                s,
                Gemm::linear(t, 3 * wv, wv).bias(),
                p.xvn.ptr,
                l.qkv_w.ptr,
                p.qkv_v.ptr,
                l.qkv_b.ptr,
                1.0,
            )?;
            if let Some(fa) = &self.fused {
                // Batch = view x head; q, k, v interleaved per token in qkv_v.
                let row = 3 * wv;
                flash::launch(
                    &self.kernels,
                    s,
                    fa,
                    pdl,
                    &AttentionProblem {
                        q: (p.qkv_v.ptr, row, tpv * row, dv),
                        k: p.qkv_v.ptr + wv as u64 * bf,
                        v: p.qkv_v.ptr + 2 * wv as u64 * bf,
                        kv: (row, tpv * row, dv),
                        o: (p.attn_v.ptr, wv, tpv * wv, dv),
                        inner: hv,
                        batch: nv * hv,
                        rows: tpv,
                        keys: tpv,
                        head_dim: dv,
                        mask_rows: 0,
                        mask_keys: 0,
                    },
                )?;
            } else {
                for view in 0..nv {
                    let q0 = p.qkv_v.ptr + (view * tpv * 3 * wv) as u64 * bf;
                    let sptr = p.s_v.ptr + (view * hv * tpv * tpv) as u64 * 4;
                    let g = Gemm {
                        batch: hv,
                        stride_x: dv as i64,
                        stride_w: dv as i64,
                        stride_y: sv,
                        out_f32: true,
                        ..Gemm::linear(tpv, tpv, dv).ld(3 * wv, 3 * wv, tpv)
                    };
                    lt.matmul(h, s, g, q0, q0 + (wv as u64) * bf, sptr, 0, scale)?;
                }
                let rows = nv * hv * tpv;
                self.softmax(s, pdl, (p.s_v.ptr, p.p_v.ptr), rows, tpv, tpv, (0, 0))?;
                for view in 0..nv {
                    let v0 = p.qkv_v.ptr + (view * tpv * 3 * wv + 2 * wv) as u64 * bf;
                    let pptr = p.p_v.ptr + (view * hv * tpv * tpv) as u64 * bf;
                    let out = p.attn_v.ptr + (view * tpv * wv) as u64 * bf;
                    let g = Gemm {
                        batch: hv,
                        stride_x: sv,
                        stride_w: dv as i64,
                        stride_y: dv as i64,
                        w_kn: true,
                        ..Gemm::linear(tpv, dv, tpv).ld(tpv, 3 * wv, wv)
                    };
                    lt.matmul(h, s, g, pptr, v0, out, 0, 1.0)?;
                }
            }
            lt.matmul(
                h,
                s,
                Gemm::linear(t, wv, wv).bias().residual().f32out(),
                p.attn_v.ptr,
                l.o_w.ptr,
                p.xv.ptr,
                l.o_b.ptr,
                1.0,
            )?;
            ln(p.xv.ptr, p.xvn.ptr, l.ln2_g.ptr, l.ln2_b.ptr)?;
            lt.matmul(
                h,
                s,
                Gemm::linear(t, fv, wv).gelu_bias(),
                p.xvn.ptr,
                l.fc1_w.ptr,
                p.h_v.ptr,
                l.fc1_b.ptr,
                1.0,
            )?;
            lt.matmul(
                h,
                s,
                Gemm::linear(t, wv, fv).bias().residual().f32out(),
                p.h_v.ptr,
                l.fc2_w.ptr,
                p.xv.ptr,
                l.fc2_b.ptr,
                1.0,
            )?;
        }
        ln(p.xv.ptr, p.xvn.ptr, self.w.post_g.ptr, self.w.post_b.ptr)?;
        let wl = self.cfg.llm.width;
        lt.matmul(
            h,
            s,
            Gemm::linear(t, wl, wv).bias().f32out(),
            p.xvn.ptr,
            self.w.proj_w.ptr,
            p.xl.ptr,
            self.w.proj_b.ptr,
            1.0,
        )?;
        Ok(())
    }

    fn llm(
        &self,
        s: sys::CUstream,
        p: &PrefixSlot,
        lt: &mut LtCache,
        nv: usize,
        ntok: usize,
    ) -> Result<()> {
        let g = &self.cfg.llm;
        let (wl, hd) = (g.width, self.d.hd);
        let tv = nv * self.d.tpv;
        let pl = tv + ntok;
        let bf = 2u64;
        if ntok > 0 {
            self.launch(
                s,
                lt.pdl_all,
                K::Embed,
                ntok as u32,
                256,
                0,
                &[
                    A::P(p.tokens.ptr),
                    A::P(self.w.embed.ptr),
                    A::P(p.xl.ptr + (tv * wl) as u64 * 4),
                    A::I(wl as i32),
                    A::F(self.cfg.embed_scale()),
                ],
            )?;
        }
        let lds = r8(pl);
        let qkvw = self.d.qkv_l;
        let kv_layer = (self.d.pmax_pad * hd) as u64 * bf;
        let bufs = GemmaBufs {
            x: p.xl.ptr,
            xn: p.xln.ptr,
            qkv: p.qkv_l.ptr,
            q: p.q_l.ptr,
            s: p.s_l.ptr,
            p: p.p_l.ptr,
            attn: p.attn_l.ptr,
            gu: p.gu_l.ptr,
            h: p.h_l.ptr,
        };
        for (i, l) in self.w.llm.iter().enumerate() {
            let at = LayerAttention {
                k: p.k.ptr + i as u64 * kv_layer,
                v: p.v.ptr + i as u64 * kv_layer,
                first_row: 0,
                keys: pl,
                lds,
                // Prefix attention is bidirectional: no block-causal rows.
                mask_heads: 0,
                mask_keys: 0,
                rope: self.rope_llm.ptr,
            };
            // The last layer's attention/MLP outputs are never used: only its K/V.
            let kv_only = i + 1 == self.w.llm.len();
            self.gemma_layer(s, lt, g, l, qkvw, pl, &bufs, &at, kv_only)?;
        }
        Ok(())
    }
}
