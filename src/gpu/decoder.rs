//! The decoder stage of `Pi0Cuda`: the state token, then the Euler steps of the action expert
//! against a prefix slot's K/V; the actions stay in the decoder slot until downloaded.

use super::*;

impl Pi0Cuda {
    /// Enqueues the decoder of slot `dec` on `stream`, attending to the K/V of prefix slot
    /// `prefix_slot`: state token, then `num_steps` Euler steps; the actions stay in the slot.
    pub fn enqueue_decoder(
        &self,
        stream: &Arc<CudaStream>,
        prefix_slot: usize,
        dec: usize,
    ) -> Result<()> {
        let p = self.pslot(prefix_slot)?;
        let ds = self.dslot(dec)?;
        let pl = self.prefix_len(prefix_slot);
        let c = self.chunk(dec);
        if p.nv.load(Ordering::Acquire) == 0 {
            return Err(Error::Gpu(format!(
                "prefix slot {prefix_slot} holds no observation"
            )));
        }
        if c == 0 {
            return Err(Error::Gpu(format!(
                "decoder slot {dec} has no inputs (upload_decoder_inputs first)"
            )));
        }
        bind_stream_context(stream)?;
        let s = stream.cu_stream();
        let mut lt = ds.lt.lock().unwrap();
        let lt = &mut *lt;
        lt.sm_target = self.partition_sms(stream);
        lt.pdl_all = self.pdl_scope.covers(stream, &self.stream);
        nvtx::range_push!("decoder");
        let r = self.decoder(s, p, ds, lt, pl, c);
        nvtx::range_pop!();
        r
    }

    fn decoder(
        &self,
        s: sys::CUstream,
        p: &PrefixSlot,
        ds: &DecoderSlot,
        lt: &mut LtCache,
        pl: usize,
        c: usize,
    ) -> Result<()> {
        let g = &self.cfg.expert;
        let we = g.width;
        let (hh, hd) = (self.d.heads, self.d.hd);
        let a = self.cfg.action_dim;
        let bf = 2u64;
        let handle = self.lt_handle()?;
        let h = &*handle;
        let rows = c + 1;
        let kvl = pl + rows;
        let lds = r8(kvl);
        let qkvw = self.d.qkv_e;
        let dec_layer = (self.d.kvmax_pad * hd) as u64 * bf;
        let pre_layer = (self.d.pmax_pad * hd) as u64 * bf;
        // Prefix K/V of every layer into this slot's K/V buffers.
        for (dst, src) in [(ds.k.ptr, p.k.ptr), (ds.v.ptr, p.v.ptr)] {
            copy_2d(
                dst,
                dec_layer as usize,
                src,
                pre_layer as usize,
                pl * hd * 2,
                g.depth,
                s,
            )?;
        }
        self.launch(
            s,
            lt.pdl_all,
            K::StateProj,
            1,
            256,
            0,
            &[
                A::P(ds.state.ptr),
                A::P(self.w.state_w.ptr),
                A::P(self.w.state_b.ptr),
                A::P(ds.state_row.ptr),
                A::I(a as i32),
                A::I(we as i32),
            ],
        )?;
        let x1 = ds.x.ptr + we as u64 * 4;
        let bufs = GemmaBufs {
            x: ds.x.ptr,
            xn: ds.xn.ptr,
            qkv: ds.qkv.ptr,
            q: ds.q.ptr,
            s: ds.s.ptr,
            p: ds.p.ptr,
            attn: ds.attn.ptr,
            gu: ds.gu.ptr,
            h: ds.h.ptr,
        };
        // On an SM partition the weight GEMMs plan their split-K for that partition's SMs.
        let wstream = self
            .wstream
            .map(|w| w.on_partition(lt.sm_target.map(|n| n as usize)));
        for step in 0..self.cfg.num_steps {
            nvtx::range_push!("flow step {}", step);
            self.launch(
                s,
                lt.pdl_all,
                K::ActionIn,
                c as u32,
                256,
                0,
                &[
                    A::P(ds.x_t.ptr),
                    A::P(self.w.wf.ptr),
                    A::P(self.w.tb.ptr + (step * we * 4) as u64),
                    A::P(ds.hin.ptr),
                    A::P(ds.state_row.ptr),
                    A::P(ds.x.ptr),
                    A::I(a as i32),
                    A::I(we as i32),
                ],
            )?;
            lt.matmul(
                h,
                s,
                Gemm::linear(c, we, we).bias().f32out(),
                ds.hin.ptr,
                self.w.mlp_out_w.ptr,
                x1,
                self.w.mlp_out_b.ptr,
                1.0,
            )?;
            let mut pending = 0;
            for (i, l) in self.w.exp.iter().enumerate() {
                let at = LayerAttention {
                    k: ds.k.ptr + i as u64 * dec_layer,
                    v: ds.v.ptr + i as u64 * dec_layer,
                    first_row: pl,
                    keys: kvl,
                    lds,
                    // The state token's heads (the first query rows) must not see the actions.
                    mask_heads: hh,
                    mask_keys: pl + 1,
                    rope: self.rope_exp.ptr,
                };
                match &wstream {
                    Some(ws) => {
                        pending =
                            self.expert_layer(s, lt, ws, l, rows, &bufs, ds.part.ptr, pending, &at)?
                    }
                    None => self.gemma_layer(s, lt, g, l, qkvw, rows, &bufs, &at, false)?,
                }
            }
            if let Some(ws) = &wstream {
                self.finish_residual(s, ws, &bufs, ds.part.ptr, pending, rows)?;
            }
            self.launch(
                s,
                lt.pdl_all,
                K::OutEuler,
                c as u32,
                256,
                (we * 4) as u32,
                &[
                    A::P(x1),
                    A::P(self.w.out_w.ptr),
                    A::P(self.w.out_b.ptr),
                    A::P(ds.x_t.ptr),
                    A::I(we as i32),
                    A::I(a as i32),
                    A::F(g.rms_norm_eps),
                    A::F(self.w.dt),
                ],
            )?;
            nvtx::range_pop!();
        }
        Ok(())
    }
}
