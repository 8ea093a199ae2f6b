//! Launch planning for the decoder's weight-streaming GEMM (kernels/skinny.cu): which kernel
//! variant for the token count, how many split-K slices for the weight shape, and the shared
//! memory it needs. The partial sums are consumed by the layer's next kernel.

use cudarc::driver::sys;

use super::device::{Kernels, A, K};
use crate::error::Result;

/// Weight rows per CTA, k per pipeline stage, pipeline depths: as in kernels/skinny.cu.
const BN: usize = 128;
const BK: usize = 64;
const STAGES: usize = 4;
/// The shallower ring for small SM partitions (three CTAs per SM instead of two).
const STAGES_SMALL: usize = 3;
/// Shared memory the driver reserves per resident CTA (sm_80 and later).
const CTA_RESERVED_SMEM: usize = 1024;
/// Token rows the kernel variants cover (10 tiles of 8).
pub const MAX_ROWS: usize = 80;

/// Element type of X and W (fp32 accumulation either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operands {
    Bf16,
    /// fp16: 3 more mantissa bits, for inputs whose range allows it.
    F16,
}

/// One weight GEMM's launch: `part[splits][rows][n] = X[rows][k] · W[n][k]ᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgemmPlan {
    pub kernel: K,
    pub grid: (u32, u32, u32),
    pub smem: u32,
    /// Split-K slices: slice s takes k tiles [s·T/splits, (s+1)·T/splits) of the T = k / 64.
    pub splits: usize,
    pub operands: Operands,
}

/// How the split-K count is chosen for the SMs a GEMM may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitRule {
    /// The count whose busiest SM streams the fewest bytes (below): a study rule
    /// (`PI0_WGEMM_SPLITS=balanced`); on the H100 it slowed the whole-GPU decoder 8.25 → 8.54
    /// ms (QKV's 120 CTAs of 2-3 k tiles lose to 160 of 2: the GEMMs are latency-bound).
    Balanced,
    /// Powers of two until `target_ctas(sms)` CTAs: the default.
    Pow2,
}

/// Whether the weight-streaming kernel covers this GEMM (k a multiple of the stage depth and
/// the token rows within the widest variant).
pub fn supports(rows: usize, k: usize) -> bool {
    (1..=MAX_ROWS).contains(&rows) && k >= BK && k % BK == 0
}

/// The kernels by token tiles (2, 4, 6, 8, 10), for each ring depth and operand type.
const DEEP: [K; 5] = [K::Wgemm2, K::Wgemm4, K::Wgemm6, K::Wgemm8, K::Wgemm10];
const SHALLOW: [K; 5] = [
    K::Wgemm2S3,
    K::Wgemm4S3,
    K::Wgemm6S3,
    K::Wgemm8S3,
    K::Wgemm10S3,
];
const DEEP_F16: [K; 5] = [K::WgemmH2, K::WgemmH4, K::WgemmH6, K::WgemmH8, K::WgemmH10];
const SHALLOW_F16: [K; 5] = [
    K::WgemmH2S3,
    K::WgemmH4S3,
    K::WgemmH6S3,
    K::WgemmH8S3,
    K::WgemmH10S3,
];

fn kernel_table(stages: usize, operands: Operands) -> [K; 5] {
    match (stages == STAGES_SMALL, operands) {
        (false, Operands::Bf16) => DEEP,
        (true, Operands::Bf16) => SHALLOW,
        (false, Operands::F16) => DEEP_F16,
        (true, Operands::F16) => SHALLOW_F16,
    }
}

/// The token-tile variant for `rows` with a ring of `stages` and its dynamic shared memory.
fn variant(rows: usize, stages: usize, operands: Operands) -> (K, usize) {
    let tiles = rows.div_ceil(8);
    let even = (tiles + (tiles & 1)).clamp(2, 10);
    let kernels = kernel_table(stages, operands);
    (kernels[even / 2 - 1], smem_bytes(even, stages))
}

/// The stage ring plus the stages' mbarriers.
fn smem_bytes(token_tiles: usize, stages: usize) -> usize {
    (BN + 8 * token_tiles) * BK * 2 * stages + 8 * stages
}

/// Shared memory per SM of `ctx`'s device; 0 when the driver does not say (then no grid is
/// refitted for a partition).
pub fn sm_smem(ctx: &cudarc::driver::CudaContext) -> usize {
    ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
        .map_or(0, |b| b.max(0) as usize)
}

/// CTAs with `smem` bytes of dynamic shared memory that an SM with `sm_smem` bytes of shared
/// memory holds at once.
fn ctas_per_sm(smem: usize, sm_smem: usize) -> usize {
    sm_smem / (smem + CTA_RESERVED_SMEM)
}

/// Every variant with the dynamic shared memory it needs (raised once per kernel at start-up).
pub fn variants() -> Vec<(K, usize)> {
    let mut all = Vec::new();
    for operands in [Operands::Bf16, Operands::F16] {
        for st in [STAGES, STAGES_SMALL] {
            all.extend([2, 4, 6, 8, 10].map(|t| variant(t * 8, st, operands)));
        }
    }
    all
}

/// The Pow2 rule's CTA count on a GPU with `sms` multiprocessors: one wave, allowing a few idle
/// SMs rather than doubling the split-K partials a full wave would need for N = 1024.
pub fn target_ctas(sms: usize) -> usize {
    sms - sms / 16
}

/// Plans `rows` × `n` × `k` for a grid spread over `sms` SMs. Each CTA streams one 128-row
/// weight band's share of k and writes an fp32 partial of `rows` × 128.
pub fn plan(
    rows: usize,
    n: usize,
    k: usize,
    sms: usize,
    rule: SplitRule,
    operands: Operands,
) -> WgemmPlan {
    let tiles = n.div_ceil(BN);
    let k_tiles = k / BK;
    let splits = match rule {
        SplitRule::Balanced => balanced_splits(tiles, k_tiles, rows, sms.max(1)),
        SplitRule::Pow2 => {
            let mut splits = 1;
            while tiles * splits < target_ctas(sms) && k % (2 * splits * BK) == 0 {
                splits *= 2;
            }
            splits
        }
    };
    let (kernel, smem) = variant(rows, STAGES, operands);
    WgemmPlan {
        kernel,
        grid: (tiles as u32, splits as u32, 1),
        smem: smem as u32,
        splits,
        operands,
    }
}

/// The split count (1..=k tiles) whose busiest SM moves the fewest bytes: it runs
/// ⌈CTAs / SMs⌉ CTAs, each streaming ⌈k tiles / splits⌉ weight tiles and writing its partial.
/// The GEMM is bound by the SMs' load throughput, so an unbalanced grid (the π0 expert's
/// q|k|v: 20 bands × 8 splits = 160 CTAs on 132 SMs) costs its busiest SM's time. Ties go to
/// fewer splits (fewer partials to add up).
fn balanced_splits(tiles: usize, k_tiles: usize, rows: usize, sms: usize) -> usize {
    (1..=k_tiles.max(1))
        .min_by_key(|&s| busiest_sm_bytes(tiles, k_tiles, rows, sms, s))
        .unwrap_or(1)
}

/// Bytes the busiest of `sms` SMs streams for `tiles` bands of `k_tiles` k tiles in `splits`.
fn busiest_sm_bytes(tiles: usize, k_tiles: usize, rows: usize, sms: usize, splits: usize) -> usize {
    (tiles * splits).div_ceil(sms) * (k_tiles.div_ceil(splits) * BN * BK * 2 + rows * BN * 4)
}

/// `p` on an SM partition of `sms` SMs with `sm_smem` bytes of shared memory each: the
/// shallow-ring variant (three CTAs per SM on an H100) when only it holds the grid in one
/// wave there. Same splits, same arithmetic, same results.
pub fn fit_partition(p: WgemmPlan, rows: usize, sms: usize, sm_smem: usize) -> WgemmPlan {
    let ctas = (p.grid.0 * p.grid.1) as usize;
    if sms * ctas_per_sm(p.smem as usize, sm_smem) >= ctas {
        return p;
    }
    let (kernel, smem) = variant(rows, STAGES_SMALL, p.operands);
    if sms * ctas_per_sm(smem, sm_smem) >= ctas {
        WgemmPlan {
            kernel,
            smem: smem as u32,
            ..p
        }
    } else {
        p
    }
}

/// How the GEMMs launch on this GPU.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    /// SMs the split-K plan spreads the grid over, and how it chooses the split count.
    pub plan_sms: usize,
    pub rule: SplitRule,
    /// Programmatic dependent launch.
    pub pdl: bool,
    /// SMs of the partition the stream runs in (None: the whole GPU).
    pub partition_sms: Option<usize>,
    /// Shared memory per SM (the device's maximum), for fitting grids on partitions.
    pub sm_smem: usize,
    /// Weight tiles marked L2 evict-first (Hopper bulk copies; no effect elsewhere).
    pub evict_first: bool,
    /// Element type of X and W.
    pub operands: Operands,
}

/// Enqueues `part[splits][rows][n] = X[rows][k] · W[n][k]ᵀ` (`x` = (pointer, row stride), `w`
/// laid out by `tile_weights`, `shape` = (rows, n, k)); returns the split count.
pub fn launch(
    kernels: &Kernels,
    s: sys::CUstream,
    run: &Launch,
    (x, ldx): (u64, usize),
    w: u64,
    part: u64,
    (rows, n, k): (usize, usize, usize),
) -> Result<usize> {
    let mut p = plan(rows, n, k, run.plan_sms, run.rule, run.operands);
    if let Some(sms) = run.partition_sms {
        p = fit_partition(p, rows, sms, run.sm_smem);
    }
    kernels.launch_ex(
        p.kernel,
        p.grid,
        128,
        p.smem,
        s,
        &[
            A::P(x),
            A::I(ldx as i32),
            A::P(w),
            A::I(k as i32),
            A::P(part),
            A::I(n as i32),
            A::I(rows as i32),
            A::I(run.evict_first as i32),
        ],
        run.pdl,
    )?;
    Ok(p.splits)
}

/// Lays out a row-major [n][k] weight for the kernel: 128-row bands (rows past `n` zero), each
/// band's 128 × 64 tiles contiguous along k, and chunk c (8 elements) of band row r stored at
/// chunk c ^ (r & 7) so that the kernel's ldmatrix reads are bank-conflict free.
pub fn tile_weights<T: Copy + Default>(w: &[T], n: usize, k: usize) -> Vec<T> {
    assert_eq!(w.len(), n * k);
    assert_eq!(k % BK, 0);
    let tiles_k = k / BK;
    let mut out = vec![T::default(); n.div_ceil(BN) * BN * k];
    for row in 0..n {
        let (band, r) = (row / BN, row % BN);
        for c in 0..k / 8 {
            let (tile, ch) = (c / 8, c % 8);
            let dst = ((band * tiles_k + tile) * BN + r) * BK + (ch ^ (r & 7)) * 8;
            out[dst..dst + 8].copy_from_slice(&w[row * k + c * 8..row * k + c * 8 + 8]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// π0 expert at chunk 50 (51 rows): (n, k) of QKV 1024→2560, O 2048→1024, gate|up
    /// 1024→8192, down 4096→1024.
    const EXPERT: [(usize, usize); 4] = [(2560, 1024), (1024, 2048), (8192, 1024), (1024, 4096)];

    fn expert_splits(sms: usize, rule: SplitRule) -> Vec<(u32, usize)> {
        EXPERT
            .iter()
            .map(|&(n, k)| {
                let p = plan(51, n, k, sms, rule, Operands::Bf16);
                (p.grid.0, p.splits)
            })
            .collect()
    }

    #[test]
    fn full_size_expert_shapes_balance_the_h100() {
        // The previous rule: QKV's 160 CTAs put two on 28 of the 132 SMs.
        let pow2 = expert_splits(132, SplitRule::Pow2);
        assert_eq!(pow2, [(20, 8), (8, 16), (64, 2), (8, 16)]);
        // Balanced: QKV in 6 splits (120 CTAs, 2 or 3 of its 16 k tiles each), the rest as before.
        assert_eq!(
            expert_splits(132, SplitRule::Balanced),
            [(20, 6), (8, 16), (64, 2), (8, 16)]
        );
        // A 64-SM partition: one CTA per SM at most, QKV in 3 splits instead of 4 (80 CTAs).
        assert_eq!(
            expert_splits(64, SplitRule::Balanced),
            [(20, 3), (8, 8), (64, 1), (8, 8)]
        );
        assert_eq!(expert_splits(64, SplitRule::Pow2)[0], (20, 4));
        assert_eq!(
            plan(51, 2560, 1024, 132, SplitRule::Balanced, Operands::Bf16).kernel,
            K::Wgemm8
        );
    }

    #[test]
    fn balanced_splits_never_load_an_sm_more_than_powers_of_two() {
        let load = |p: &WgemmPlan, k: usize, rows: usize, sms: usize| {
            busiest_sm_bytes(p.grid.0 as usize, k / BK, rows, sms, p.splits)
        };
        for sms in [16, 24, 40, 56, 64, 68, 92, 116, 132] {
            for rows in [2, 51, 65] {
                for &(n, k) in &EXPERT {
                    let b = plan(rows, n, k, sms, SplitRule::Balanced, Operands::Bf16);
                    let p = plan(rows, n, k, sms, SplitRule::Pow2, Operands::Bf16);
                    assert!(b.splits >= 1 && b.splits <= k / BK);
                    assert!(
                        load(&b, k, rows, sms) <= load(&p, k, rows, sms),
                        "{sms} SMs {n}x{k}"
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_layout_matches_the_kernels_addressing() {
        // Element (row, col) must sit where kernels/skinny.cu reads it: tile (band, col / 64)
        // at ((band * K/64 + tile) * 16 KB), then swz(r, chunk) = r * 128 B + (chunk ^ (r & 7))
        // * 16 B, then the element within the chunk.
        let (n, k) = (200, 192);
        let w: Vec<u32> = (1..=(n * k) as u32).collect();
        let t = tile_weights(&w, n, k);
        assert_eq!(t.len(), 256 * k);
        for row in 0..n {
            for col in 0..k {
                let (band, r) = (row / 128, row % 128);
                let (tile, chunk, e) = (col / 64, (col % 64) / 8, col % 8);
                let byte = (band * (k / 64) + tile) * 16384 + r * 128 + ((chunk ^ (r & 7)) << 4);
                assert_eq!(t[byte / 2 + e], w[row * k + col], "({row}, {col})");
            }
        }
        // The 56 padding rows of the second band are zero.
        assert_eq!(t.iter().filter(|&&x| x == 0).count(), (256 - n) * k);
    }

    #[test]
    fn small_partitions_take_the_shallow_ring_only_where_it_fits_one_wave() {
        const H100: usize = 228 * 1024;
        let qkv = plan(51, 2560, 1024, 132, SplitRule::Pow2, Operands::Bf16); // 160 CTAs
        let down = plan(51, 1024, 4096, 132, SplitRule::Pow2, Operands::Bf16); // 128 CTAs

        // Whole GPU and 64 SMs hold 128 CTAs two per SM: unchanged.
        assert_eq!(fit_partition(down, 51, 132, H100), down);
        assert_eq!(fit_partition(down, 51, 64, H100).kernel, K::Wgemm8);
        // 160 CTAs on 64 SMs, 128 on 56: only three per SM fit them in one wave.
        let q64 = fit_partition(qkv, 51, 64, H100);
        assert_eq!(
            (q64.kernel, q64.splits, q64.grid),
            (K::Wgemm8S3, qkv.splits, qkv.grid)
        );
        assert!(q64.smem < qkv.smem && ctas_per_sm(q64.smem as usize, H100) == 3);
        assert_eq!(fit_partition(down, 51, 56, H100).kernel, K::Wgemm8S3);
        // 40 SMs hold neither in one wave: the deeper ring stays.
        assert_eq!(fit_partition(down, 51, 40, H100), down);
        assert_eq!(ctas_per_sm(down.smem as usize, H100), 2);
    }

    #[test]
    fn splits_stop_at_one_stage_per_split() {
        for rule in [SplitRule::Balanced, SplitRule::Pow2] {
            assert_eq!(plan(10, 64, 64, 132, rule, Operands::Bf16).splits, 1);
            assert_eq!(plan(10, 128, 256, 1000, rule, Operands::Bf16).splits, 4);
        }
    }

    #[test]
    fn variants_cover_every_row_count() {
        for operands in [Operands::Bf16, Operands::F16] {
            for stages in [STAGES, STAGES_SMALL] {
                for rows in 1..=MAX_ROWS {
                    let (k, smem) = variant(rows, stages, operands);
                    let table = kernel_table(stages, operands);
                    let tiles = 2 * (table.iter().position(|&t| t == k).unwrap() + 1);
                    assert!(tiles * 8 >= rows, "{rows} rows in {tiles} tiles");
                    assert!(smem <= 227 * 1024);
                    assert_eq!(
                        format!("{k:?}").starts_with("WgemmH"),
                        operands == Operands::F16
                    );
                }
            }
        }
        assert!(!supports(81, 64));
        assert!(!supports(51, 100));
        assert!(supports(65, 1024));
    }

    // ---------------------------------------------------------------- GPU

    use crate::gpu::device::{cu, DBuf};
    use rand::{Rng, SeedableRng};

    /// Runs `rows` x `n` x `k` twice on the GPU (reruns must agree bit for bit) and checks the
    /// sum of the split-K partials against an f64 product of the same bf16 inputs. The partial
    /// buffer starts as NaN, so a split or a row the kernel skips cannot pass.
    fn check_shape(
        kernels: &Kernels,
        s: sys::CUstream,
        sm_smem: usize,
        (rows, n, k): (usize, usize, usize),
        operands: Operands,
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64((rows * n + k) as u64);
        // Values as f64 and as the kernel's 16-bit words.
        let mut random = |len: usize| -> (Vec<f64>, Vec<u16>) {
            (0..len)
                .map(|_| {
                    let v = rng.gen_range(-1.0f32..1.0);
                    match operands {
                        Operands::Bf16 => {
                            let b = half::bf16::from_f32(v);
                            (b.to_f64(), b.to_bits())
                        }
                        Operands::F16 => {
                            let h = half::f16::from_f32(v);
                            (h.to_f64(), h.to_bits())
                        }
                    }
                })
                .unzip()
        };
        // X with a row stride wider than k, as the decoder's q|k|v input is not.
        let ldx = k + 64;
        let ((x, xb), (w, wb)) = (random(rows * ldx), random(n * k));
        let dx = DBuf::from_slice(&xb).unwrap();
        let dw = DBuf::from_slice(&tile_weights(&wb, n, k)).unwrap();
        let deep = plan(rows, n, k, 132, SplitRule::Balanced, operands);
        let splits = deep.splits;
        let len = splits * rows * n;
        let part = DBuf::from_slice(&vec![f32::NAN; len]).unwrap();
        // Twice on the whole GPU, then as on a partition of a third of the grid's CTAs in SMs,
        // where the shallow ring (three CTAs per SM) is what fits the grid in one wave.
        let small = ((deep.grid.0 * deep.grid.1) as usize).div_ceil(3);
        let mut runs = Vec::new();
        for partition_sms in [None, None, Some(small)] {
            let run = Launch {
                plan_sms: 132,
                rule: SplitRule::Balanced,
                pdl: false,
                partition_sms,
                sm_smem,
                evict_first: true,
                operands,
            };
            // NaN first, so that a run that writes nothing cannot pass. SAFETY: synchronous
            // copy of `len` floats into a buffer of that size.
            unsafe { cudarc::driver::result::memcpy_htod_sync(part.ptr, &vec![f32::NAN; len]) }
                .unwrap();
            // A pageable copy may return before it has landed, and `s` does not wait for it
            // (docs/gpu-notes.md, lessons v17).
            // SAFETY: plain context synchronisation.
            cu(unsafe { sys::cuCtxSynchronize() }, "sync").unwrap();
            let got = launch(
                kernels,
                s,
                &run,
                (dx.ptr, ldx),
                dw.ptr,
                part.ptr,
                (rows, n, k),
            );
            assert_eq!(got.unwrap(), splits);
            // SAFETY: plain stream synchronisation.
            cu(unsafe { sys::cuStreamSynchronize(s) }, "sync").unwrap();
            runs.push(part.download::<f32>(len).unwrap());
        }
        assert!(runs[0] == runs[1], "{rows}x{n}x{k}: reruns differ");
        let shallow = fit_partition(deep, rows, small, sm_smem);
        println!(
            "{rows}x{n}x{k} on {small} SMs: {:?} ({} B) vs {:?} on the whole GPU",
            shallow.kernel, shallow.smem, deep.kernel
        );
        assert!(
            runs[2] == runs[0],
            "{rows}x{n}x{k}: the {:?} variant differs from {:?}",
            shallow.kernel,
            deep.kernel
        );
        let (mut err, mut norm) = (0f64, 0f64);
        for t in 0..rows {
            for j in 0..n {
                let want: f64 = (0..k).map(|i| x[t * ldx + i] * w[j * k + i]).sum();
                let got: f64 = (0..splits)
                    .map(|sp| runs[0][(sp * rows + t) * n + j] as f64)
                    .sum();
                assert!(got.is_finite(), "{rows}x{n}x{k}: non-finite at ({t}, {j})");
                err += (got - want).powi(2);
                norm += want * want;
            }
        }
        let rel = (err / norm).sqrt();
        println!(
            "weight-streaming GEMM {rows}x{n}x{k}, {operands:?} ({splits} splits): rel L2 {rel:.2e}"
        );
        assert!(rel < 1e-5, "{rows}x{n}x{k}: rel L2 {rel:.3e}");
    }

    #[test]
    fn gpu_weight_streaming_gemm_matches_f64() {
        let test = "gpu_weight_streaming_gemm_matches_f64";
        let Some((ctx, kernels)) = crate::gpu::device::test_kernels(test) else {
            return;
        };
        for (kv, bytes) in variants() {
            kernels
                .set_max_smem(kv, bytes as i32, ctx.cu_device())
                .unwrap();
        }
        let stream = ctx.new_stream().unwrap();
        // The expert's O projection (16 splits), gate|up (2) and q|k|v (6 splits of 2 or 3 k
        // tiles) at chunk 50; a ragged shape (a partial band, rows in an odd token tile); the
        // widest token variant.
        for operands in [Operands::Bf16, Operands::F16] {
            for shape in [
                (51, 1024, 2048),
                (51, 2560, 1024),
                (51, 8192, 1024),
                (13, 200, 192),
                (80, 256, 512),
            ] {
                check_shape(&kernels, stream.cu_stream(), sm_smem(&ctx), shape, operands);
            }
        }
    }
}
