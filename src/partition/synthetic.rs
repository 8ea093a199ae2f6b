//! Test kernels of the partition layer (kernels/partition/synthetic.cu): the %smid probe that
//! proves confinement, and synthetic stages shaped like π0's (a compute-bound encoder writing a
//! prefix slot; a memory- and launch-bound decoder of 10 steps × 18 layers reading it). They let
//! the layer be built, measured and tested without the real engine.

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::runtime_kernels::{self, gpu, RuntimeLibrary, SYNTHETIC};
use super::stage::{capture, StageEngine};
use crate::engine::ModelInput;
use crate::error::{Error, Result};
use crate::gpu::device::cu;

/// The synthetic stages' kernels and the %smid probe (kernels/partition/synthetic.cu).
pub struct PartitionKernels {
    ctx: Arc<CudaContext>,
    smid: sys::CUkernel,
    enc_layer: sys::CUkernel,
    dec_reduce: sys::CUkernel,
    dec_update: sys::CUkernel,
    // Last: the kernels above belong to it.
    _lib: RuntimeLibrary,
}

// SAFETY: kernel handles are plain driver handles, valid in every thread once loaded.
unsafe impl Send for PartitionKernels {}
unsafe impl Sync for PartitionKernels {}

impl PartitionKernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Arc<Self>> {
        let lib = RuntimeLibrary::compile(ctx, &SYNTHETIC)?;
        Ok(Arc::new(PartitionKernels {
            ctx: ctx.clone(),
            smid: lib.kernel("smid_probe")?,
            enc_layer: lib.kernel("enc_layer")?,
            dec_reduce: lib.kernel("dec_reduce")?,
            dec_update: lib.kernel("dec_update")?,
            _lib: lib,
        }))
    }

    /// Enqueues the %smid probe: `blocks` blocks that each spin `spin_cycles` and record their SM.
    pub fn enqueue_probe(
        &self,
        stream: &Arc<CudaStream>,
        out: &DevBuf,
        blocks: u32,
        spin_cycles: i64,
    ) -> Result<()> {
        assert!(out.bytes >= blocks as usize * 4);
        let mut p = out.ptr;
        let mut spin = spin_cycles;
        unsafe {
            runtime_kernels::launch(
                self.smid,
                stream,
                blocks,
                128,
                &mut [
                    &mut p as *mut _ as *mut c_void,
                    &mut spin as *mut _ as *mut c_void,
                ],
            )
        }
    }

    /// Runs the probe on `stream` (eagerly, or through a graph captured on `capture_on` and
    /// launched on its own stream) and returns the distinct SMs it ran on.
    pub fn probe_sms(&self, stream: &Arc<CudaStream>, via_graph: bool) -> Result<BTreeSet<u32>> {
        self.probe_sms_on(stream, via_graph.then_some(stream))
    }

    /// Like `probe_sms`; with `capture_on`, the probe is captured on that stream and the graph
    /// launched on `stream` (how the pipeline runs its graphs).
    pub fn probe_sms_on(
        &self,
        stream: &Arc<CudaStream>,
        capture_on: Option<&Arc<CudaStream>>,
    ) -> Result<BTreeSet<u32>> {
        let blocks = 528u32; // 4 per SM on a 132-SM H100: plenty to reach every allowed SM
        let out = DevBuf::new(&self.ctx, blocks as usize * 4)?;
        out.fill_u32(stream, u32::MAX, blocks as usize)?;
        stream.synchronize().map_err(gpu("sync"))?;
        if let Some(cs) = capture_on {
            let g = capture(cs, || self.enqueue_probe(cs, &out, blocks, 200_000))?;
            g.launch_on(stream)?;
        } else {
            self.enqueue_probe(stream, &out, blocks, 200_000)?;
        }
        let ids: Vec<u32> = out.download(stream, blocks as usize)?;
        if ids.contains(&u32::MAX) {
            return Err(Error::Gpu("smid probe: some blocks did not record".into()));
        }
        Ok(ids.into_iter().collect())
    }
}

/// A plain device allocation of the primary context (usable from green and MPS contexts).
pub struct DevBuf {
    ctx: Arc<CudaContext>,
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
}

unsafe impl Send for DevBuf {}
unsafe impl Sync for DevBuf {}

impl DevBuf {
    pub fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Self> {
        ctx.bind_to_thread().map_err(gpu("bind context"))?;
        let mut ptr = 0;
        unsafe { cu(sys::cuMemAlloc_v2(&mut ptr, bytes.max(4)), "cuMemAlloc")? };
        Ok(DevBuf {
            ctx: ctx.clone(),
            ptr,
            bytes,
        })
    }
    pub fn upload<T: Copy>(&self, stream: &Arc<CudaStream>, data: &[T]) -> Result<()> {
        let n = std::mem::size_of_val(data);
        if n > self.bytes {
            return Err(Error::Gpu(format!(
                "upload of {n} bytes into {}",
                self.bytes
            )));
        }
        stream
            .context()
            .bind_to_thread()
            .map_err(gpu("bind context"))?;
        unsafe {
            cu(
                sys::cuMemcpyHtoDAsync_v2(
                    self.ptr,
                    data.as_ptr() as *const c_void,
                    n,
                    stream.cu_stream(),
                ),
                "cuMemcpyHtoDAsync",
            )
        }
    }
    pub fn download<T: Copy + Default>(
        &self,
        stream: &Arc<CudaStream>,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut v = vec![T::default(); n];
        let bytes = n * std::mem::size_of::<T>();
        assert!(bytes <= self.bytes);
        stream
            .context()
            .bind_to_thread()
            .map_err(gpu("bind context"))?;
        unsafe {
            cu(
                sys::cuMemcpyDtoHAsync_v2(
                    v.as_mut_ptr() as *mut c_void,
                    self.ptr,
                    bytes,
                    stream.cu_stream(),
                ),
                "cuMemcpyDtoHAsync",
            )?;
            cu(
                sys::cuStreamSynchronize(stream.cu_stream()),
                "cuStreamSynchronize",
            )?;
        }
        Ok(v)
    }
    pub fn fill_u32(&self, stream: &Arc<CudaStream>, v: u32, n: usize) -> Result<()> {
        stream
            .context()
            .bind_to_thread()
            .map_err(gpu("bind context"))?;
        unsafe {
            cu(
                sys::cuMemsetD32Async(self.ptr, v, n, stream.cu_stream()),
                "cuMemsetD32Async",
            )
        }
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        unsafe {
            sys::cuMemFree_v2(self.ptr);
        }
    }
}

/// Sizes of the synthetic stages.
#[derive(Clone, Debug)]
pub struct SyntheticConfig {
    pub views: usize,
    pub enc_layers: usize,
    pub enc_iters: i32,
    pub dec_steps: usize,
    pub dec_layers: usize,
    /// Weight bytes the decoder streams per step.
    pub dec_weight_bytes: usize,
    pub dec_blocks: u32,
    pub chunk: usize,
    pub action_dim: usize,
    pub slots: usize,
}

impl Default for SyntheticConfig {
    /// Roughly π0's shape at 2 views: an encoder of 45 compute-bound layers, a decoder of
    /// 10 × 18 layers streaming 0.5 GB of "weights" per step.
    fn default() -> Self {
        SyntheticConfig {
            views: 2,
            enc_layers: 45,
            enc_iters: 600,
            dec_steps: 10,
            dec_layers: 18,
            dec_weight_bytes: 512 << 20,
            dec_blocks: 1056,
            chunk: 50,
            action_dim: 32,
            slots: 2,
        }
    }
}

/// Synthetic encoder/decoder stages (see the module doc).
pub struct SyntheticStages {
    pub cfg: SyntheticConfig,
    pub kernels: Arc<PartitionKernels>,
    obs: Vec<DevBuf>,
    prefix: Vec<DevBuf>,
    w: DevBuf,
    x: DevBuf,
    partial: DevBuf,
    state: DevBuf,
    obs_len: usize,
    // Host staging of the last observation per slot (the upload reads it synchronously).
    _lock: Mutex<()>,
}

impl SyntheticStages {
    pub fn new(ctx: &Arc<CudaContext>, cfg: SyntheticConfig) -> Result<Self> {
        let kernels = PartitionKernels::load(ctx)?;
        let obs_len = cfg.views * 224 * 224 * 3;
        let mut obs = Vec::new();
        let mut prefix = Vec::new();
        for _ in 0..cfg.slots.max(2) {
            obs.push(DevBuf::new(ctx, obs_len * 4)?);
            prefix.push(DevBuf::new(ctx, obs_len * 4)?);
        }
        let w = DevBuf::new(ctx, cfg.dec_weight_bytes)?;
        // Deterministic non-zero weights.
        let stream = ctx.new_stream().map_err(gpu("stream"))?;
        let words = cfg.dec_weight_bytes / 4;
        unsafe {
            cu(
                sys::cuMemsetD32Async(w.ptr, 0.001f32.to_bits(), words, stream.cu_stream()),
                "memset",
            )?;
        }
        stream.synchronize().map_err(gpu("sync"))?;
        let x = DevBuf::new(ctx, cfg.chunk * cfg.action_dim * 4)?;
        let partial = DevBuf::new(ctx, cfg.dec_blocks as usize * 4)?;
        let state = DevBuf::new(ctx, cfg.action_dim * 4)?;
        Ok(SyntheticStages {
            cfg,
            kernels,
            obs,
            prefix,
            w,
            x,
            partial,
            state,
            obs_len,
            _lock: Mutex::new(()),
        })
    }

    /// A synthetic observation: `views` images of pseudo-random pixels from `seed`.
    pub fn observation(&self, seed: u64) -> ModelInput {
        let px = 224 * 224 * 3;
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut images = Vec::new();
        for _ in 0..self.cfg.views {
            let mut v = Vec::with_capacity(px);
            for _ in 0..px {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                v.push(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0);
            }
            images.push(Some(v));
        }
        ModelInput {
            images,
            tokens: vec![2, 100, 108],
            state: vec![0.0; self.cfg.action_dim],
        }
    }
}

impl StageEngine for SyntheticStages {
    fn name(&self) -> String {
        "synthetic".into()
    }
    fn prefix_slots(&self) -> usize {
        self.obs.len()
    }
    fn action_len(&self) -> usize {
        self.cfg.chunk * self.cfg.action_dim
    }
    fn upload_observation(
        &self,
        stream: &Arc<CudaStream>,
        slot: usize,
        input: &ModelInput,
    ) -> Result<()> {
        let mut flat = Vec::with_capacity(self.obs_len);
        for img in input.images.iter().take(self.cfg.views) {
            match img {
                Some(v) => flat.extend_from_slice(v),
                None => flat.extend(std::iter::repeat_n(0.0f32, 224 * 224 * 3)),
            }
        }
        flat.resize(self.obs_len, 0.0);
        self.obs[slot].upload(stream, &flat)
    }
    fn enqueue_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<()> {
        let n = self.obs_len as i32;
        let grid = (self.obs_len as u32).div_ceil(256);
        for l in 0..self.cfg.enc_layers {
            let mut src = if l == 0 {
                self.obs[slot].ptr
            } else {
                self.prefix[slot].ptr
            };
            let mut dst = self.prefix[slot].ptr;
            let mut nn = n;
            let mut iters = self.cfg.enc_iters;
            let mut salt = l as f32 * 1e-3;
            unsafe {
                runtime_kernels::launch(
                    self.kernels.enc_layer,
                    stream,
                    grid,
                    256,
                    &mut [
                        &mut src as *mut _ as *mut c_void,
                        &mut dst as *mut _ as *mut c_void,
                        &mut nn as *mut _ as *mut c_void,
                        &mut iters as *mut _ as *mut c_void,
                        &mut salt as *mut _ as *mut c_void,
                    ],
                )?;
            }
        }
        Ok(())
    }
    fn upload_decoder_inputs(
        &self,
        stream: &Arc<CudaStream>,
        state: &[f32],
        noise: &[f32],
    ) -> Result<()> {
        if noise.len() != self.action_len() {
            return Err(Error::Input(format!(
                "noise has {} values, expected {}",
                noise.len(),
                self.action_len()
            )));
        }
        let mut st = state.to_vec();
        st.resize(self.cfg.action_dim, 0.0);
        self.state.upload(stream, &st)?;
        self.x.upload(stream, noise)
    }
    fn enqueue_decoder(&self, stream: &Arc<CudaStream>, prefix_slot: usize) -> Result<()> {
        let words = (self.cfg.dec_weight_bytes / 4) as i64;
        let per_layer = (words / self.cfg.dec_layers as i64) / (4 * self.cfg.dec_blocks as i64)
            * (4 * self.cfg.dec_blocks as i64);
        let p_per_layer = (self.obs_len / self.cfg.dec_layers) as i32;
        let x_len = self.action_len() as i32;
        let nb = self.cfg.dec_blocks as i32;
        for step in 0..self.cfg.dec_steps {
            for l in 0..self.cfg.dec_layers {
                let mut w = self.w.ptr + (l as i64 * per_layer * 4) as u64;
                let mut wl = per_layer;
                let mut p = self.prefix[prefix_slot].ptr + (l as u64 * p_per_layer as u64 * 4);
                let mut pl = p_per_layer;
                let mut x = self.x.ptr;
                let mut xl = x_len;
                let mut part = self.partial.ptr;
                unsafe {
                    runtime_kernels::launch(
                        self.kernels.dec_reduce,
                        stream,
                        self.cfg.dec_blocks,
                        256,
                        &mut [
                            &mut w as *mut _ as *mut c_void,
                            &mut wl as *mut _ as *mut c_void,
                            &mut p as *mut _ as *mut c_void,
                            &mut pl as *mut _ as *mut c_void,
                            &mut x as *mut _ as *mut c_void,
                            &mut xl as *mut _ as *mut c_void,
                            &mut part as *mut _ as *mut c_void,
                        ],
                    )?;
                    let mut nbv = nb;
                    let mut st = self.state.ptr;
                    let mut sl = self.cfg.action_dim as i32;
                    let mut dt = 0.1f32 / self.cfg.dec_layers as f32 * (1.0 + step as f32 * 0.01);
                    runtime_kernels::launch(
                        self.kernels.dec_update,
                        stream,
                        (x_len as u32).div_ceil(256),
                        256,
                        &mut [
                            &mut x as *mut _ as *mut c_void,
                            &mut xl as *mut _ as *mut c_void,
                            &mut part as *mut _ as *mut c_void,
                            &mut nbv as *mut _ as *mut c_void,
                            &mut st as *mut _ as *mut c_void,
                            &mut sl as *mut _ as *mut c_void,
                            &mut dt as *mut _ as *mut c_void,
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }
    fn download_actions(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        self.x.download(stream, self.action_len())
    }
}
