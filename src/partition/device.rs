//! The CUDA side of the partition layer: probing, green-context and MPS partitions.
//!
//! Facts this code relies on were measured on the H100 (../shared/research/h100-measurements.md):
//! green contexts confine kernels launched on their streams and graphs captured on them; a graph
//! captured elsewhere is NOT confined by the stream it is launched on; memory of the primary
//! context is usable in green contexts and (same process) in MPS execution-affinity contexts.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::split::{Backend, SmLayout, SplitPlan, StagePlan};
use crate::error::{Error, Result};
use crate::gpu::device::{
    bound_context_sm_affinity, cu, green_ctx_sms, stream_green_ctx, GreenSplit,
};

/// Whether a CUDA driver and GPU can be used here; `Err` says why not (for test skips).
/// Never panics: libcuda is probed with dlopen before cudarc touches it.
pub fn cuda_available() -> std::result::Result<(), String> {
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so) on this machine".into());
    }
    unsafe {
        if sys::cuInit(0) != sys::CUresult::CUDA_SUCCESS {
            return Err("cuInit failed (no usable NVIDIA GPU)".into());
        }
        let mut n = 0;
        if sys::cuDeviceGetCount(&mut n) != sys::CUresult::CUDA_SUCCESS || n == 0 {
            return Err("no CUDA device".into());
        }
    }
    Ok(())
}

/// SM count and green-context granularity of the device (`minSmPartitionSize`).
pub fn green_layout(ctx: &Arc<CudaContext>) -> Result<SmLayout> {
    let all = device_sm_resource(ctx)?;
    let sm = unsafe { all.__bindgen_anon_1.sm };
    let granularity = sm.minSmPartitionSize.max(1);
    Ok(SmLayout::uniform(sm.smCount, granularity))
}

pub(crate) fn device_sm_resource(ctx: &Arc<CudaContext>) -> Result<sys::CUdevResource> {
    ctx.bind_to_thread()
        .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
    crate::gpu::device::device_sm_resource(ctx.cu_device())
}

/// The device's SMs cut once into `groups` equal groups plus a remainder; descriptors for any
/// run of groups are made from these (one split, so groups can be combined).
pub(crate) struct GreenGroups {
    groups: Vec<sys::CUdevResource>,
    remainder: sys::CUdevResource,
    pub layout: SmLayout,
}

// CUdevResource is plain data describing SMs; no pointer into thread-local state.
unsafe impl Send for GreenGroups {}
unsafe impl Sync for GreenGroups {}

impl GreenGroups {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        ctx.bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
        let split = GreenSplit::new(ctx.cu_device())?;
        let n = split.groups.len() as u32;
        if n == 0 {
            return Err(Error::Gpu(format!(
                "the SM split gave no group of {} SMs",
                split.granularity
            )));
        }
        // Measured on the H100: 15 groups of 8 and 12 left over (groups stay in a GPC).
        let layout = SmLayout {
            total: split.total,
            granularity: split.granularity,
            groups: n,
        };
        log::debug!(
            "green contexts: {} SMs = {n} groups of {} + {} left over",
            layout.total,
            layout.granularity,
            layout.remainder()
        );
        Ok(GreenGroups {
            groups: split.groups,
            remainder: split.remainder,
            layout,
        })
    }

    /// A complementary pair: one group of at least `small_sms` (split off the whole device)
    /// and everything else, so no SM is idle. Returns (small, rest).
    fn make_pair(
        &self,
        ctx: &Arc<CudaContext>,
        small_sms: u32,
        prio: (i32, i32),
    ) -> Result<((GreenStage, u32), (GreenStage, u32))> {
        let all = device_sm_resource(ctx)?;
        unsafe {
            let mut grp: sys::CUdevResource = std::mem::zeroed();
            let mut rest: sys::CUdevResource = std::mem::zeroed();
            let mut n = 1u32;
            cu(
                sys::cuDevSmResourceSplitByCount(&mut grp, &mut n, &all, &mut rest, 0, small_sms),
                "cuDevSmResourceSplitByCount",
            )?;
            let a = Self::stage_from(ctx, vec![grp], prio.0)?;
            let b = Self::stage_from(ctx, vec![rest], prio.1)?;
            Ok((a, b))
        }
    }

    /// `make_pair`'s SM counts built from the precomputed groups instead of one driver split:
    /// the small stage on the first `small_groups` groups (the last ones with `at_end`), the
    /// other stage on the remaining groups plus the left-over SMs.
    fn make_pair_from_groups(
        &self,
        ctx: &Arc<CudaContext>,
        small_groups: u32,
        at_end: bool,
        remainder: RemainderTo,
        prio: (i32, i32),
    ) -> Result<((GreenStage, u32), (GreenStage, u32))> {
        let big_groups = self.layout.groups - small_groups;
        let (small_first, big_first) = if at_end {
            (big_groups, 0)
        } else {
            (0, small_groups)
        };
        let (small_rem, big_rem) = match remainder {
            RemainderTo::Larger => (false, true),
            RemainderTo::Smaller => (true, false),
            RemainderTo::Both => (true, true),
            RemainderTo::Neither => (false, false),
        };
        Ok((
            self.make(ctx, small_first, small_groups, small_rem, prio.0)?,
            self.make(ctx, big_first, big_groups, big_rem, prio.1)?,
        ))
    }

    /// A green context (and one non-blocking stream in it) over groups `[first, first+count)`,
    /// plus the remainder SMs if asked and the driver accepts them in one descriptor.
    fn make(
        &self,
        ctx: &Arc<CudaContext>,
        first: u32,
        count: u32,
        with_rem: bool,
        prio: i32,
    ) -> Result<(GreenStage, u32)> {
        let mut res: Vec<sys::CUdevResource> =
            self.groups[first as usize..(first + count) as usize].to_vec();
        let rem_sms = unsafe { self.remainder.__bindgen_anon_1.sm.smCount };
        if with_rem && rem_sms > 0 {
            res.push(self.remainder);
            match Self::stage_from(ctx, res.clone(), prio) {
                Ok(x) => return Ok(x),
                Err(e) => {
                    log::warn!(
                        "left-over SMs refused in one descriptor with whole groups ({e}); \
                         using the groups alone"
                    );
                    res.pop();
                }
            }
        }
        Self::stage_from(ctx, res, prio)
    }

    fn stage_from(
        ctx: &Arc<CudaContext>,
        mut res: Vec<sys::CUdevResource>,
        prio: i32,
    ) -> Result<(GreenStage, u32)> {
        unsafe {
            let mut desc: sys::CUdevResourceDesc = std::ptr::null_mut();
            cu(
                sys::cuDevResourceGenerateDesc(&mut desc, res.as_mut_ptr(), res.len() as u32),
                "cuDevResourceGenerateDesc",
            )?;
            let mut g: sys::CUgreenCtx = std::ptr::null_mut();
            cu(
                sys::cuGreenCtxCreate(
                    &mut g,
                    desc,
                    ctx.cu_device(),
                    sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32,
                ),
                "cuGreenCtxCreate",
            )?;
            let mut s: sys::CUstream = std::ptr::null_mut();
            let r = sys::cuGreenCtxStreamCreate(
                &mut s,
                g,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                prio,
            );
            if r != sys::CUresult::CUDA_SUCCESS {
                sys::cuGreenCtxDestroy(g);
                cu(r, "cuGreenCtxStreamCreate")?;
            }
            let stage = GreenStage { gctx: g, stream: s };
            Ok((stage, green_ctx_sms(g)?))
        }
    }
}

/// Which stage of a complementary pair gets the SMs outside the whole groups (study knob
/// `PI0_GREEN_PAIR=remainder-*`; the default split gives them to the larger stage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RemainderTo {
    Larger,
    Smaller,
    Both,
    Neither,
}

/// Study knob `PI0_GREEN_PAIR`: a complementary pair built from the precomputed groups, the
/// smaller stage on the first groups (`groups-low`, the default here) or the last
/// (`groups-high`), the left-over SMs to the larger stage (`remainder-larger`, the default
/// here), the smaller, both or neither; comma-separated, e.g. `groups-high,remainder-idle`.
/// Returns (smaller stage at the end, where the left-over SMs go); None for anything else.
fn pair_placement(spec: &str) -> Option<(bool, RemainderTo)> {
    let (mut at_end, mut to) = (false, RemainderTo::Larger);
    for item in spec.split(',').map(str::trim) {
        match item {
            "groups-low" => at_end = false,
            "groups-high" => at_end = true,
            "remainder-larger" => to = RemainderTo::Larger,
            "remainder-smaller" => to = RemainderTo::Smaller,
            "remainder-both" => to = RemainderTo::Both,
            "remainder-idle" => to = RemainderTo::Neither,
            _ => return None,
        }
    }
    Some((at_end, to))
}

struct GreenStage {
    gctx: sys::CUgreenCtx,
    stream: sys::CUstream,
}

impl Drop for GreenStage {
    fn drop(&mut self) {
        unsafe {
            // Graphs captured on this stream are dropped before (PreparedSplit field order).
            sys::cuStreamSynchronize(self.stream);
            sys::cuStreamDestroy_v2(self.stream);
            sys::cuGreenCtxDestroy(self.gctx);
        }
    }
}

enum Owned {
    /// A capture stream created in a green context (destroyed before the contexts).
    RawStream(sys::CUstream),
    #[allow(dead_code)] // held for its Drop
    Green(GreenStage),
    /// An MPS execution-affinity context; its stream is owned by the cudarc wrapper.
    Mps(Arc<CudaContext>),
    Plain,
}

/// One prepared split: a stream per stage, confined to its SMs, and the SM counts the driver
/// actually gave (not just the requested percentages).
pub struct Partition {
    pub plan: SplitPlan,
    /// SMs the encoder stream may use, as reported by the driver.
    pub encoder_sms: u32,
    /// SMs the decoder stream may use, as reported by the driver.
    pub decoder_sms: u32,
    /// SMs both streams may use (0 = disjoint).
    pub shared_sms: u32,
    pub encoder_stream: Arc<CudaStream>,
    pub decoder_stream: Arc<CudaStream>,
    /// Second streams in the same contexts, for capturing graphs off the hot path (a graph
    /// keeps the SMs of the context it was captured in, whichever stream launches it).
    pub encoder_capture_stream: Arc<CudaStream>,
    pub decoder_capture_stream: Arc<CudaStream>,
    /// Time to create the contexts and streams.
    pub create_ms: f64,
    // Dropped last: the cudarc wrappers above only borrow green streams.
    owned: Vec<Owned>,
}

// Raw green-context handles are process-global driver objects; the driver API is thread safe.
unsafe impl Send for Partition {}
unsafe impl Sync for Partition {}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Partition({} {}: encoder {} SMs, decoder {} SMs, shared {})",
            self.plan.backend,
            self.plan.request,
            self.encoder_sms,
            self.decoder_sms,
            self.shared_sms
        )
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = self.encoder_stream.synchronize();
        let _ = self.decoder_stream.synchronize();
    }
}

const MPS_HELP: &str = "the MPS backend needs the MPS control daemon running before this process \
starts: as the GPU's user run `export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps \
CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-log; nvidia-cuda-mps-control -d` (stop it with \
`echo quit | nvidia-cuda-mps-control`), use the same CUDA_MPS_PIPE_DIRECTORY here, or pick \
partition=green (no daemon needed)";

impl Partition {
    /// Creates the streams for `plan`. `groups` is required for the green backend.
    pub(crate) fn create(
        ctx: &Arc<CudaContext>,
        plan: SplitPlan,
        groups: Option<&GreenGroups>,
        total_sms: u32,
    ) -> Result<Partition> {
        let t0 = Instant::now();
        let mut owned = Vec::new();
        let complementary = match (plan.encoder, plan.decoder, groups) {
            (
                StagePlan::Groups {
                    first: ef,
                    count: ec,
                    with_remainder: er,
                },
                StagePlan::Groups {
                    first: df,
                    count: dc,
                    with_remainder: dr,
                },
                Some(g),
            ) => {
                let n = g.layout.groups;
                // (small first, small count, big first, big count, big has the remainder)
                let enc_small = ef == 0 && df == ec && df + dc == n && dr && !er;
                let dec_small = df == 0 && ef == dc && ef + ec == n && er && !dr;
                if enc_small {
                    Some((g, ec, true))
                } else if dec_small {
                    Some((g, dc, false))
                } else {
                    None
                }
            }
            _ => None,
        };
        // The decoder (control-rate, latency-critical) gets the highest stream priority, the
        // encoder the lowest: where the partitions overlap, decoder blocks are scheduled first.
        let (enc_prio, dec_prio) = stream_priorities(ctx);
        let (enc, dec) = match complementary {
            Some((g, small_groups, encoder_small)) => {
                // One split of the whole device: the smaller stage gets a group, the larger
                // everything else (the left-over SMs included), so no SM is idle.
                let prio = if encoder_small {
                    (enc_prio, dec_prio)
                } else {
                    (dec_prio, enc_prio)
                };
                let knob = std::env::var("PI0_GREEN_PAIR").ok();
                let (small, rest) = match knob.as_deref().map(pair_placement) {
                    // Placement experiments (pi0-bench-partition, docs/gpu-notes.md knobs).
                    Some(Some((at_end, to))) => {
                        g.make_pair_from_groups(ctx, small_groups, at_end, to, prio)?
                    }
                    other => {
                        if other.is_some() {
                            log::warn!("PI0_GREEN_PAIR={knob:?} not understood (groups-low|groups-high, remainder-larger|remainder-smaller|remainder-both|remainder-idle, comma-separated); using the driver's split");
                        }
                        g.make_pair(ctx, small_groups * g.layout.granularity, prio)?
                    }
                };
                let mut wrap = |(st, sms): (GreenStage, u32)| {
                    let s = unsafe { ctx.wrap_borrowed_stream(st.stream) };
                    owned.push(Owned::Green(st));
                    (s, sms)
                };
                let (a, b) = (wrap(small), wrap(rest));
                if encoder_small {
                    (a, b)
                } else {
                    (b, a)
                }
            }
            None => (
                stage_stream(ctx, plan.encoder, groups, total_sms, &mut owned, enc_prio)?,
                stage_stream(ctx, plan.decoder, groups, total_sms, &mut owned, dec_prio)?,
            ),
        };
        let ((encoder_stream, encoder_sms), (decoder_stream, decoder_sms)) = (enc, dec);
        let encoder_capture_stream = capture_stream(&encoder_stream, &mut owned)?;
        let decoder_capture_stream = capture_stream(&decoder_stream, &mut owned)?;
        ctx.bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
        let layout = groups
            .map(|g| g.layout)
            .unwrap_or_else(|| SmLayout::uniform(total_sms, 1));
        let shared_sms = match plan.backend {
            Backend::None => total_sms,
            _ => plan.shared_sms(&layout).min(encoder_sms.min(decoder_sms)),
        };
        let p = Partition {
            plan,
            encoder_sms,
            decoder_sms,
            shared_sms,
            encoder_stream,
            decoder_stream,
            encoder_capture_stream,
            decoder_capture_stream,
            create_ms: t0.elapsed().as_secs_f64() * 1e3,
            owned,
        };
        log::info!(
            "partition {} {}: encoder {} SMs, decoder {} SMs (shared {}) of {total_sms}, made in {:.2} ms",
            plan.backend,
            plan.request,
            p.encoder_sms,
            p.decoder_sms,
            p.shared_sms,
            p.create_ms
        );
        Ok(p)
    }

    /// The MPS contexts of this partition (to load modules into, for engines that need it).
    pub fn contexts(&self) -> Vec<Arc<CudaContext>> {
        self.owned
            .iter()
            .filter_map(|o| match o {
                Owned::Mps(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Another stream in the context (green or not) of `hot`.
fn capture_stream(hot: &Arc<CudaStream>, owned: &mut Vec<Owned>) -> Result<Arc<CudaStream>> {
    let ctx = hot.context();
    ctx.bind_to_thread()
        .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
    if let Some(g) = stream_green_ctx(hot.cu_stream()) {
        unsafe {
            let mut s: sys::CUstream = std::ptr::null_mut();
            cu(
                sys::cuGreenCtxStreamCreate(
                    &mut s,
                    g,
                    sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                    0,
                ),
                "cuGreenCtxStreamCreate (capture stream)",
            )?;
            // Destroyed first (before any green context).
            owned.insert(0, Owned::RawStream(s));
            return Ok(ctx.wrap_borrowed_stream(s));
        }
    }
    ctx.new_stream()
        .map_err(|e| Error::Gpu(format!("capture stream: {e}")))
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Owned::RawStream(s) = self {
            unsafe {
                sys::cuStreamSynchronize(*s);
                sys::cuStreamDestroy_v2(*s);
            }
        }
    }
}

/// (lowest, highest) stream priority of the device: (encoder, decoder).
fn stream_priorities(ctx: &Arc<CudaContext>) -> (i32, i32) {
    let _ = ctx.bind_to_thread();
    let (mut least, mut greatest) = (0i32, 0i32);
    unsafe {
        if sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest)
            != sys::CUresult::CUDA_SUCCESS
        {
            return (0, 0);
        }
    }
    (least, greatest)
}

fn stage_stream(
    ctx: &Arc<CudaContext>,
    st: StagePlan,
    groups: Option<&GreenGroups>,
    total_sms: u32,
    owned: &mut Vec<Owned>,
    prio: i32,
) -> Result<(Arc<CudaStream>, u32)> {
    match st {
        StagePlan::Whole => {
            let s = ctx
                .new_stream_with_priority(prio)
                .map_err(|e| Error::Gpu(format!("stream: {e}")))?;
            owned.push(Owned::Plain);
            Ok((s, total_sms))
        }
        StagePlan::Groups {
            first,
            count,
            with_remainder,
        } => {
            let g =
                groups.ok_or_else(|| Error::Gpu("green contexts are not initialised".into()))?;
            let (stage, sms) = g.make(ctx, first, count, with_remainder, prio)?;
            let s = unsafe { ctx.wrap_borrowed_stream(stage.stream) };
            owned.push(Owned::Green(stage));
            Ok((s, sms))
        }
        StagePlan::Count(n) => {
            let mctx = mps_context(ctx, n)?;
            let sms = mps_affinity(&mctx)?;
            let s = mctx
                .new_stream_with_priority(prio)
                .map_err(|e| Error::Gpu(format!("stream in MPS context: {e}")))?;
            owned.push(Owned::Mps(mctx));
            Ok((s, sms))
        }
    }
}

/// An execution-affinity context capped at `sms` SMs (MPS only).
fn mps_context(primary: &Arc<CudaContext>, sms: u32) -> Result<Arc<CudaContext>> {
    unsafe {
        let dev = primary.cu_device();
        let mut supported = 0i32;
        let r = sys::cuDeviceGetExecAffinitySupport(
            &mut supported,
            sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
            dev,
        );
        if r != sys::CUresult::CUDA_SUCCESS || supported == 0 {
            return Err(Error::Gpu(format!(
                "SM-count execution affinity not supported here ({r:?}); {MPS_HELP}"
            )));
        }
        let mut aff: sys::CUexecAffinityParam = std::mem::zeroed();
        aff.type_ = sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT;
        aff.param.smCount.val = sms;
        let mut params = sys::CUctxCreateParams {
            execAffinityParams: &mut aff,
            numExecAffinityParams: 1,
            cigParams: std::ptr::null_mut(),
        };
        let mut raw: sys::CUcontext = std::ptr::null_mut();
        let r = sys::cuCtxCreate_v4(&mut raw, &mut params, 0, dev);
        if r == sys::CUresult::CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY {
            return Err(Error::Gpu(format!(
                "cuCtxCreate_v4 with an SM-count affinity failed: no MPS daemon is serving this \
                 process (CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY); {MPS_HELP}"
            )));
        }
        cu(r, "cuCtxCreate_v4 (MPS execution affinity)")?;
        // cuCtxCreate pushed the new context; leave the thread as it was.
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        sys::cuCtxPopCurrent_v2(&mut popped);
        let c = CudaContext::from_raw_context(primary.ordinal(), dev, raw)
            .map_err(|e| Error::Gpu(format!("wrap MPS context: {e}")))?;
        primary
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
        Ok(c)
    }
}

fn mps_affinity(c: &Arc<CudaContext>) -> Result<u32> {
    c.bind_to_thread()
        .map_err(|e| Error::Gpu(format!("bind MPS context: {e}")))?;
    bound_context_sm_affinity()
}

/// Whether an MPS daemon serves this process (an SM-capped context can be made). Creates and
/// destroys one small context; `Err` carries the how-to-start message.
pub fn mps_probe(ctx: &Arc<CudaContext>, total_sms: u32) -> Result<()> {
    let c = mps_context(ctx, (total_sms / 2).max(1))?;
    drop(c);
    ctx.bind_to_thread()
        .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_placement_reads_placement_and_left_over_sms_in_any_order() {
        assert_eq!(
            pair_placement("groups-low"),
            Some((false, RemainderTo::Larger))
        );
        assert_eq!(
            pair_placement("groups-high"),
            Some((true, RemainderTo::Larger))
        );
        assert_eq!(
            pair_placement("remainder-idle"),
            Some((false, RemainderTo::Neither))
        );
        assert_eq!(
            pair_placement("remainder-both, groups-high"),
            Some((true, RemainderTo::Both))
        );
        assert_eq!(
            pair_placement("groups-high,remainder-smaller"),
            Some((true, RemainderTo::Smaller))
        );
        assert_eq!(pair_placement("groups-middle"), None);
        assert_eq!(pair_placement(""), None);
    }
}
