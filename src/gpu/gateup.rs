//! The LLM's gate|up projection with GELU·up in its epilogue (kernels/gateup.cu; Hopper,
//! `PI0_LLM_MLP=fused`): one kernel writes h = gelu_tanh(X·Wgᵀ) ⊙ (X·Wuᵀ) instead of cuBLASLt's
//! [rows][2F] product followed by gelu_mul_k, so the 2F-wide intermediate never reaches the L2.
//! A study path for the partitioned frame (docs/partition-notes.md): off by default until a
//! device run shows it faster.

use cudarc::driver::sys;

use super::device::{cu, Kernels, TensorMap, A, K};
use crate::error::{Error, Result};

/// k per stage (kernels/gateup.cu `GU_BK`) and ring stages.
const BK: usize = 64;
const STAGES: usize = 4;

/// The kernel's shapes (kernels/gateup.cu `GU_KERNEL`): 2 consumer warpgroups of 64 token
/// rows × 128 output columns, or 3 × 64 columns, the latter also in clusters of 2 or 4 CTAs
/// along the columns that share the X tile by TMA multicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    Rows128,
    Rows192,
    Rows192Cluster2,
    Rows192Cluster4,
}

impl Variant {
    pub(super) const ALL: [Variant; 4] = [
        Variant::Rows128,
        Variant::Rows192,
        Variant::Rows192Cluster2,
        Variant::Rows192Cluster4,
    ];

    fn consumers(self) -> usize {
        match self {
            Variant::Rows128 => 2,
            _ => 3,
        }
    }

    /// Token rows per CTA.
    fn rows(self) -> usize {
        64 * self.consumers()
    }

    /// Output columns per CTA (as many gate and as many up weight rows).
    fn columns(self) -> usize {
        match self {
            Variant::Rows128 => 128,
            _ => 64,
        }
    }

    /// CTAs per cluster, along the column tiles.
    fn cluster(self) -> usize {
        match self {
            Variant::Rows192Cluster2 => 2,
            Variant::Rows192Cluster4 => 4,
            _ => 1,
        }
    }

    pub(super) fn kernel(self) -> K {
        match self {
            Variant::Rows128 => K::GateUpGelu,
            Variant::Rows192 => K::GateUpGelu3,
            Variant::Rows192Cluster2 => K::GateUpGelu3C2,
            Variant::Rows192Cluster4 => K::GateUpGelu3C4,
        }
    }

    /// Dynamic shared memory of one CTA: the ring, 1 KB to align it for the 128-byte swizzle,
    /// 1 KB of barriers.
    pub(super) fn smem_bytes(self) -> usize {
        STAGES * (self.rows() * BK * 2 + 2 * self.columns() * BK * 2) + 2048
    }

    /// Whether this shape tiles a hidden width of `f` (whole clusters of column tiles).
    pub(super) fn tiles(self, f: usize) -> bool {
        f % (self.columns() * self.cluster()) == 0
    }

    /// The unclustered shape that pads `rows` least (ties: the smaller CTA). Study knobs:
    /// `PI0_GATEUP_ROWS=128|192` forces a shape, `PI0_GATEUP_CLUSTER=2|4` the 192-row shape
    /// in clusters of that many CTAs.
    pub(super) fn choose(rows: usize, f: usize) -> Variant {
        let forced = match (
            std::env::var("PI0_GATEUP_CLUSTER").as_deref(),
            std::env::var("PI0_GATEUP_ROWS").as_deref(),
        ) {
            (Ok("2"), _) => Some(Variant::Rows192Cluster2),
            (Ok("4"), _) => Some(Variant::Rows192Cluster4),
            (_, Ok("128")) => Some(Variant::Rows128),
            (_, Ok("192")) => Some(Variant::Rows192),
            _ => None,
        };
        if let Some(v) = forced.filter(|v| v.tiles(f)) {
            return v;
        }
        let padded = |v: Variant| rows.div_ceil(v.rows()) * v.rows();
        if padded(Variant::Rows192) < padded(Variant::Rows128) {
            Variant::Rows192
        } else {
            Variant::Rows128
        }
    }
}

/// Whether `kernels` hold the real kernel: it uses wgmma, so only an sm_90a build does (on
/// other GPUs its body is a trap).
pub(super) fn supported(kernels: &Kernels) -> bool {
    kernels.arch == "sm_90a"
}

/// Raises every shape's dynamic shared memory limit on `dev`.
pub(super) fn prepare(kernels: &Kernels, dev: sys::CUdevice) -> Result<()> {
    for v in Variant::ALL {
        kernels.set_max_smem(v.kernel(), v.smem_bytes() as i32, dev)?;
    }
    Ok(())
}

/// Whether the fused kernel covers an MLP of `rows` tokens, model width `width` (the GEMM's k)
/// and hidden width `f`. Below a tile of rows cuBLASLt's small-M kernels are the better choice.
pub(super) fn covers(rows: usize, width: usize, f: usize) -> bool {
    rows >= Variant::Rows128.rows() && width % BK == 0 && f % 128 == 0 && width > 0
}

/// A 2-D bf16 tensor map over a row-major `[rows][inner]` matrix at `base`, read in boxes of
/// `box_rows` × 64 elements with the 128-byte swizzle wgmma expects; rows past `rows` read as 0.
fn tensor_map(base: u64, inner: usize, rows: usize, box_rows: usize) -> Result<TensorMap> {
    let mut map = TensorMap([0; 16]);
    let dims = [inner as u64, rows as u64];
    let strides = [(inner * 2) as u64];
    let boxes = [BK as u32, box_rows as u32];
    let elem = [1u32, 1];
    // SAFETY: every array has the rank's length (2, and 1 stride); `map` is 128 bytes,
    // 64-aligned.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map as *mut TensorMap as *mut sys::CUtensorMap,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            base as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    cu(r, "cuTensorMapEncodeTiled")?;
    Ok(map)
}

/// One h = gelu_tanh(x·Wgᵀ) ⊙ (x·Wuᵀ): x is `[rows][width]` bf16, `w` the `[2f][width]`
/// gate|up weight (gate rows first), h `[rows][f]` bf16 (device pointers).
#[derive(Clone, Copy, Debug)]
pub(super) struct Problem {
    pub x: u64,
    pub rows: usize,
    pub w: u64,
    pub width: usize,
    pub f: usize,
    pub h: u64,
}

/// Enqueues `p` on `stream` as kernel shape `v` (`Variant::choose` picks the default).
pub(super) fn launch(
    kernels: &Kernels,
    v: Variant,
    stream: sys::CUstream,
    pdl: bool,
    p: &Problem,
) -> Result<()> {
    let Problem {
        x,
        rows,
        w,
        width,
        f,
        h,
    } = *p;
    if !(covers(rows, width, f) && v.tiles(f)) {
        return Err(Error::Gpu(format!(
            "fused gate|up {v:?}: {rows} rows, width {width}, hidden {f} not covered"
        )));
    }
    // In a cluster each CTA loads its 1/cluster share of the X rows for all.
    let tx = tensor_map(x, width, rows, v.rows() / v.cluster())?;
    let tw = tensor_map(w, width, 2 * f, v.columns())?;
    kernels.launch_cluster(
        v.kernel(),
        (rows.div_ceil(v.rows()) as u32, (f / v.columns()) as u32, 1),
        (128 * (v.consumers() + 1)) as u32,
        v.smem_bytes() as u32,
        stream,
        &[
            A::Map(tx),
            A::Map(tw),
            A::P(h),
            A::I(rows as i32),
            A::I(f as i32),
            A::I(width as i32),
        ],
        pdl,
        (1, v.cluster() as u32, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::device::DBuf;

    fn gelu_tanh(x: f64) -> f64 {
        0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
    }

    fn bf16(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    /// Fresh uniform values in [-a, a) rounded to bf16 (as bits and as the f64 they hold).
    fn random_bf16(n: usize, a: f32, seed: u64) -> (Vec<u16>, Vec<f64>) {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bits: Vec<u16> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                bf16((2.0 * u - 1.0) * a)
            })
            .collect();
        let vals = bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f64())
            .collect();
        (bits, vals)
    }

    fn check(
        kernels: &Kernels,
        stream: sys::CUstream,
        v: Variant,
        (rows, width, f): (usize, usize, usize),
    ) {
        let (xb, x) = random_bf16(rows * width, 1.0, 11 + rows as u64);
        let scale = 1.0 / (width as f32).sqrt();
        let (wb, w) = random_bf16(2 * f * width, 2.0 * scale, 29 + f as u64);
        let dx = DBuf::from_slice(&xb).unwrap();
        let dw = DBuf::from_slice(&wb).unwrap();
        // NaN first (0x7fc0), so that a tile the kernel skips cannot pass.
        let dh = DBuf::from_slice(&vec![0x7fc0u16; rows * f]).unwrap();
        // SAFETY: the pageable uploads above may still be in flight (docs/gpu-notes.md v17).
        cu(unsafe { sys::cuCtxSynchronize() }, "sync").unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let p = Problem {
                x: dx.ptr,
                rows,
                w: dw.ptr,
                width,
                f,
                h: dh.ptr,
            };
            launch(kernels, v, stream, false, &p).unwrap();
            // SAFETY: plain stream synchronisation.
            cu(unsafe { sys::cuStreamSynchronize(stream) }, "sync").unwrap();
            runs.push(dh.download::<u16>(rows * f).unwrap());
        }
        assert!(
            runs[0] == runs[1],
            "{v:?} {rows}x{width}x{f}: reruns differ"
        );
        let (mut err, mut norm) = (0f64, 0f64);
        for t in 0..rows {
            let xr = &x[t * width..(t + 1) * width];
            for j in 0..f {
                let dot = |row: usize| -> f64 {
                    let wr = &w[row * width..(row + 1) * width];
                    xr.iter().zip(wr).map(|(a, b)| a * b).sum()
                };
                let want = gelu_tanh(dot(j)) * dot(f + j);
                let got = half::bf16::from_bits(runs[0][t * f + j]).to_f64();
                assert!(
                    got.is_finite(),
                    "{rows}x{width}x{f}: non-finite at ({t}, {j})"
                );
                err += (got - want).powi(2);
                norm += want * want;
            }
        }
        let rel = (err / norm).sqrt();
        println!("fused gate|up + GELU·up, {v:?}, {rows}x{width}x{f}: rel L2 {rel:.2e} from f64");
        // bf16 output rounding alone is ~1e-3 (RMS) relative.
        assert!(rel < 4e-3, "{v:?} {rows}x{width}x{f}: rel L2 {rel:.3e}");
    }

    #[test]
    fn gpu_fused_gate_up_matches_f64() {
        let test = "gpu_fused_gate_up_matches_f64";
        let Some((ctx, kernels)) = crate::gpu::device::test_kernels(test) else {
            return;
        };
        if !supported(&kernels) {
            println!("skipping {test}: the kernel uses wgmma (sm_90a builds only)");
            return;
        }
        prepare(&kernels, ctx.cu_device()).unwrap();
        let stream = ctx.new_stream().unwrap();
        // The π0 LLM's width (k = 2048) at 2 views + prompt 20 (532 rows: a ragged last token
        // tile in both shapes) with a narrow hidden width to keep the f64 reference short; a
        // full and a partial tile; a single k stage.
        for v in Variant::ALL {
            for shape in [(532, 2048, 256), (200, 512, 512), (128, 64, 256)] {
                check(&kernels, stream.cu_stream(), v, shape);
            }
        }
    }

    #[test]
    fn the_shape_that_pads_least_is_chosen() {
        if std::env::var_os("PI0_GATEUP_ROWS").is_some()
            || std::env::var_os("PI0_GATEUP_CLUSTER").is_some()
        {
            return;
        }
        // 2 views + prompt 20: 576 rows in 192-row tiles against 640 in 128-row ones.
        assert_eq!(Variant::choose(532, 16384), Variant::Rows192);
        // 1 view + prompt 20 (276): 384 both ways; the smaller CTA wins the tie.
        assert_eq!(Variant::choose(276, 16384), Variant::Rows128);
        // 3 views + prompt 48 (816): 896 against 960.
        assert_eq!(Variant::choose(816, 16384), Variant::Rows128);
        for v in Variant::ALL {
            assert!(v.smem_bytes() <= 227 * 1024, "{v:?}");
            assert!(v.tiles(16384), "{v:?}");
        }
        // A cluster of 4 needs whole groups of 4 column tiles of 64.
        assert!(!Variant::Rows192Cluster4.tiles(128));
    }

    #[test]
    fn the_kernel_covers_the_llm_and_leaves_the_expert_to_cublaslt() {
        assert!(covers(532, 2048, 16384));
        assert!(covers(276, 2048, 16384));
        // The expert's 51-65 rows, and shapes off the tile grid.
        assert!(!covers(51, 1024, 4096));
        assert!(!covers(532, 2000, 16384));
        assert!(!covers(532, 2048, 1000));
    }
}
