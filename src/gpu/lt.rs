//! cuBLASLt matmuls with bf16 inputs, fp32 accumulation, bf16 or fp32 output, optional bias /
//! GELU(tanh)+bias epilogues and beta = 1 residual accumulation. The algorithm for each shape is
//! chosen once by the heuristic and cached; later calls (and graph capture) reuse it.
//!
//! Row-major convention: Y[M][N] (ld ldy) = X[M][K] (ld ldx) · Wᵀ, W stored [N][K] (ld ldw), or
//! W stored [K][N] when `w_kn` (used for P·V). In cuBLASLt's column-major view that is
//! Yᵀ = op(W) · Xᵀ.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::{result as lr, sys as ls};
use cudarc::driver::sys as ds;

use crate::error::{Error, Result};

fn lt<T>(r: std::result::Result<T, lr::CublasError>, what: &str) -> Result<T> {
    r.map_err(|e| Error::Gpu(format!("cuBLASLt {what}: {e:?}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epi {
    None,
    Bias,
    GeluBias,
}

/// One GEMM's shape and options (the cache key, with the pointer alignments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldx: usize,
    pub ldw: usize,
    pub ldy: usize,
    pub w_kn: bool,
    pub out_f32: bool,
    pub epi: Epi,
    /// Y += (beta = 1) instead of Y = (beta = 0).
    pub accumulate: bool,
    pub batch: usize,
    pub stride_x: i64,
    pub stride_w: i64,
    pub stride_y: i64,
}

impl Gemm {
    /// Y[m][n] = X[m][k]·W[n][k]ᵀ, dense leading dimensions.
    pub fn linear(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            ldx: k,
            ldw: k,
            ldy: n,
            w_kn: false,
            out_f32: false,
            epi: Epi::None,
            accumulate: false,
            batch: 1,
            stride_x: 0,
            stride_w: 0,
            stride_y: 0,
        }
    }
    pub fn bias(mut self) -> Self {
        self.epi = Epi::Bias;
        self
    }
    pub fn gelu_bias(mut self) -> Self {
        self.epi = Epi::GeluBias;
        self
    }
    pub fn residual(mut self) -> Self {
        self.accumulate = true;
        self
    }
    /// fp32 output (the residual streams, attention logits).
    pub fn f32out(mut self) -> Self {
        self.out_f32 = true;
        self
    }
    pub fn ld(mut self, ldx: usize, ldw: usize, ldy: usize) -> Self {
        self.ldx = ldx;
        self.ldw = ldw;
        self.ldy = ldy;
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    g: Gemm,
    align: [u16; 4],
}

struct Plan {
    desc: ls::cublasLtMatmulDesc_t,
    la: ls::cublasLtMatrixLayout_t,
    lb: ls::cublasLtMatrixLayout_t,
    ld: ls::cublasLtMatrixLayout_t,
    algo: ls::cublasLtMatmulAlgo_t,
    /// Heuristic candidates still to be timed (empty once tuned).
    candidates: Vec<ls::cublasLtMatmulAlgo_t>,
    /// The heuristic's second choice, if any (`partition_algo`).
    second: Option<ls::cublasLtMatmulAlgo_t>,
    /// The same product for streams confined to fewer SMs (green / MPS partitions).
    narrow: Vec<Narrow>,
}

/// A plan's variant for a stream confined to `sms` SMs: the descriptor carries
/// CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, so kernels that size their grid to the SM count
/// (Hopper's persistent ones) make one wave on the partition instead of 1 + a few CTAs. The
/// algorithm is the whole GPU's (same split-K, so the same sums) except where
/// `partition_algo` picks one that shares the L2 better with the other stage.
struct Narrow {
    sms: u32,
    desc: ls::cublasLtMatmulDesc_t,
    algo: ls::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// Points the bias epilogue of `desc` at `bias` (nothing to do without an epilogue).
    fn set_bias(desc: ls::cublasLtMatmulDesc_t, epi: Epi, bias: u64) -> Result<()> {
        if epi == Epi::None {
            return Ok(());
        }
        let bp = bias as *const c_void;
        // SAFETY: desc is valid; the attribute is a device pointer value.
        let r = unsafe {
            lr::set_matmul_desc_attribute(
                desc,
                ls::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bp as *const _ as *const c_void,
                std::mem::size_of::<*const c_void>(),
            )
        };
        lt(r, "bias pointer")
    }

    /// Enqueues y = alpha·(w·x) + beta·y on `stream` with `desc` (this plan's or a narrow
    /// variant's) and `algo` (y is read and written in place; `ws` is the workspace and its
    /// size).
    ///
    /// # Safety
    /// `w`, `x`, `y` and `ws` must be device allocations sized for this plan's shape.
    #[allow(clippy::too_many_arguments)]
    unsafe fn enqueue(
        &self,
        h: &LtHandle,
        desc: ls::cublasLtMatmulDesc_t,
        algo: &ls::cublasLtMatmulAlgo_t,
        alpha: f32,
        beta: f32,
        w: u64,
        x: u64,
        y: u64,
        ws: (u64, usize),
        stream: ds::CUstream,
    ) -> std::result::Result<(), lr::CublasError> {
        lr::matmul(
            h.0,
            desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            w as *const c_void,
            self.la,
            x as *const c_void,
            self.lb,
            y as *const c_void,
            self.ld,
            y as *mut c_void,
            self.ld,
            algo,
            ws.0 as *mut c_void,
            ws.1,
            stream as ls::cudaStream_t,
        )
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created once in `plan`.
        unsafe {
            let _ = lr::destroy_matmul_desc(self.desc);
            for n in &self.narrow {
                let _ = lr::destroy_matmul_desc(n.desc);
            }
            let _ = lr::destroy_matrix_layout(self.la);
            let _ = lr::destroy_matrix_layout(self.lb);
            let _ = lr::destroy_matrix_layout(self.ld);
        }
    }
}

/// The library handle (shared; cuBLASLt takes the stream per call).
pub struct LtHandle(pub ls::cublasLtHandle_t);
// SAFETY: a cuBLASLt handle may be used from several threads when descriptors are not shared.
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}
impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle.
        unsafe {
            let _ = lr::destroy_handle(self.0);
        }
    }
}
impl LtHandle {
    pub fn new() -> Result<Self> {
        Ok(LtHandle(lt(lr::create_handle(), "create")?))
    }
}

/// A per-slot plan cache plus that slot's own workspace.
pub struct LtCache {
    plans: HashMap<Key, Plan>,
    pub workspace: u64,
    pub workspace_bytes: usize,
    /// Time the heuristic's top candidates once per shape (outside graph capture) and keep the
    /// fastest.
    pub autotune: bool,
    /// SMs the stream of the next calls is confined to (None: the whole GPU). Set by the
    /// engine per stage enqueue.
    pub sm_target: Option<u32>,
    /// Set per enqueue, like `sm_target`: the SMs of the partition's whole 8-SM groups when
    /// it also holds the left-over SMs (the encoder's 68 on the H100's 50-50 split: 56).
    /// GEMMs with clusters of 4+ CTAs target these: such clusters fit only in whole groups.
    pub cluster_sm_target: Option<u32>,
    /// Set per enqueue, like `sm_target`: whether every kernel of ours in it joins the
    /// programmatic-launch chain (`PdlScope` in engine.rs).
    pub pdl_all: bool,
    scratch: Option<super::device::DBuf>,
}
// SAFETY: descriptors are only touched under the owning slot's lock.
unsafe impl Send for LtCache {}

fn align_of(p: u64) -> u16 {
    let mut a = 256u64;
    while a > 2 && p % a != 0 {
        a /= 2;
    }
    a as u16
}

impl LtCache {
    pub fn new(workspace: u64, workspace_bytes: usize) -> Self {
        LtCache {
            plans: HashMap::new(),
            workspace,
            workspace_bytes,
            autotune: false,
            sm_target: None,
            cluster_sm_target: None,
            pdl_all: false,
            scratch: None,
        }
    }

    /// Forgets every plan, so the next GEMM of each shape asks the heuristic again (benchmarks
    /// that change `PI0_LT_PICK` in-process).
    pub fn clear(&mut self) {
        self.plans.clear();
    }

    fn plan(&mut self, h: &LtHandle, key: Key) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let p = make_plan(h, &key, self.workspace_bytes)?;
            self.plans.insert(key, p);
        }
        Ok(&self.plans[&key])
    }

    /// Enqueues Y = X·Wᵀ (+bias) (+Y) on `stream`. `bias` is bf16 [n] for Bias/GeluBias.
    /// `alpha` scales the product (attention's 1/sqrt(d)).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        h: &LtHandle,
        stream: ds::CUstream,
        g: Gemm,
        x: u64,
        w: u64,
        y: u64,
        bias: u64,
        alpha: f32,
    ) -> Result<()> {
        let key = Key {
            g,
            align: [
                align_of(x),
                align_of(w),
                align_of(y),
                align_of(bias.max(256)),
            ],
        };
        let (ws, wsb) = (self.workspace, self.workspace_bytes);
        self.plan(h, key)?;
        if self.autotune && !self.plans[&key].candidates.is_empty() && !capturing(stream) {
            self.tune(h, stream, key, x, w, bias, alpha)?;
        }
        let narrow = match self.sm_target {
            Some(sms) => Some(self.narrow(h, key, sms)?),
            None => None,
        };
        let plan = &self.plans[&key];
        let (desc, algo) = match narrow {
            Some(i) => (plan.narrow[i].desc, &plan.narrow[i].algo),
            None => (plan.desc, &plan.algo),
        };
        Plan::set_bias(desc, g.epi, bias)?;
        let beta: f32 = if g.accumulate { 1.0 } else { 0.0 };
        // SAFETY: pointers are device allocations sized by the caller for this shape.
        let r = unsafe { plan.enqueue(h, desc, algo, alpha, beta, w, x, y, (ws, wsb), stream) };
        lt(r, "matmul")
    }

    /// Index of `key`'s variant for `sms` SMs, made on first use: the whole-GPU algorithm
    /// under an SM-count target (PI0_LT_NARROW=reselect: the heuristic's own pick for that
    /// target instead; =off: no variant, for comparisons).
    fn narrow(&mut self, h: &LtHandle, key: Key, sms: u32) -> Result<usize> {
        let (ws_bytes, cluster_sms) = (self.workspace_bytes, self.cluster_sm_target);
        let plan = self.plans.get_mut(&key).unwrap();
        if let Some(i) = plan.narrow.iter().position(|n| n.sms == sms) {
            return Ok(i);
        }
        let mode = std::env::var("PI0_LT_NARROW").unwrap_or_default();
        let desc = make_desc(&key.g, (mode != "off").then_some(sms))?;
        let algo = if mode == "reselect" {
            heuristic(h, &key, desc, (plan.la, plan.lb, plan.ld), ws_bytes)?[0]
        } else {
            partition_algo(h, &key.g, desc, plan, ws_bytes)
        };
        let retarget = cluster_sms_study(sms, &algo).or_else(|| {
            let t = cluster_sms.filter(|&t| (1..sms).contains(&t))?;
            large_cluster(algo_config(&algo, CLUSTER_SHAPE).ok()?).then_some(t)
        });
        let desc = match retarget {
            Some(target) if mode != "off" => {
                log::debug!(
                    "lt cluster target {}x{}x{}: {sms} SMs -> {target}",
                    key.g.m,
                    key.g.n,
                    key.g.k
                );
                let retargeted = make_desc(&key.g, Some(target));
                // SAFETY: made above, used only to choose `algo`, not stored.
                let _ = unsafe { lr::destroy_matmul_desc(desc) };
                retargeted?
            }
            _ => desc,
        };
        plan.narrow.push(Narrow { sms, desc, algo });
        Ok(plan.narrow.len() - 1)
    }
}

/// The algorithm of `g` on an SM partition, where the other stage runs beside it and both
/// contend for the L2 (docs/partition-notes.md v20: an aggressor reading from the L2 slows the
/// decoder by 27 %, one streaming HBM by 5-10 %). Measured on the H100 in the green 50-50
/// pair (BENCHMARKS.md, fifteenth session), the pair's frame 0.16 ms shorter with both:
/// * the Gemma gate|up (n ≥ 8 k): the heuristic's second choice (128x272 tiles, 2x1
///   clusters, instead of 256x136 with 1x2);
/// * the Gemma down projection (k ≥ 8 n, the split-K 2 pick): 1x2 clusters instead of 2x1.
///
/// Solo they run as fast as the whole GPU's picks, and on the H100 their products were
/// bitwise the whole GPU's (`gpu_narrow_variants_compute_the_whole_gpu_product`). The rules
/// follow cuBLASLt's ranking on the H100 (cuBLASLt 13.0); on another GPU, compare with
/// `PI0_LT_PART=off`, which keeps the whole GPU's picks.
fn partition_algo(
    h: &LtHandle,
    g: &Gemm,
    desc: ls::cublasLtMatmulDesc_t,
    plan: &Plan,
    ws_bytes: usize,
) -> ls::cublasLtMatmulAlgo_t {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
    let prefix = g.m >= 256 && g.batch <= 1 && !g.w_kn;
    if !prefix || std::env::var("PI0_LT_PART").is_ok_and(|v| v == "off") {
        return plan.algo;
    }
    let layouts = (plan.la, plan.lb, plan.ld);
    let accepted = |a: &ls::cublasLtMatmulAlgo_t| check(h, desc, layouts, a, ws_bytes);
    if g.n >= 8 * g.k {
        if let Some(a) = plan.second.filter(|a| accepted(a)) {
            return a;
        }
    } else if g.k >= 8 * g.n {
        let mut a = plan.algo;
        let one_by_two: u16 = ls::cublasLtClusterShape_t::CUBLASLT_CLUSTER_SHAPE_1x2x1 as u16;
        // SAFETY: a u16 attribute, 2 bytes.
        let r = unsafe {
            ls::cublasLtMatmulAlgoConfigSetAttribute(
                &mut a,
                CA::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                &one_by_two as *const u16 as *const c_void,
                2,
            )
        };
        if r == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS && accepted(&a) {
            return a;
        }
    }
    plan.algo
}

/// Study knob `PI0_LT_CLUSTER_SMS="68:56,..."`: on a partition of 68 SMs, GEMMs whose
/// algorithm runs clusters of 4 or more CTAs get an SM-count target of 56 instead (the SMs of
/// the partition's whole 8-SM groups, where such clusters fit; BENCHMARKS.md, sixteenth
/// session: the green 50-50 frame −0.05 ms on the H100).
fn cluster_sms_study(sms: u32, a: &ls::cublasLtMatmulAlgo_t) -> Option<u32> {
    let spec = std::env::var("PI0_LT_CLUSTER_SMS").ok()?;
    let id = algo_config(a, CLUSTER_SHAPE).ok()?;
    cluster_sms_target(&spec, sms, id)
}

const CLUSTER_SHAPE: ls::cublasLtMatmulAlgoConfigAttributes_t =
    ls::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID;

/// Whether cluster shape `cluster_id` has 4 or more CTAs (cublasLtClusterShape_t: 4 = 4x1,
/// 6 = 2x2, 7 = 4x2, 8 = 1x4, 9 = 2x4, 10 = 4x4, 11-16 = 8x1 … 1x16; 2, 3, 5 and 17+ are
/// clusters of 1-2 CTAs or of odd sizes).
fn large_cluster(cluster_id: u32) -> bool {
    matches!(cluster_id, 4 | 6..=16)
}

/// The SM-count target `spec` ("from:to,...") gives a partition of `sms` SMs for an algorithm
/// with cluster shape `cluster_id`, if its clusters have 4 or more CTAs.
fn cluster_sms_target(spec: &str, sms: u32, cluster_id: u32) -> Option<u32> {
    if !large_cluster(cluster_id) {
        return None;
    }
    spec.split(',').find_map(|item| {
        let (from, to) = item.split_once(':')?;
        let (from, to) = (
            from.trim().parse::<u32>().ok()?,
            to.trim().parse::<u32>().ok()?,
        );
        (from == sms && (1..=sms).contains(&to)).then_some(to)
    })
}

/// Whether cuBLASLt accepts `a` for this product within `ws_bytes` of workspace.
fn check(
    h: &LtHandle,
    desc: ls::cublasLtMatmulDesc_t,
    (la, lb, ld): (
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
    ),
    a: &ls::cublasLtMatmulAlgo_t,
    ws_bytes: usize,
) -> bool {
    // SAFETY: valid descriptors; `res` is written by the call.
    let mut res: ls::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
    let r = unsafe { ls::cublasLtMatmulAlgoCheck(h.0, desc, la, lb, ld, ld, a, &mut res) };
    r == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS && res.workspaceSize <= ws_bytes
}

fn capturing(stream: ds::CUstream) -> bool {
    let mut st = ds::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: plain query on a valid stream.
    let r = unsafe { ds::cuStreamIsCapturing(stream, &mut st) };
    r != ds::CUresult::CUDA_SUCCESS
        || st != ds::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
}

impl LtCache {
    /// Times each candidate algorithm (3 runs after a warm-up, into a scratch output) and keeps
    /// the fastest. Runs once per shape, during warm-up.
    #[allow(clippy::too_many_arguments)]
    fn tune(
        &mut self,
        h: &LtHandle,
        stream: ds::CUstream,
        key: Key,
        x: u64,
        w: u64,
        bias: u64,
        alpha: f32,
    ) -> Result<()> {
        let g = key.g;
        let esz = if g.out_f32 { 4 } else { 2 };
        let extent = ((g.batch.max(1) - 1) as i64 * g.stride_y
            + (g.m as i64 - 1) * g.ldy as i64
            + g.n as i64) as usize
            * esz;
        if self.scratch.as_ref().is_none_or(|b| b.bytes < extent + 256) {
            self.scratch = Some(super::device::DBuf::new(extent + 256)?);
        }
        let y = self.scratch.as_ref().unwrap().ptr;
        // Keep the scratch output as aligned as the real one.
        let (ws, wsb) = (self.workspace, self.workspace_bytes);
        let plan = self.plans.get_mut(&key).unwrap();
        let cands = std::mem::take(&mut plan.candidates);
        Plan::set_bias(plan.desc, g.epi, bias)?;
        let beta: f32 = if g.accumulate { 1.0 } else { 0.0 };
        let mut ev = [std::ptr::null_mut(); 2];
        for e in ev.iter_mut() {
            // SAFETY: plain creation.
            unsafe { ds::cuEventCreate(e, 0) };
        }
        let mut best = (f32::INFINITY, plan.algo);
        for algo in cands {
            let run = |n: usize| -> bool {
                (0..n).all(|_| {
                    // SAFETY: as in `matmul`, output into the scratch buffer.
                    unsafe {
                        plan.enqueue(h, plan.desc, &algo, alpha, beta, w, x, y, (ws, wsb), stream)
                    }
                    .is_ok()
                })
            };
            if !run(1) {
                continue;
            }
            let mut ms = 0f32;
            // SAFETY: events and stream are valid; the stream is not capturing.
            let ok = unsafe {
                ds::cuEventRecord(ev[0], stream);
                let ok = run(3);
                ds::cuEventRecord(ev[1], stream);
                ds::cuEventSynchronize(ev[1]);
                ds::cuEventElapsedTime_v2(&mut ms, ev[0], ev[1]);
                ok
            };
            if ok && ms < best.0 {
                best = (ms, algo);
            }
        }
        for e in ev {
            // SAFETY: created above.
            unsafe { ds::cuEventDestroy_v2(e) };
        }
        plan.algo = best.1;
        Ok(())
    }
}

fn make_plan(h: &LtHandle, key: &Key, ws_bytes: usize) -> Result<Plan> {
    use ls::cublasLtMatrixLayoutAttribute_t as LA;
    let g = key.g;
    let bf = ls::cudaDataType::CUDA_R_16BF;
    let out_t = if g.out_f32 {
        ls::cudaDataType::CUDA_R_32F
    } else {
        bf
    };
    let desc = make_desc(&g, None)?;
    // A = W: [N][K] row-major = col-major K×N (ld ldw), op T; or [K][N] = col-major N×K, op N.
    let la = if g.w_kn {
        lt(
            lr::create_matrix_layout(bf, g.n as u64, g.k as u64, g.ldw as i64),
            "layout A",
        )?
    } else {
        lt(
            lr::create_matrix_layout(bf, g.k as u64, g.n as u64, g.ldw as i64),
            "layout A",
        )?
    };
    let lb = lt(
        lr::create_matrix_layout(bf, g.k as u64, g.m as u64, g.ldx as i64),
        "layout B",
    )?;
    let ld = lt(
        lr::create_matrix_layout(out_t, g.n as u64, g.m as u64, g.ldy as i64),
        "layout D",
    )?;
    if g.batch > 1 {
        for (l, s) in [(la, g.stride_w), (lb, g.stride_x), (ld, g.stride_y)] {
            let c = g.batch as i32;
            // SAFETY: documented attribute types (i32 count, i64 stride).
            unsafe {
                lt(
                    lr::set_matrix_layout_attribute(
                        l,
                        LA::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        &c as *const i32 as *const c_void,
                        4,
                    ),
                    "batch count",
                )?;
                lt(
                    lr::set_matrix_layout_attribute(
                        l,
                        LA::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        &s as *const i64 as *const c_void,
                        8,
                    ),
                    "batch stride",
                )?;
            }
        }
    }
    let heur = heuristic(h, key, desc, (la, lb, ld), ws_bytes)?;
    let pick = study_pick(&g, &heur).unwrap_or_else(|| preferred(&g, &heur));
    let candidates = if heur.len() > 1 {
        heur.clone()
    } else {
        Vec::new()
    };
    let algo = forced(h, &g, desc, (la, lb, ld), heur[pick], ws_bytes);
    Ok(Plan {
        desc,
        la,
        lb,
        ld,
        algo,
        candidates,
        second: heur.get(1).copied(),
        narrow: Vec::new(),
    })
}

/// Study knob for benchmarks: `PI0_LT_PICK="m,n,k:i;..."` runs the heuristic's candidate `i`
/// (0 = its first choice) for GEMMs of that shape, and lists the candidates on stderr, so that
/// algorithms can be compared inside the captured graphs rather than one by one.
fn study_pick(g: &Gemm, heur: &[ls::cublasLtMatmulAlgo_t]) -> Option<usize> {
    let spec = std::env::var("PI0_LT_PICK").ok()?;
    let pick = spec
        .split(';')
        .find_map(|item| shape_entry(item, g)?.trim().parse::<usize>().ok())?;
    for (i, a) in heur.iter().enumerate() {
        use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
        let get = |attr: CA| match algo_config(a, attr) {
            Ok(v) => format!("{v}"),
            Err(r) => format!("{r:?}"),
        };
        eprintln!(
            "lt study {}x{}x{} candidate {i}{}: algo {} tile {} splitK {} reduction {} stages {} swizzle {} cluster {} (tiles possible {:?})",
            g.m,
            g.n,
            g.k,
            if i == pick { " (picked)" } else { "" },
            get(CA::CUBLASLT_ALGO_CONFIG_ID),
            get(CA::CUBLASLT_ALGO_CONFIG_TILE_ID),
            get(CA::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
            get(CA::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
            get(CA::CUBLASLT_ALGO_CONFIG_STAGES_ID),
            get(CA::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
            get(CA::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
            tile_caps(a),
        );
    }
    Some(pick.min(heur.len() - 1))
}

/// Study knob for benchmarks: `PI0_LT_FORCE="m,n,k:tile=T,cluster=C,stages=S;..."` sets
/// those configuration ids (cuBLASLt's enums: tile 23 = 128x256, 32 = 128x192, 24 = 256x128;
/// cluster 2 = 1x1, 3 = 2x1, 5 = 1x2) on the picked algorithm of that shape and keeps the
/// result if `cublasLtMatmulAlgoCheck` accepts it; says on stderr what happened either way.
/// cuBLASLt's view is column-major, so its tile is (weight rows) x (token rows).
fn forced(
    h: &LtHandle,
    g: &Gemm,
    desc: ls::cublasLtMatmulDesc_t,
    (la, lb, ld): (
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
    ),
    algo: ls::cublasLtMatmulAlgo_t,
    ws_bytes: usize,
) -> ls::cublasLtMatmulAlgo_t {
    let Ok(spec) = std::env::var("PI0_LT_FORCE") else {
        return algo;
    };
    let Some((settings, values)) = force_settings(&spec, g) else {
        return algo;
    };
    let mut a = algo;
    for (attr, bytes, v) in values {
        // SAFETY: a 4-byte value, `bytes` of it read (u16 ids are little-endian prefixes).
        let r = unsafe {
            ls::cublasLtMatmulAlgoConfigSetAttribute(
                &mut a,
                attr,
                &v as *const u32 as *const c_void,
                bytes,
            )
        };
        if r != ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            eprintln!(
                "lt force {}x{}x{}: {attr:?}={v} not set: {r:?}",
                g.m, g.n, g.k
            );
            return algo;
        }
    }
    let ok = check(h, desc, (la, lb, ld), &a, ws_bytes);
    eprintln!(
        "lt force {}x{}x{}: {settings} {}",
        g.m,
        g.n,
        g.k,
        if ok { "accepted" } else { "rejected" }
    );
    if ok {
        a
    } else {
        algo
    }
}

/// What a study knob's entry `m,n,k:value` says for `g`: the value, if the shape is `g`'s.
fn shape_entry<'a>(item: &'a str, g: &Gemm) -> Option<&'a str> {
    let (shape, value) = item.split_once(':')?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    (dims == [g.m, g.n, g.k]).then_some(value)
}

/// One algorithm configuration attribute to set: (attribute, size in bytes, value).
type ConfigValue = (ls::cublasLtMatmulAlgoConfigAttributes_t, usize, u32);

/// The `PI0_LT_FORCE` entry for `g`'s shape: its text and the (attribute, size in bytes,
/// value) it sets. Unknown keys and values that are not numbers are ignored.
fn force_settings(spec: &str, g: &Gemm) -> Option<(String, Vec<ConfigValue>)> {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
    let settings = spec
        .split(';')
        .find_map(|item| shape_entry(item, g))?
        .trim()
        .to_string();
    let values = settings
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim().parse::<u32>().ok()?;
            let (attr, bytes) = match k.trim() {
                "tile" => (CA::CUBLASLT_ALGO_CONFIG_TILE_ID, 4),
                "stages" => (CA::CUBLASLT_ALGO_CONFIG_STAGES_ID, 4),
                "cluster" => (CA::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2),
                "splitk" => (CA::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4),
                "swizzle" => (CA::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 4),
                _ => return None,
            };
            Some((attr, bytes, v))
        })
        .collect();
    Some((settings, values))
}

/// The tile ids an algorithm supports (CUBLASLT_ALGO_CAP_TILE_IDS), for the study listing.
fn tile_caps(a: &ls::cublasLtMatmulAlgo_t) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut n = 0usize;
    // SAFETY: a 256-byte buffer; the call writes at most that and reports how much.
    let r = unsafe {
        ls::cublasLtMatmulAlgoCapGetAttribute(
            a,
            ls::cublasLtMatmulAlgoCapAttributes_t::CUBLASLT_ALGO_CAP_TILE_IDS,
            ids.as_mut_ptr() as *mut c_void,
            std::mem::size_of_val(&ids),
            &mut n,
        )
    };
    if r != ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Vec::new();
    }
    ids[..(n / 4).min(64)].to_vec()
}

/// One attribute of an algorithm's configuration (all are unsigned, at most 4 bytes).
fn algo_config(
    a: &ls::cublasLtMatmulAlgo_t,
    attr: ls::cublasLtMatmulAlgoConfigAttributes_t,
) -> std::result::Result<u32, ls::cublasStatus_t> {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
    // The two shape ids are u16, the other attributes 4 bytes; sizes must match.
    let bytes = match attr {
        CA::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID | CA::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID => 2,
        _ => 4,
    };
    let mut v = 0u32;
    let mut n = 0usize;
    // SAFETY: a 4-byte buffer, `bytes` <= 4 of it written.
    let r = unsafe {
        ls::cublasLtMatmulAlgoConfigGetAttribute(
            a,
            attr,
            &mut v as *mut u32 as *mut c_void,
            bytes,
            &mut n,
        )
    };
    if r == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(v)
    } else {
        Err(r)
    }
}

/// Which heuristic candidate to run. The heuristic's first choice, except for deep GEMMs
/// with few output tiles (K ≥ 8 N and at most 640 rows: the Gemma-2B MLP down projection,
/// 2048 outputs over K = 16384), where its first split-K 2 candidate is taken: one wave of
/// small tiles left the down projection at 54 % of peak, and in the captured encoder graph
/// on the H100 split-K 2 (fp32 reduction, a fixed order, so still deterministic) made the
/// encoder 0.11 ms faster (docs/gpu-notes.md v18). `PI0_LT_PREFER=off` keeps the first choice.
fn preferred(g: &Gemm, heur: &[ls::cublasLtMatmulAlgo_t]) -> usize {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
    let deep = g.k >= 8 * g.n && g.m <= 640 && g.batch <= 1;
    if !deep || std::env::var("PI0_LT_PREFER").is_ok_and(|v| v == "off") {
        return 0;
    }
    heur.iter()
        .position(|a| algo_config(a, CA::CUBLASLT_ALGO_CONFIG_SPLITK_NUM) == Ok(2))
        .unwrap_or(0)
}

/// The matmul descriptor of `g`: transposes, epilogue, bias type, and an SM-count target for
/// streams confined to a partition.
fn make_desc(g: &Gemm, sm_target: Option<u32>) -> Result<ls::cublasLtMatmulDesc_t> {
    use ls::cublasLtMatmulDescAttributes_t as DA;
    let out_t = if g.out_f32 {
        ls::cudaDataType::CUDA_R_32F
    } else {
        ls::cudaDataType::CUDA_R_16BF
    };
    let desc = lt(
        lr::create_matmul_desc(
            ls::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ls::cudaDataType::CUDA_R_32F,
        ),
        "desc",
    )?;
    // SAFETY: attribute values are plain integers of the documented types.
    unsafe {
        let set = |a: DA, v: *const c_void, n: usize| {
            lt(lr::set_matmul_desc_attribute(desc, a, v, n), "desc attr")
        };
        let ta: i32 = if g.w_kn { 0 } else { 1 }; // CUBLAS_OP_N / CUBLAS_OP_T
        let tb: i32 = 0;
        set(
            DA::CUBLASLT_MATMUL_DESC_TRANSA,
            &ta as *const i32 as *const c_void,
            4,
        )?;
        set(
            DA::CUBLASLT_MATMUL_DESC_TRANSB,
            &tb as *const i32 as *const c_void,
            4,
        )?;
        let epi = match g.epi {
            Epi::None => ls::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epi::Bias => ls::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epi::GeluBias => ls::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        set(
            DA::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epi as *const _ as *const c_void,
            std::mem::size_of_val(&epi),
        )?;
        if g.epi != Epi::None {
            // Bias in the output's type (f32 biases for the f32 residual stream).
            let bt = out_t;
            set(
                DA::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bt as *const _ as *const c_void,
                std::mem::size_of_val(&bt),
            )?;
        }
    }
    if let Some(sms) = sm_target {
        let v = sms as i32;
        // SAFETY: documented attribute type (i32).
        lt(
            unsafe {
                lr::set_matmul_desc_attribute(
                    desc,
                    DA::CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET,
                    &v as *const i32 as *const c_void,
                    4,
                )
            },
            "SM count target",
        )?;
    }
    Ok(desc)
}

/// The heuristic's algorithms for `key` (best first; at most 8 that it says will run).
fn heuristic(
    h: &LtHandle,
    key: &Key,
    desc: ls::cublasLtMatmulDesc_t,
    (la, lb, ld): (
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
        ls::cublasLtMatrixLayout_t,
    ),
    ws_bytes: usize,
) -> Result<Vec<ls::cublasLtMatmulAlgo_t>> {
    use ls::cublasLtMatmulPreferenceAttributes_t as PA;
    let g = key.g;
    let pref = lt(lr::create_matmul_pref(), "pref")?;
    // SAFETY: documented attribute types (u64 bytes, u32 alignments).
    unsafe {
        let wsb = ws_bytes as u64;
        lt(
            lr::set_matmul_pref_attribute(
                pref,
                PA::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &wsb as *const u64 as *const c_void,
                8,
            ),
            "pref ws",
        )?;
        let attrs = [
            (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[1]),
            (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[0]),
            (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]),
            (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2]),
        ];
        for (a, v) in attrs {
            let v = v as u32;
            lt(
                lr::set_matmul_pref_attribute(pref, a, &v as *const u32 as *const c_void, 4),
                "pref align",
            )?;
        }
        // PI0_LT_CANDS: how many candidates to ask for (benchmarks sweeping PI0_LT_PICK).
        let want = std::env::var("PI0_LT_CANDS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(8)
            .clamp(1, 128);
        let mut res: Vec<ls::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); want];
        let mut count = 0i32;
        let r = ls::cublasLtMatmulAlgoGetHeuristic(
            h.0,
            desc,
            la,
            lb,
            ld,
            ld,
            pref,
            want as i32,
            res.as_mut_ptr(),
            &mut count,
        );
        let _ = lr::destroy_matmul_pref(pref);
        let ok: Vec<ls::cublasLtMatmulAlgo_t> = res[..count.max(0) as usize]
            .iter()
            .filter(|r| r.state == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect();
        if r != ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS || ok.is_empty() {
            return Err(Error::Gpu(format!(
                "cuBLASLt has no algorithm for {g:?} (align {:?}): {r:?}",
                key.align
            )));
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_sms_targets_apply_to_large_clusters_of_the_named_partition_only() {
        let spec = "68:56, 92:88";
        // 2x4 (9) and 4x2 (7) clusters on 68 SMs get 56; on 92, 88.
        assert_eq!(cluster_sms_target(spec, 68, 9), Some(56));
        assert_eq!(cluster_sms_target(spec, 68, 7), Some(56));
        assert_eq!(cluster_sms_target(spec, 92, 6), Some(88));
        // 1x1, 2x1, 1x2 clusters keep the partition's own target.
        for id in [2, 3, 5] {
            assert_eq!(cluster_sms_target(spec, 68, id), None);
        }
        // Partitions not named, and targets above the partition or zero, are ignored.
        assert_eq!(cluster_sms_target(spec, 64, 9), None);
        assert_eq!(cluster_sms_target("68:70,64:0", 68, 9), None);
        assert_eq!(cluster_sms_target("68:70,64:0", 64, 9), None);
        assert_eq!(cluster_sms_target("garbage", 68, 9), None);
    }
    use crate::gpu::device::DBuf;
    use rand::{Rng, SeedableRng};

    /// A plan's narrow variant (an SM-count target, as on a green or MPS partition) must give
    /// the whole GPU's results bit for bit: the partitioned pipeline is checked against
    /// sequential forwards on the whole GPU. Fresh random bf16 inputs, fp32 outputs; sampled
    /// outputs also against f64 products, so a variant that computes nothing cannot pass.
    #[test]
    fn force_settings_match_one_shape_and_known_keys() {
        use ls::cublasLtMatmulAlgoConfigAttributes_t as CA;
        let spec = "532,2048,16384:cluster=5, tile=23;512,1152,4304:stages=bad,swizzle=1,x=3";
        let (text, v) = force_settings(spec, &Gemm::linear(532, 2048, 16384)).unwrap();
        assert_eq!(text, "cluster=5, tile=23");
        assert_eq!(
            v,
            vec![
                (CA::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2, 5),
                (CA::CUBLASLT_ALGO_CONFIG_TILE_ID, 4, 23)
            ]
        );
        let (_, v) = force_settings(spec, &Gemm::linear(512, 1152, 4304)).unwrap();
        assert_eq!(v, vec![(CA::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 4, 1)]);
        assert!(force_settings(spec, &Gemm::linear(532, 2560, 2048)).is_none());
    }

    #[test]
    fn gpu_narrow_variants_compute_the_whole_gpu_product() {
        let test = "gpu_narrow_variants_compute_the_whole_gpu_product";
        let Some((ctx, _kernels)) = crate::gpu::device::test_kernels(test) else {
            return;
        };
        let stream = ctx.new_stream().unwrap();
        let s = stream.cu_stream();
        let h = LtHandle::new().unwrap();
        let wsb = 32 << 20;
        let ws = DBuf::new(wsb).unwrap();
        let mut cache = LtCache::new(ws.ptr, wsb);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // The LLM's q|k|v, gate|up and down projections, the expert's action MLP at chunk 50.
        for (m, n, k) in [
            (532, 2560, 2048),
            (532, 32768, 2048),
            (532, 2048, 16384),
            (50, 1024, 1024),
        ] {
            let mut random = |len: usize| -> Vec<half::bf16> {
                (0..len)
                    .map(|_| half::bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
                    .collect()
            };
            let (x, w) = (random(m * k), random(n * k));
            let (dx, dw) = (DBuf::from_slice(&x).unwrap(), DBuf::from_slice(&w).unwrap());
            let dy = DBuf::new(m * n * 4).unwrap();
            let mut outs = Vec::new();
            for target in [None, Some(64), Some(40), Some(116)] {
                cache.sm_target = target;
                let g = Gemm::linear(m, n, k).f32out();
                cache
                    .matmul(&h, s, g, dx.ptr, dw.ptr, dy.ptr, 0, 1.0)
                    .unwrap();
                stream.synchronize().unwrap();
                outs.push(dy.download::<f32>(m * n).unwrap());
            }
            // Partition variants compute the same product: bitwise where they keep the whole
            // GPU's algorithm, within fp32 reordering where `partition_algo` changes it.
            let mut bitwise = true;
            for (i, y) in outs.iter().enumerate().skip(1) {
                let (mut d2, mut n2) = (0f64, 0f64);
                for (a, b) in y.iter().zip(&outs[0]) {
                    assert!(a.is_finite(), "{m}x{n}x{k}: SM target #{i} non-finite");
                    d2 += (*a as f64 - *b as f64).powi(2);
                    n2 += (*b as f64).powi(2);
                }
                let rel = (d2 / n2).sqrt();
                assert!(
                    rel < 1e-6,
                    "{m}x{n}x{k}: SM target #{i} differs from the whole GPU by {rel:.3e}"
                );
                bitwise &= y == &outs[0];
            }
            let (mut err, mut norm) = (0f64, 0f64);
            for t in (0..m).step_by(m / 7 + 1) {
                for j in (0..n).step_by(13) {
                    let want: f64 = (0..k)
                        .map(|i| x[t * k + i].to_f64() * w[j * k + i].to_f64())
                        .sum();
                    let got = outs[0][t * n + j] as f64;
                    assert!(got.is_finite(), "{m}x{n}x{k}: non-finite at ({t}, {j})");
                    err += (got - want).powi(2);
                    norm += want * want;
                }
            }
            let rel = (err / norm).sqrt();
            println!(
                "cuBLASLt {m}x{n}x{k}: narrow variants {}, rel L2 vs f64 {rel:.2e}",
                if bitwise {
                    "bitwise equal"
                } else {
                    "equal within 1e-6"
                }
            );
            // fp32 accumulation over k = 16384 terms: ~2e-5.
            assert!(rel < 1e-4, "{m}x{n}x{k}: rel L2 {rel:.3e}");
        }
    }
}
