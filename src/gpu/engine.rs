//! The CUDA π0 engine: prefix slots (images + prompt → per-layer K/V), decoder slots (state +
//! noise → actions via 10 Euler steps of the action expert), each stage enqueued on any stream
//! and capturable as a CUDA graph. Slots own all their scratch memory and cuBLASLt workspace, so
//! the encoder of one slot and the decoder of another can run concurrently on different streams.
//! This file holds the slots, uploads, graphs and `forward`; the stages' code is in encoder.rs
//! (SigLIP, Gemma-2B over the prefix), decoder.rs (the Euler steps of the action expert) and
//! gemma.rs (the Gemma block both use).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream};

use super::device::{self, copy_2d, cu, drv, dtoh_async, htod_async, DBuf, Kernels, Pinned, A, K};
use super::lt::{Gemm, LtCache, LtHandle};
use super::weights::{GemmaLayer, RandomSource, WeightSource, Weights};
use super::{GpuOptions, Graph, StageGraph};
use crate::engine::{noise_chunk, ModelInput, PolicyEngine};
use crate::error::{Error, Result};
use crate::model::checkpoint::LoadedCheckpoint;
use crate::model::config::{GemmaConfig, ModelConfig};

const WORKSPACE: usize = 32 << 20;

#[path = "expert_layer.rs"]
mod expert_layer;
use expert_layer::WeightStreaming;
#[path = "decoder.rs"]
mod decoder;
#[path = "encoder.rs"]
mod encoder;
#[path = "flash.rs"]
mod flash;
#[path = "gemma.rs"]
mod gemma;
use flash::{AttentionProblem, FusedAttention};

/// Device addresses of the activations one Gemma block reads and writes (see `gemma_layer`).
struct GemmaBufs {
    /// f32 residual stream.
    x: u64,
    xn: u64,
    qkv: u64,
    q: u64,
    s: u64,
    p: u64,
    attn: u64,
    gu: u64,
    h: u64,
}

/// Where a block's tokens sit in its layer's K/V cache and which keys they see.
struct LayerAttention {
    /// This layer's K and V (row 0 = the first prefix token).
    k: u64,
    v: u64,
    /// Cache row (and RoPE position) of the block's first token.
    first_row: usize,
    /// Valid keys; `lds` is that count padded to a multiple of 8.
    keys: usize,
    lds: usize,
    /// Block-causal mask: the first `mask_heads` query rows see only `mask_keys` keys.
    mask_heads: usize,
    mask_keys: usize,
    /// RoPE cos/sin table.
    rope: u64,
}

/// cos/sin of pos / base^(2i/d) for pos < positions, i < d/2, computed in f64 (float2 pairs).
fn rope_table(positions: usize, d: usize, base: f32) -> Result<DBuf> {
    let half = d / 2;
    let mut t = Vec::with_capacity(positions * half * 2);
    for pos in 0..positions {
        for i in 0..half {
            let ts = (base as f64).powf(2.0 * i as f64 / d as f64);
            let a = pos as f64 / ts;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    DBuf::from_slice(&t)
}

/// The RoPE + K/V-write kernel for `rows` token rows: rope_rows_k (one thread per 4 rotated
/// pairs, float4 loads) for many rows (the prefix), rope_part_k (a block per row and head) for
/// few (the suffix: the vectorised kernel's fewer blocks made the decoder 0.11 ms slower).
fn rope_kernel(rows: usize) -> K {
    if rows >= 128 {
        K::RopeRows
    } else {
        K::RopePart
    }
}

/// Launches `kernel` (rope_kernel) on the fp32 q|k|v partials `part` = (pointer, splits) of
/// `shape` = (rows, query heads, head dim, position of the first row) with one K/V head:
/// rotated q into `out.0` [rows][heads][hd], k and v rows into `out.1` / `out.2`.
#[allow(clippy::too_many_arguments)]
fn launch_rope(
    kernels: &Kernels,
    s: sys::CUstream,
    pdl: bool,
    kernel: K,
    part: (u64, usize),
    out: (u64, u64, u64),
    (rows, heads, hd, pos0): (usize, usize, usize, usize),
    table: u64,
) -> Result<()> {
    let grid = match kernel {
        K::RopeRows => {
            let units = (heads + 1) * hd / 8 + hd / 4;
            (rows as u32, units.div_ceil(128) as u32, 1)
        }
        _ => (rows as u32, (heads + 2) as u32, 1),
    };
    kernels.launch_ex(
        kernel,
        grid,
        128,
        0,
        s,
        &[
            A::P(part.0),
            A::I(part.1 as i32),
            A::I(rows as i32),
            A::P(out.0),
            A::P(out.1),
            A::P(out.2),
            A::I(heads as i32),
            A::I(1),
            A::I(hd as i32),
            A::I(pos0 as i32),
            A::P(table),
        ],
        pdl,
    )
}

/// Binds the context `stream` belongs to: the engine's own, or an MPS execution-affinity
/// context, whose SM limit then applies to every launch (cuBLASLt's too).
fn bind_stream_context(stream: &Arc<CudaStream>) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| Error::Gpu(format!("binding the stream's context: {e:?}")))
}

/// The whole-group SMs of a green partition of `sms` SMs on a device that leaves `left_over`
/// SMs outside its groups of `granularity`: None for a partition of whole groups only.
fn whole_group_sms(sms: u32, granularity: u32, left_over: u32) -> Option<u32> {
    (left_over > 0 && sms % granularity.max(1) != 0 && sms > left_over).then(|| sms - left_over)
}

/// SMs the work of `stream` may run on: its green context's share, its MPS context's
/// execution affinity (that context bound), or the whole device. Grids sized to this stay in
/// one wave on a partition.
fn stream_sms(stream: &Arc<CudaStream>, device_sms: usize) -> usize {
    let green =
        device::stream_green_ctx(stream.cu_stream()).and_then(|g| device::green_ctx_sms(g).ok());
    green
        .or_else(|| device::bound_context_sm_affinity().ok().filter(|&n| n > 0))
        .map_or(device_sms, |n| n as usize)
        .clamp(1, device_sms)
}

/// The process-unique ID of the bound context. Not its pointer: a destroyed context's
/// pointer may be handed out again for a new one (a re-made MPS split), and what was keyed
/// by it (events, cuBLASLt handles) belongs to the old context.
fn current_context() -> Result<u64> {
    let mut c = std::ptr::null_mut();
    let mut id = 0u64;
    // SAFETY: plain queries; cuCtxGetId is given the non-null current context.
    unsafe {
        cu(sys::cuCtxGetCurrent(&mut c), "cuCtxGetCurrent")?;
        if c.is_null() {
            return Err(Error::Gpu("no CUDA context bound to this thread".into()));
        }
        cu(sys::cuCtxGetId(c, &mut id), "cuCtxGetId")?;
    }
    Ok(id)
}

/// Contexts with a cuBLASLt handle kept before the map is pruned (each re-made MPS split
/// brings two new ones; handles in use live on through their Arcs).
const MAX_LT_HANDLES: usize = 16;

/// Threads of a one-block-per-row norm kernel: 4 values each, whole warps.
pub(super) fn row_threads(width: usize) -> u32 {
    ((width / 4).div_ceil(32) * 32) as u32
}

/// A split rule knob: `balanced` or `pow2` (powers of two); None when unset.
fn split_rule(name: &str) -> Option<super::skinny::SplitRule> {
    match std::env::var(name).as_deref() {
        Ok("balanced") => Some(super::skinny::SplitRule::Balanced),
        Ok("pow2") => Some(super::skinny::SplitRule::Pow2),
        _ => None,
    }
}

/// A numeric tuning knob from the environment (benchmarks only).
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn r8(x: usize) -> usize {
    x.div_ceil(8) * 8
}

/// Static dimensions derived from the config and the options.
#[derive(Clone, Debug)]
pub(crate) struct Dims {
    pub tpv: usize,
    pub max_views: usize,
    pub max_prompt: usize,
    pub max_chunk: usize,
    /// K/V cache rows per layer (prefix slot / decoder slot), padded to a multiple of 8.
    pub pmax_pad: usize,
    pub kvmax_pad: usize,
    pub heads: usize,
    pub hd: usize,
    pub qkv_l: usize,
    pub qkv_e: usize,
}

struct Event(sys::CUevent);
unsafe impl Send for Event {}
unsafe impl Sync for Event {}
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate.
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}
impl Event {
    fn new() -> Result<Self> {
        let mut e = std::ptr::null_mut();
        // SAFETY: plain creation.
        cu(
            unsafe {
                sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
            },
            "cuEventCreate",
        )?;
        Ok(Event(e))
    }
    fn record(&self, s: sys::CUstream) -> Result<()> {
        // SAFETY: valid event and stream.
        cu(unsafe { sys::cuEventRecord(self.0, s) }, "cuEventRecord")
    }
    fn sync(&self) -> Result<()> {
        // SAFETY: valid event.
        cu(
            unsafe { sys::cuEventSynchronize(self.0) },
            "cuEventSynchronize",
        )
    }
}

/// Fence of a slot's pinned staging buffer: the event recorded after the last copy out of it.
/// Events belong to a context and the stages may run in MPS contexts, so the event is made
/// anew in the context of the stream it is recorded on when that changes.
struct StagingFence(Mutex<Option<(u64, Event)>>);

impl StagingFence {
    fn new() -> Self {
        StagingFence(Mutex::new(None))
    }
    /// Waits until the last recorded copy has finished.
    fn sync(&self) -> Result<()> {
        match &*self.0.lock().unwrap() {
            Some((_, e)) => e.sync(),
            None => Ok(()),
        }
    }
    /// Records on `s`, whose context is bound to this thread.
    fn record(&self, s: sys::CUstream) -> Result<()> {
        let ctx = current_context()?;
        let mut slot = self.0.lock().unwrap();
        if slot.as_ref().is_none_or(|(c, _)| *c != ctx) {
            if let Some((_, old)) = slot.take() {
                old.sync()?;
            }
            *slot = Some((ctx, Event::new()?));
        }
        slot.as_ref().unwrap().1.record(s)
    }
}

/// One prefix (encoder) slot: inputs, scratch, the K/V cache it produces.
struct PrefixSlot {
    img: DBuf,
    tokens: DBuf,
    staging: Pinned,
    staged: StagingFence,
    patches: DBuf,
    xv: DBuf,
    xvn: DBuf,
    qkv_v: DBuf,
    s_v: DBuf,
    p_v: DBuf,
    attn_v: DBuf,
    h_v: DBuf,
    xl: DBuf,
    xln: DBuf,
    qkv_l: DBuf,
    q_l: DBuf,
    s_l: DBuf,
    p_l: DBuf,
    attn_l: DBuf,
    gu_l: DBuf,
    h_l: DBuf,
    k: DBuf,
    v: DBuf,
    _ws: DBuf,
    /// Valid views and prompt tokens of the uploaded observation.
    nv: AtomicUsize,
    ntok: AtomicUsize,
    lt: Mutex<LtCache>,
}

/// One decoder slot: state/noise in, actions out, its own scratch and suffix K/V.
struct DecoderSlot {
    x_t: DBuf,
    state: DBuf,
    staging: Pinned,
    staged: StagingFence,
    state_row: DBuf,
    x: DBuf,
    xn: DBuf,
    hin: DBuf,
    qkv: DBuf,
    q: DBuf,
    s: DBuf,
    p: DBuf,
    attn: DBuf,
    gu: DBuf,
    h: DBuf,
    k: DBuf,
    v: DBuf,
    /// Split-K partial sums of the weight-streaming GEMMs.
    part: DBuf,
    _ws: DBuf,
    chunk: AtomicUsize,
    lt: Mutex<LtCache>,
}

/// Where every kernel of ours that begins with pdl_wait (norms, RoPE, softmax, GELU·up,
/// embed, action-in, out/Euler, vision attention) is launched as a programmatic dependent.
/// H100 (docs/gpu-notes.md v24): on the pipeline's stage streams it took the green 50-50
/// frame from 11.62 / 11.65 to 11.24 / 11.24 ms, while `forward` on the engine's own stream
/// lost 0.02-0.05 ms with it, so that stream keeps it to the decoder's weight-GEMM chain.
/// `PI0_PDL=decoder` / `PI0_PDL=all`: one scope everywhere (comparison knobs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PdlScope {
    DecoderChain,
    OtherStreams,
    AllStreams,
}

impl PdlScope {
    /// Whether an enqueue on `stream` takes every kernel (`own`: the engine's stream).
    fn covers(self, stream: &Arc<CudaStream>, own: &Arc<CudaStream>) -> bool {
        match self {
            PdlScope::DecoderChain => false,
            PdlScope::AllStreams => true,
            PdlScope::OtherStreams => stream.cu_stream() != own.cu_stream(),
        }
    }
}

/// π0 on one NVIDIA GPU.
pub struct Pi0Cuda {
    pub(crate) cfg: ModelConfig,
    pub(crate) opts: GpuOptions,
    pub(crate) d: Dims,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// cuBLASLt handles by CUDA context ID (the primary one, and each MPS execution-affinity
    /// context the stages run in).
    lth: Mutex<HashMap<u64, Arc<LtHandle>>>,
    /// The engine's own context (its handle is never pruned).
    own_ctx: u64,
    w: Weights,
    pslots: Vec<PrefixSlot>,
    dslots: Vec<DecoderSlot>,
    graphs: Mutex<HashMap<GraphKey, StageGraph>>,
    /// RoPE cos/sin tables [position][head_dim / 2] (float2) for the LLM and the expert.
    rope_llm: DBuf,
    rope_exp: DBuf,
    /// Weight-streaming decoder GEMMs (None: cuBLASLt).
    wstream: Option<WeightStreaming>,
    /// Fused attention kernels (None: cuBLASLt GEMMs around a softmax kernel).
    fused: Option<FusedAttention>,
    /// Which streams get every kernel of ours that starts with pdl_wait as a programmatic
    /// dependent (beyond the decoder's weight-GEMM chain, which always is).
    pdl_scope: PdlScope,
    /// Multiprocessors of the whole device.
    device_sms: usize,
    /// (group size, left-over SMs) of the device's green split; None where there is none or
    /// `PI0_LT_CLUSTER_GROUPS=off` (`whole_group_sms`).
    green_left_over: Option<(u32, u32)>,
    /// The LLM's MLP through the fused gate|up + GELU·up kernel (`GpuOptions::fused_llm_mlp`).
    fused_llm_mlp: bool,
    name: String,
}

impl std::fmt::Debug for Pi0Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pi0Cuda")
            .field("device", &self.name)
            .field("opts", &self.opts)
            .finish()
    }
}

/// (stage, slot, decoder slot, views or prefix length, prompt tokens or chunk).
type GraphKey = (u8, usize, usize, usize, usize);

/// Timings of one `forward_timed` call in milliseconds: GPU time of each part (events on the
/// engine's stream) and the host's wall time of the whole call.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    /// Inputs copied to the GPU (images, tokens, state, noise).
    pub upload_ms: f32,
    pub encoder_ms: f32,
    pub decoder_ms: f32,
    /// Actions copied back.
    pub download_ms: f32,
    /// The whole call on the host (input checks and staging included): what `forward` costs.
    pub wall_ms: f32,
}

impl StageTimes {
    /// Wall time not spent by the GPU on the four parts: input checks and staging on the
    /// host, graph launches, and waking up after the last copy.
    pub fn host_ms(&self) -> f32 {
        self.wall_ms - (self.upload_ms + self.encoder_ms + self.decoder_ms + self.download_ms)
    }
}

impl Pi0Cuda {
    /// Uploads the checkpoint's weights (folded, bf16) to GPU `opts.device`, compiles/loads the
    /// kernels and allocates `opts.prefix_slots` prefix slots and `opts.decoder_slots` decoder
    /// slots sized for the maxima in `opts`.
    pub fn new(loaded: &LoadedCheckpoint, opts: GpuOptions) -> Result<Self> {
        Self::with_source(&loaded.config, loaded, opts)
    }

    /// Full engine on seeded random weights (benchmarks without a checkpoint).
    pub fn random(cfg: &ModelConfig, seed: u64, opts: GpuOptions) -> Result<Self> {
        Self::with_source(cfg, &RandomSource::new(cfg, seed), opts)
    }

    pub fn with_source(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        opts: GpuOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        super::probe::check_libraries()?;
        let ctx = drv(
            CudaContext::new(opts.device),
            &format!("opening GPU {}", opts.device),
        )?;
        let (major, minor) = drv(ctx.compute_capability(), "compute capability")?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if major < 8 {
            return Err(Error::Gpu(format!(
                "{name} has compute capability {major}.{minor}; pi0_mps needs 8.0 or newer (bf16 tensor cores)"
            )));
        }
        if cfg.llm.num_kv_heads != 1 {
            return Err(Error::Gpu(
                "the CUDA engine supports num_kv_heads = 1 (MQA) only".into(),
            ));
        }
        if opts.max_views == 0
            || opts.max_chunk == 0
            || opts.prefix_slots == 0
            || opts.decoder_slots == 0
        {
            return Err(Error::Parameter {
                name: "GpuOptions".into(),
                reason: "sizes and slot counts must be > 0".into(),
            });
        }
        let widths = [cfg.vision.width, cfg.llm.width, cfg.expert.width];
        if widths.iter().any(|&w| w % 4 != 0 || w > 4096) {
            return Err(Error::Gpu(format!(
                "model widths {widths:?}: the norm kernels need multiples of 4 up to 4096"
            )));
        }
        if cfg.action_dim > 128 {
            return Err(Error::Gpu(
                "action_dim > 128 is not supported by the action kernels".into(),
            ));
        }
        ctx.bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e:?}")))?;
        let stream = drv(ctx.new_stream(), "creating a stream")?;
        let kernels = Kernels::load(major, minor)?;
        let own_ctx = current_context()?;
        let lth = Mutex::new(HashMap::from([(own_ctx, Arc::new(LtHandle::new()?))]));
        let v = &cfg.vision;
        let tpv = v.tokens_per_view();
        let max_views = opts.max_views.min(cfg.num_views);
        let max_prompt = opts.max_prompt_len.min(cfg.max_token_len);
        let max_chunk = opts.max_chunk;
        let pmax = max_views * tpv + max_prompt;
        let kvmax = pmax + max_chunk + 1;
        let heads = cfg.llm.num_heads;
        let hd = cfg.llm.head_dim;
        let d = Dims {
            tpv,
            max_views,
            max_prompt,
            max_chunk,
            pmax_pad: r8(pmax),
            kvmax_pad: r8(kvmax),
            heads,
            hd,
            qkv_l: (heads + 2) * hd,
            qkv_e: (heads + 2) * hd,
        };
        let streaming =
            opts.weight_streaming && Self::weight_streaming_fits(cfg, &d, max_chunk + 1);
        if opts.weight_streaming && !streaming {
            log::info!("decoder GEMMs on cuBLASLt: the weight-streaming kernel does not cover this expert / chunk size");
        }
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(132) as usize;
        let wstream = streaming.then(|| {
            WeightStreaming {
                // PI0_WGEMM_SMS, PI0_WGEMM_SMS_PART, PI0_WGEMM_SPLITS: benchmark knobs.
                plan_sms: env_usize("PI0_WGEMM_SMS").unwrap_or(sms),
                partition_plan_sms: env_usize("PI0_WGEMM_SMS_PART"),
                // Balanced measured slower on the whole GPU (docs/gpu-notes.md v29); on
                // partitions faster at 64-68 SMs and slower at 40, 56 and 92 (v30), so the
                // partition default depends on the SM count (`WeightStreaming::on_partition`).
                rule: split_rule("PI0_WGEMM_SPLITS").unwrap_or(super::skinny::SplitRule::Pow2),
                partition_rule: split_rule("PI0_WGEMM_SPLITS_PART"),
                pdl: opts.pdl && major >= 9,
                partition_sms: None,
                // PI0_WGEMM_RING=4: always the 4-stage ring (a benchmark comparison knob).
                shallow_ring: std::env::var("PI0_WGEMM_RING").map_or(true, |v| v != "4"),
                sm_smem: super::skinny::sm_smem(&ctx),
                // PI0_WGEMM_L2=normal: no L2 eviction hint on the weight stream (comparison knob).
                evict_first: std::env::var("PI0_WGEMM_L2").map_or(true, |v| v != "normal"),
            }
        });
        if wstream.is_some() {
            for (k, bytes) in super::skinny::variants() {
                kernels.set_max_smem(k, bytes as i32, ctx.cu_device())?;
            }
        }
        let fusable = [v.head_dim, hd]
            .iter()
            .all(|&d| flash::kernel_for(d).is_some());
        if opts.fused_attention && !fusable {
            log::info!("attention on cuBLASLt: no fused kernel for these head dims");
        }
        let fused = (opts.fused_attention && fusable).then_some(FusedAttention {
            target_ctas: sms,
            // Thread-block clusters merge the key splits; before Hopper, one CTA per row tile.
            // PI0_FLASH_SPLITS: a tuning knob for benchmarks.
            max_splits: if major >= 9 {
                env_usize("PI0_FLASH_SPLITS").unwrap_or(8)
            } else {
                1
            },
            gemma: opts.fused_gemma_attention,
        });
        if fused.is_some() {
            flash::prepare(&kernels, &[v.head_dim, hd], ctx.cu_device())?;
        }
        // PI0_EXPERT_F16=0: bf16 everywhere (a comparison knob).
        let expert_f16 =
            opts.expert_f16 && std::env::var("PI0_EXPERT_F16").map_or(true, |v| v != "0");
        let w = Weights::load(cfg, src, streaming, expert_f16)?;
        // PI0_LLM_MLP=fused / =cublaslt: the fused gate|up kernel on or off (a study knob).
        let fused_llm_mlp_asked = match std::env::var("PI0_LLM_MLP").as_deref() {
            Ok("fused") => true,
            Ok("cublaslt") => false,
            _ => opts.fused_llm_mlp,
        };
        let fused_llm_mlp = fused_llm_mlp_asked && super::gateup::supported(&kernels);
        if fused_llm_mlp_asked && !fused_llm_mlp {
            log::warn!(
                "fused LLM MLP asked for, but its kernel needs compute capability 9.0 (this GPU: {major}.{minor}): cuBLASLt instead"
            );
        }
        if super::gateup::supported(&kernels) {
            // Also for `study_llm_gate_up`, which runs the kernel whether or not it is on.
            super::gateup::prepare(&kernels, ctx.cu_device())?;
        }
        if fused_llm_mlp {
            log::info!("LLM MLP: fused gate|up + GELU·up kernel");
        }
        let smem_row = 4 * cfg.vision.width.max(cfg.llm.width).max(cfg.expert.width) as i32;
        if smem_row > 48 * 1024 {
            kernels.set_max_smem(K::OutEuler, smem_row, ctx.cu_device())?;
        }

        let bf = 2usize;
        let tv = max_views * tpv;
        let (wv, fv) = (v.width, v.mlp_dim);
        let (wl, fl) = (cfg.llm.width, cfg.llm.mlp_dim);
        let (we, fe) = (cfg.expert.width, cfg.expert.mlp_dim);
        // Images are staged and sent as bf16 (rounded on the host, see `upload_observation`).
        let img_bytes = max_views * v.image_size * v.image_size * 3 * 2;
        let mut pslots = Vec::new();
        for _ in 0..opts.prefix_slots {
            let ws = DBuf::new(WORKSPACE)?;
            let lt = LtCache::new(ws.ptr, WORKSPACE);
            pslots.push(PrefixSlot {
                img: DBuf::new(img_bytes)?,
                tokens: DBuf::new(max_prompt.max(1) * 4)?,
                staging: Pinned::new(img_bytes + max_prompt.max(1) * 4)?,
                staged: StagingFence::new(),
                patches: DBuf::new(tv * w.pd_pad * bf)?,
                xv: DBuf::new(tv * wv * 4)?,
                xvn: DBuf::new(tv * wv * bf)?,
                qkv_v: DBuf::new(tv * 3 * wv * bf)?,
                s_v: DBuf::new(max_views * v.num_heads * tpv * tpv * 4)?,
                p_v: DBuf::new(max_views * v.num_heads * tpv * tpv * bf)?,
                attn_v: DBuf::new(tv * wv * bf)?,
                h_v: DBuf::new(tv * fv * bf)?,
                xl: DBuf::new(pmax * wl * 4)?,
                xln: DBuf::new(pmax * wl * bf)?,
                qkv_l: DBuf::new(pmax * d.qkv_l * 4)?,
                q_l: DBuf::new(pmax * heads * hd * bf)?,
                s_l: DBuf::new(pmax * heads * r8(pmax) * 4)?,
                p_l: DBuf::new(pmax * heads * r8(pmax) * bf)?,
                attn_l: DBuf::new(pmax * heads * hd * bf)?,
                gu_l: DBuf::new(pmax * 2 * fl * bf)?,
                h_l: DBuf::new(pmax * fl * bf)?,
                k: DBuf::new(cfg.llm.depth * r8(pmax) * hd * bf)?,
                v: DBuf::new(cfg.llm.depth * r8(pmax) * hd * bf)?,
                _ws: ws,
                nv: AtomicUsize::new(0),
                ntok: AtomicUsize::new(0),
                lt: Mutex::new(lt),
            });
        }
        let a = cfg.action_dim;
        let rows = max_chunk + 1;
        let part_bytes = wstream
            .as_ref()
            .map_or(4, |ws| Self::partial_bytes(cfg, &d, ws, rows));
        let mut dslots = Vec::new();
        for _ in 0..opts.decoder_slots {
            let ws = DBuf::new(WORKSPACE)?;
            let lt = LtCache::new(ws.ptr, WORKSPACE);
            dslots.push(DecoderSlot {
                x_t: DBuf::new(max_chunk * a * 4)?,
                state: DBuf::new(a * 4)?,
                staging: Pinned::new((max_chunk + 1) * a * 4)?,
                staged: StagingFence::new(),
                state_row: DBuf::new(we * 4)?,
                x: DBuf::new(rows * we * 4)?,
                xn: DBuf::new(rows * we * bf)?,
                qkv: DBuf::new(rows * d.qkv_e * 4)?,
                gu: DBuf::new(rows * 2 * fe * bf)?,
                hin: DBuf::new(max_chunk * we * bf)?,
                q: DBuf::new(rows * heads * hd * bf)?,
                s: DBuf::new(rows * heads * r8(kvmax) * 4)?,
                p: DBuf::new(rows * heads * r8(kvmax) * bf)?,
                attn: DBuf::new(rows * heads * hd * bf)?,
                h: DBuf::new(rows * fe * bf)?,
                k: DBuf::new(cfg.expert.depth * r8(kvmax) * hd * bf)?,
                v: DBuf::new(cfg.expert.depth * r8(kvmax) * hd * bf)?,
                part: DBuf::new(part_bytes)?,
                _ws: ws,
                chunk: AtomicUsize::new(0),
                lt: Mutex::new(lt),
            });
        }
        let rope_llm = rope_table(kvmax, hd, cfg.llm.rope_max_wavelength)?;
        let rope_exp = rope_table(kvmax, hd, cfg.expert.rope_max_wavelength)?;
        let pdl_scope = match std::env::var("PI0_PDL").as_deref() {
            _ if !opts.pdl || major < 9 => PdlScope::DecoderChain,
            Ok("decoder") => PdlScope::DecoderChain,
            Ok("all") => PdlScope::AllStreams,
            _ => PdlScope::OtherStreams,
        };
        let green_left_over = if std::env::var("PI0_LT_CLUSTER_GROUPS").is_ok_and(|v| v == "off") {
            None
        } else {
            device::green_left_over_sms(ctx.cu_device())
        };
        Ok(Pi0Cuda {
            rope_llm,
            rope_exp,
            wstream,
            fused,
            pdl_scope,
            cfg: cfg.clone(),
            opts,
            d,
            ctx,
            stream,
            kernels,
            lth,
            own_ctx,
            w,
            pslots,
            dslots,
            graphs: Mutex::new(HashMap::new()),
            device_sms: sms,
            green_left_over,
            fused_llm_mlp,
            name,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The engine's own stream (used by `forward`).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn device_name(&self) -> &str {
        &self.name
    }
    pub fn kernels_from_cache(&self) -> bool {
        self.kernels.from_cache
    }
    /// NVRTC target of the loaded kernels (sm_90a on Hopper) and their disk-cache file.
    pub fn kernel_target(&self) -> (&str, Option<&std::path::Path>) {
        (&self.kernels.arch, self.kernels.cache_file.as_deref())
    }
    /// t of each flow step (1.0, 0.9, ... accumulated in f32 like openpi).
    pub fn timesteps(&self) -> &[f32] {
        &self.w.times
    }
    pub fn prefix_slots(&self) -> usize {
        self.pslots.len()
    }
    pub fn decoder_slots(&self) -> usize {
        self.dslots.len()
    }
    /// Prefix length (valid image tokens + prompt tokens) currently held by `slot`.
    pub fn prefix_len(&self, slot: usize) -> usize {
        let p = &self.pslots[slot];
        p.nv.load(Ordering::Acquire) * self.d.tpv + p.ntok.load(Ordering::Acquire)
    }
    /// Chunk size currently uploaded to decoder slot `dec`.
    pub fn chunk(&self, dec: usize) -> usize {
        self.dslots[dec].chunk.load(Ordering::Acquire)
    }

    /// SMs of the partition `stream` runs in, None on the whole GPU (context bound).
    fn partition_sms(&self, stream: &Arc<CudaStream>) -> Option<u32> {
        let sms = stream_sms(stream, self.device_sms);
        (sms < self.device_sms).then_some(sms as u32)
    }

    /// For a green partition of `sms` SMs that holds the device's left-over SMs (its count is
    /// not a multiple of the group size), the SMs of its whole groups: the encoder's GEMMs with
    /// clusters of 4+ CTAs are planned for these (lt.rs `cluster_sm_target`; BENCHMARKS.md,
    /// sixteenth and seventeenth sessions). `PI0_LT_CLUSTER_GROUPS=off` turns it off.
    fn whole_group_sms(&self, stream: &Arc<CudaStream>, sms: Option<u32>) -> Option<u32> {
        let (granularity, left_over) = self.green_left_over?;
        device::stream_green_ctx(stream.cu_stream())?;
        whole_group_sms(sms?, granularity, left_over)
    }

    fn pslot(&self, slot: usize) -> Result<&PrefixSlot> {
        self.pslots.get(slot).ok_or_else(|| {
            Error::Gpu(format!(
                "prefix slot {slot} does not exist ({} slots)",
                self.pslots.len()
            ))
        })
    }
    fn dslot(&self, dec: usize) -> Result<&DecoderSlot> {
        self.dslots.get(dec).ok_or_else(|| {
            Error::Gpu(format!(
                "decoder slot {dec} does not exist ({} slots)",
                self.dslots.len()
            ))
        })
    }

    /// The cuBLASLt handle of the context bound to this thread (made on first use there).
    fn lt_handle(&self) -> Result<Arc<LtHandle>> {
        let ctx = current_context()?;
        let mut map = self.lth.lock().unwrap();
        if let Some(h) = map.get(&ctx) {
            return Ok(h.clone());
        }
        if map.len() >= MAX_LT_HANDLES {
            map.retain(|&c, _| c == self.own_ctx);
        }
        let h = Arc::new(LtHandle::new()?);
        map.insert(ctx, h.clone());
        Ok(h)
    }

    /// Launches one of our kernels; with `pdl_all` (the enqueue's `LtCache::pdl_all`) the ones
    /// that begin with pdl_wait join the programmatic chain.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        s: sys::CUstream,
        pdl_all: bool,
        k: K,
        grid: u32,
        block: u32,
        smem: u32,
        args: &[A],
    ) -> Result<()> {
        // These kernels begin with pdl_wait (kernels/common.cuh), so they may join the
        // programmatic chain: each launches while the kernel before it drains.
        let pdl = pdl_all
            && matches!(
                k,
                K::LayerNorm | K::Softmax | K::Embed | K::GeluMul | K::ActionIn | K::OutEuler
            );
        self.kernels
            .launch_ex(k, (grid, 1, 1), block, smem, s, args, pdl)
    }

    // ------------------------------------------------------------------ inputs / outputs

    /// Copies an observation (valid views, prompt tokens) into prefix slot `slot` on `stream`.
    /// Masked views are dropped (exactly equivalent: they neither attend nor advance positions).
    pub fn upload_observation(
        &self,
        stream: &Arc<CudaStream>,
        slot: usize,
        input: &ModelInput,
    ) -> Result<()> {
        // Image values are checked while they are copied to the staging buffer (below).
        input.validate_shapes(&self.cfg)?;
        let p = self.pslot(slot)?;
        let views: Vec<(usize, &Vec<f32>)> = input
            .images
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
            .collect();
        if views.len() > self.d.max_views {
            return Err(Error::Input(format!(
                "{} valid views, the engine was built for {}",
                views.len(),
                self.d.max_views
            )));
        }
        if input.tokens.len() > self.d.max_prompt {
            return Err(Error::Input(format!(
                "{} prompt tokens, the engine was built for {}",
                input.tokens.len(),
                self.d.max_prompt
            )));
        }
        bind_stream_context(stream)?;
        p.staged.sync()?; // the previous upload from the staging buffer has finished
        let px = views.first().map(|v| v.1.len()).unwrap_or(0);
        let base = p.staging.as_mut_ptr();
        let s = stream.cu_stream();
        // SAFETY: staging holds max_views images + max_prompt tokens; sizes checked above.
        unsafe {
            // Each view goes out as soon as it is staged: its copy to the GPU overlaps the
            // staging of the next one. A bad value ends the upload with an error: the slot
            // keeps its view and token counts, and the views already copied are never encoded
            // (an encode always follows a complete upload).
            for (i, (slot_index, v)) in views.iter().enumerate() {
                let dst = std::slice::from_raw_parts_mut(base.add(i * px * 2) as *mut u16, px);
                if !crate::engine::copy_finite_bf16(v, dst) {
                    // Views already sent still read the staging buffer: fence them.
                    p.staged.record(s)?;
                    return Err(crate::engine::non_finite_view(*slot_index));
                }
                htod_async(
                    p.img.ptr + (i * px * 2) as u64,
                    base.add(i * px * 2),
                    px * 2,
                    s,
                )?;
            }
            let toff = self.d.max_views
                * px.max(self.cfg.vision.image_size * self.cfg.vision.image_size * 3)
                * 2;
            let tok: Vec<i32> = input.tokens.iter().map(|&t| t as i32).collect();
            std::ptr::copy_nonoverlapping(tok.as_ptr() as *const u8, base.add(toff), tok.len() * 4);
            if !tok.is_empty() {
                htod_async(p.tokens.ptr, base.add(toff), tok.len() * 4, s)?;
            }
            p.staged.record(s)?;
        }
        p.nv.store(views.len(), Ordering::Release);
        p.ntok.store(input.tokens.len(), Ordering::Release);
        Ok(())
    }

    /// Copies the normalised state (action_dim) and the initial noise (chunk × action_dim) into
    /// decoder slot `dec` on `stream`.
    pub fn upload_decoder_inputs(
        &self,
        stream: &Arc<CudaStream>,
        dec: usize,
        state: &[f32],
        noise: &[f32],
    ) -> Result<()> {
        let a = self.cfg.action_dim;
        if state.len() != a || !crate::engine::all_finite(state) {
            return Err(Error::Input(format!("state must be {a} finite values")));
        }
        let c = noise_chunk(noise, &self.cfg)?;
        if c > self.d.max_chunk {
            return Err(Error::Input(format!(
                "chunk {c} > the engine's max_chunk {}",
                self.d.max_chunk
            )));
        }
        let ds = self.dslot(dec)?;
        bind_stream_context(stream)?;
        ds.staged.sync()?;
        let base = ds.staging.as_mut_ptr();
        // SAFETY: staging holds (max_chunk + 1) * a floats.
        unsafe {
            std::ptr::copy_nonoverlapping(noise.as_ptr() as *const u8, base, noise.len() * 4);
            std::ptr::copy_nonoverlapping(
                state.as_ptr() as *const u8,
                base.add(self.d.max_chunk * a * 4),
                a * 4,
            );
            let s = stream.cu_stream();
            htod_async(ds.x_t.ptr, base, noise.len() * 4, s)?;
            htod_async(ds.state.ptr, base.add(self.d.max_chunk * a * 4), a * 4, s)?;
            ds.staged.record(s)?;
        }
        ds.chunk.store(c, Ordering::Release);
        Ok(())
    }

    /// Copies decoder slot `dec`'s actions (chunk × action_dim, normalised) to the host; waits
    /// for `stream`.
    pub fn download_actions(&self, stream: &Arc<CudaStream>, dec: usize) -> Result<Vec<f32>> {
        self.download_actions_marked(stream, dec, None)
    }

    /// `download_actions`, recording `mark` on `stream` right after the copy (for timings).
    fn download_actions_marked(
        &self,
        stream: &Arc<CudaStream>,
        dec: usize,
        mark: Option<&CudaEvent>,
    ) -> Result<Vec<f32>> {
        let ds = self.dslot(dec)?;
        let n = self.chunk(dec) * self.cfg.action_dim;
        bind_stream_context(stream)?;
        ds.staged.sync()?;
        let base = ds.staging.as_mut_ptr();
        dtoh_async(base, ds.x_t.ptr, n * 4, stream.cu_stream())?;
        if let Some(e) = mark {
            drv(e.record(stream), "event")?;
        }
        drv(stream.synchronize(), "stream synchronize")?;
        let mut out = vec![0f32; n];
        // SAFETY: the copy above has completed; staging holds n floats.
        unsafe { std::ptr::copy_nonoverlapping(base as *const f32, out.as_mut_ptr(), n) };
        Ok(out)
    }

    // ------------------------------------------------------------------ graphs

    fn capture(&self, stream: &Arc<CudaStream>, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        let g = Graph::capture(stream, sys::CUgraphInstantiate_flags(0), f)?;
        g.upload()?;
        Ok(g)
    }

    /// Captures the encoder of `slot` on `stream` (for the observation shape uploaded last) as a
    /// graph. Runs the stage once eagerly first (warm-up, algorithm selection). A graph captured
    /// on a green-context stream stays confined to that partition.
    pub fn capture_encoder(&self, stream: &Arc<CudaStream>, slot: usize) -> Result<StageGraph> {
        self.enqueue_encoder(stream, slot)?;
        drv(stream.synchronize(), "warm-up")?;
        let p = self.pslot(slot)?;
        let key = (
            0u8,
            slot,
            0usize,
            p.nv.load(Ordering::Acquire),
            p.ntok.load(Ordering::Acquire),
        );
        let graph = self.capture(stream, || self.enqueue_encoder(stream, slot))?;
        Ok(StageGraph { graph, key })
    }

    /// Captures the decoder of `dec` reading prefix slot `prefix_slot` (for the current prefix
    /// length and chunk) on `stream`. Runs the stage once eagerly first; the slot's x_t is then
    /// overwritten, so upload the decoder inputs again before launching the graph.
    pub fn capture_decoder(
        &self,
        stream: &Arc<CudaStream>,
        prefix_slot: usize,
        dec: usize,
    ) -> Result<StageGraph> {
        self.enqueue_decoder(stream, prefix_slot, dec)?;
        drv(stream.synchronize(), "warm-up")?;
        let key = (
            1u8,
            prefix_slot,
            dec,
            self.prefix_len(prefix_slot),
            self.chunk(dec),
        );
        let graph = self.capture(stream, || self.enqueue_decoder(stream, prefix_slot, dec))?;
        Ok(StageGraph { graph, key })
    }

    /// Whether `g` was captured for the shapes the slots hold now.
    pub fn graph_matches(&self, g: &StageGraph) -> bool {
        let (stage, a, b, x, y) = g.key;
        if stage == 0 {
            let p = &self.pslots[a];
            p.nv.load(Ordering::Acquire) == x && p.ntok.load(Ordering::Acquire) == y
        } else {
            self.prefix_len(a) == x && self.chunk(b) == y
        }
    }

    // ------------------------------------------------------------------ whole inference

    /// Graph keys of `forward`'s encoder and decoder (slot 0, shapes uploaded last).
    fn forward_graph_keys(&self) -> (GraphKey, GraphKey) {
        let p = &self.pslots[0];
        let views = p.nv.load(Ordering::Acquire);
        let tokens = p.ntok.load(Ordering::Acquire);
        (
            (0, 0, 0, views, tokens),
            (1, 0, 0, self.prefix_len(0), self.chunk(0)),
        )
    }

    /// Drops every cuBLASLt plan and captured graph: the next call of each shape plans and
    /// captures again. For benchmarks that compare GEMM algorithms in one process
    /// (`PI0_LT_PICK` changed between calls); results may change with the algorithm.
    pub fn replan_gemms(&self) -> Result<()> {
        drv(self.ctx.synchronize(), "synchronize")?;
        self.graphs.lock().unwrap().clear();
        for p in &self.pslots {
            p.lt.lock().unwrap().clear();
        }
        for d in &self.dslots {
            d.lt.lock().unwrap().clear();
        }
        Ok(())
    }

    /// Captures `forward`'s graphs for the current shape `candidates` times in all and keeps
    /// the set that `time` (one measurement of `forward`, lower is better) rates fastest;
    /// before each new candidate the current graphs are set aside, so `time`'s first
    /// `forward` runs eagerly and captures new ones. Returns each candidate's time in capture
    /// order; a tie keeps the earlier set. Why: the pipeline's graph instances keep run states
    /// set when they are instantiated (docs/partition-notes.md v18-v25; `forward`'s own showed
    /// none in v25), and the benchmark tunes both sides alike. Earlier candidates stay alive
    /// while later ones are made, so no instance reuses a freed one's memory. Same kernels,
    /// same results. Call after one `forward` of the shape to tune.
    pub fn keep_fastest_forward_graphs(
        &mut self,
        candidates: usize,
        mut time: impl FnMut(&mut Self) -> Result<f64>,
    ) -> Result<Vec<f64>> {
        let (ek, dk) = self.forward_graph_keys();
        let mut times = vec![time(self)?];
        let mut best = times[0];
        for _ in 1..candidates {
            drv(self.stream.synchronize(), "synchronize")?;
            let held = {
                let mut g = self.graphs.lock().unwrap();
                [g.remove(&ek), g.remove(&dk)]
            };
            let t = time(self)?;
            times.push(t);
            drv(self.stream.synchronize(), "synchronize")?;
            if t < best {
                best = t;
                drop(held);
            } else {
                let newer: Vec<_> = {
                    let mut g = self.graphs.lock().unwrap();
                    [ek, dk]
                        .into_iter()
                        .zip(held)
                        .map(|(k, old)| match old {
                            Some(old) => g.insert(k, old),
                            None => g.remove(&k),
                        })
                        .collect()
                };
                drop(newer);
            }
        }
        Ok(times)
    }

    /// The fastest path: encoder and decoder as CUDA graphs on the engine's stream, whole GPU.
    /// Graphs are captured on the first call for each (views, prompt length, chunk); that call
    /// runs eagerly.
    pub fn forward(&mut self, input: &ModelInput, noise: &[f32]) -> Result<Vec<f32>> {
        self.forward_marked(input, noise, None)
    }

    /// `forward`, recording `marks` on the stream before the upload, after it, after each
    /// graph and after the action copy (the last four only once the graphs exist).
    fn forward_marked(
        &mut self,
        input: &ModelInput,
        noise: &[f32],
        marks: Option<&[CudaEvent; 5]>,
    ) -> Result<Vec<f32>> {
        let st = self.stream.clone();
        let mark = |i: usize| match marks {
            Some(m) => drv(m[i].record(&st), "event"),
            None => Ok(()),
        };
        mark(0)?;
        self.upload_observation(&st, 0, input)?;
        self.upload_decoder_inputs(&st, 0, &input.state, noise)?;
        let (ek, dk) = self.forward_graph_keys();
        let have = {
            let g = self.graphs.lock().unwrap();
            g.contains_key(&ek) && g.contains_key(&dk)
        };
        if !have {
            // First call for this shape: eager result, then capture for the next calls.
            self.enqueue_encoder(&st, 0)?;
            self.enqueue_decoder(&st, 0, 0)?;
            let out = self.download_actions(&st, 0)?;
            let eg = self.capture(&st, || self.enqueue_encoder(&st, 0))?;
            let dg = self.capture(&st, || self.enqueue_decoder(&st, 0, 0))?;
            let mut g = self.graphs.lock().unwrap();
            g.insert(ek, StageGraph { graph: eg, key: ek });
            g.insert(dk, StageGraph { graph: dg, key: dk });
            return Ok(out);
        }
        {
            let g = self.graphs.lock().unwrap();
            mark(1)?;
            nvtx::range_push!("encoder graph");
            g[&ek].launch_on(&st)?;
            nvtx::range_pop!();
            mark(2)?;
            nvtx::range_push!("decoder graph");
            g[&dk].launch_on(&st)?;
            nvtx::range_pop!();
            mark(3)?;
        }
        self.download_actions_marked(&st, 0, marks.map(|m| &m[4]))
    }

    /// Same as `forward` without graphs (every kernel launched from the host), for debugging
    /// and profiling.
    pub fn forward_eager(&mut self, input: &ModelInput, noise: &[f32]) -> Result<Vec<f32>> {
        let st = self.stream.clone();
        self.upload_observation(&st, 0, input)?;
        self.upload_decoder_inputs(&st, 0, &input.state, noise)?;
        self.enqueue_encoder(&st, 0)?;
        self.enqueue_decoder(&st, 0, 0)?;
        self.download_actions(&st, 0)
    }

    /// `forward` (graphs) with GPU event timings of its parts and its host wall time.
    pub fn forward_timed(
        &mut self,
        input: &ModelInput,
        noise: &[f32],
    ) -> Result<(Vec<f32>, StageTimes)> {
        // Make sure graphs exist for this shape (the first call runs eagerly and captures).
        let _ = self.forward(input, noise)?;
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| Error::Gpu(format!("{e:?}")))
        };
        let marks = [event()?, event()?, event()?, event()?, event()?];
        let wall = std::time::Instant::now();
        let out = self.forward_marked(input, noise, Some(&marks))?;
        let wall_ms = wall.elapsed().as_secs_f32() * 1e3;
        let span = |a: usize, b: usize| drv(marks[a].elapsed_ms(&marks[b]), "elapsed");
        let t = StageTimes {
            upload_ms: span(0, 1)?,
            encoder_ms: span(1, 2)?,
            decoder_ms: span(2, 3)?,
            download_ms: span(3, 4)?,
            wall_ms,
        };
        Ok((out, t))
    }
}

impl PolicyEngine for Pi0Cuda {
    fn name(&self) -> &str {
        "cuda"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn sample_actions(&mut self, input: &ModelInput, noise: &[f32]) -> Result<Vec<f32>> {
        self.forward(input, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn whole_group_sms_drops_the_left_over_sms_of_partitions_that_hold_them() {
        // An H100: 15 groups of 8 and 12 left over.
        assert_eq!(whole_group_sms(68, 8, 12), Some(56)); // 50-50: 7 groups + 12
        assert_eq!(whole_group_sms(76, 8, 12), Some(64));
        assert_eq!(whole_group_sms(64, 8, 12), None); // whole groups only
        assert_eq!(whole_group_sms(12, 8, 12), None); // nothing but the left-over SMs
        assert_eq!(whole_group_sms(68, 8, 0), None); // a device without left-over SMs
    }

    fn download_bf16(b: &DBuf, n: usize) -> Vec<f64> {
        b.download::<u16>(n)
            .unwrap()
            .iter()
            .map(|&x| half::bf16::from_bits(x).to_f64())
            .collect()
    }

    /// Both RoPE kernels against f64 on fresh random split-K partials: q and k rotated by the
    /// split-half rule at positions pos0 + t (cos/sin recomputed here in f64), v the plain sum;
    /// relative L2 of the bf16 outputs, no NaN. Head dims of pi0 (256) and pi0-tiny (16).
    #[test]
    fn gpu_rope_kernels_match_f64() {
        let test = "gpu_rope_kernels_match_f64";
        let Some((ctx, kernels)) = device::test_kernels(test) else {
            return;
        };
        let stream = ctx.new_stream().unwrap();
        let s = stream.cu_stream();
        let base = 10_000f32;
        for (rows, splits, heads, hd, pos0) in [
            (200, 1, 8, 256, 0),
            (51, 6, 8, 256, 532),
            (130, 3, 2, 16, 7),
        ] {
            let n = (heads + 2) * hd;
            let mut rng = rand::rngs::StdRng::seed_from_u64((rows * hd + splits) as u64);
            let part: Vec<f32> = (0..splits * rows * n)
                .map(|_| rng.gen_range(-2.0f32..2.0))
                .collect();
            let dpart = DBuf::from_slice(&part).unwrap();
            let table = rope_table(pos0 + rows, hd, base).unwrap();
            let sum = |t: usize, c: usize| -> f64 {
                (0..splits)
                    .map(|sp| part[(sp * rows + t) * n + c] as f64)
                    .sum()
            };
            for kernel in [K::RopeRows, K::RopePart] {
                let (q, k, v) = (
                    DBuf::new(rows * heads * hd * 2).unwrap(),
                    DBuf::new(rows * hd * 2).unwrap(),
                    DBuf::new(rows * hd * 2).unwrap(),
                );
                let shape = (rows, heads, hd, pos0);
                launch_rope(
                    &kernels,
                    s,
                    false,
                    kernel,
                    (dpart.ptr, splits),
                    (q.ptr, k.ptr, v.ptr),
                    shape,
                    table.ptr,
                )
                .unwrap();
                // SAFETY: plain stream synchronisation.
                cu(unsafe { sys::cuStreamSynchronize(s) }, "sync").unwrap();
                let (gq, gk, gv) = (
                    download_bf16(&q, rows * heads * hd),
                    download_bf16(&k, rows * hd),
                    download_bf16(&v, rows * hd),
                );
                let (mut err, mut norm) = (0f64, 0f64);
                let mut check = |got: f64, want: f64| {
                    assert!(got.is_finite(), "{kernel:?}: non-finite output");
                    err += (got - want).powi(2);
                    norm += want * want;
                };
                let half = hd / 2;
                for t in 0..rows {
                    for h in 0..=heads {
                        for i in 0..half {
                            let a =
                                (pos0 + t) as f64 / (base as f64).powf(2.0 * i as f64 / hd as f64);
                            let (x1, x2) = (sum(t, h * hd + i), sum(t, h * hd + i + half));
                            let (lo, hi) =
                                (x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin());
                            let row = if h < heads {
                                &gq[(t * heads + h) * hd..]
                            } else {
                                &gk[t * hd..]
                            };
                            check(row[i], lo);
                            check(row[i + half], hi);
                        }
                    }
                    for c in 0..hd {
                        check(gv[t * hd + c], sum(t, (heads + 1) * hd + c));
                    }
                }
                let rel = (err / norm).sqrt();
                println!(
                    "{kernel:?} rows {rows} splits {splits} head dim {hd}: rel L2 vs f64 {rel:.2e}"
                );
                assert!(rel < 4e-3, "{kernel:?}: rel L2 {rel:.3e}");
            }
        }
    }
}
