//! Fused attention (kernels/flash.cu): QKᵀ, the masked fp32 softmax and P·V in one kernel, in
//! place of two cuBLASLt GEMMs around a softmax kernel. Where one row tile has few key blocks'
//! worth of parallelism (the decoder: 51 tokens x 8 heads), the key blocks are spread over a
//! thread-block cluster that merges its partial softmaxes in distributed shared memory.
//!
//! Used for the vision tower by default (head dim 72: 27 layers x 5 launches → 1, −0.47 ms per
//! forward on the H100). For the Gemma blocks (head dim 256) it is correct but still slower
//! than cuBLASLt (`GpuOptions::fused_gemma_attention`; docs/gpu-notes.md v14).

use super::*;

/// Query rows per CTA, keys per block and threads per CTA (FA_BM, FA_BN, FA_THREADS in
/// kernels/flash.cu).
const BLOCK_ROWS: usize = 64;
const BLOCK_KEYS: usize = 64;
const THREADS: u32 = 256;
/// Largest cluster: the portable maximum.
const MAX_SPLITS: usize = 8;

/// Head dims with a compiled kernel (padded size in shared memory).
const VARIANTS: [(usize, K); 6] = [
    (16, K::Flash16),
    (32, K::Flash32),
    (64, K::Flash64),
    (80, K::Flash80),
    (128, K::Flash128),
    (256, K::Flash256),
];

/// Fused-attention settings fixed at engine construction.
#[derive(Clone, Copy, Debug)]
pub(super) struct FusedAttention {
    /// CTAs a launch aims for: key splits grow until reached (bounded by the key blocks).
    pub target_ctas: usize,
    /// Largest cluster (1 where clusters are unavailable: before Hopper).
    pub max_splits: usize,
    /// Also for the Gemma blocks (LLM prefix, action expert), not only the vision tower.
    pub gemma: bool,
}

/// The kernel for head dim `d` and its padded size: the smallest variant that holds it (d must
/// be a multiple of 8: rows are loaded in 16-byte chunks).
pub(super) fn kernel_for(d: usize) -> Option<(K, usize)> {
    if d == 0 || d % 8 != 0 {
        return None;
    }
    VARIANTS
        .iter()
        .find(|&&(hd, _)| hd >= d)
        .map(|&(hd, k)| (k, hd))
}

/// Dynamic shared memory of the kernel for padded head dim `hd`: the Q tile and two K/V
/// buffers, rows padded by 8 elements (the merges of key halves and of cluster splits reuse
/// the same bytes).
pub(super) fn smem_bytes(hd: usize) -> usize {
    (BLOCK_ROWS + 4 * BLOCK_KEYS) * (hd + 8) * 2
}

/// Key splits (cluster size) for `tiles` row tiles over `keys` keys. None once the row tiles
/// alone fill a quarter of the CTA target: on the H100 the vision tower ran faster unsplit,
/// 2 views (128 tiles) by 0.17 ms per forward against clusters of 2 and 1 view (64 tiles) by
/// 0.19 ms against clusters of 3 (docs/gpu-notes.md v20): the cluster merge costs more than
/// the parallelism gives once most SMs have a tile.
pub(super) fn splits(tiles: usize, keys: usize, fa: &FusedAttention) -> usize {
    if 4 * tiles > fa.target_ctas {
        return 1;
    }
    let blocks = keys.div_ceil(BLOCK_KEYS).max(1);
    fa.target_ctas
        .div_ceil(tiles.max(1))
        .clamp(1, fa.max_splits.min(MAX_SPLITS))
        .min(blocks)
}

/// One attention problem: `batch` independent (Q, K, V, O) sets addressed by (outer, inner)
/// strides in elements (batch b at (b / inner)·outer + (b % inner)·inner_stride); row-major
/// matrices with the given leading dimensions; the first `mask_rows` query rows see only
/// `mask_keys` keys, the others all `keys`.
pub(super) struct AttentionProblem {
    pub q: (u64, usize, usize, usize),
    pub k: u64,
    pub v: u64,
    pub kv: (usize, usize, usize),
    pub o: (u64, usize, usize, usize),
    pub inner: usize,
    pub batch: usize,
    pub rows: usize,
    pub keys: usize,
    pub head_dim: usize,
    pub mask_rows: usize,
    pub mask_keys: usize,
}

/// Enqueues the fused attention of `p` on `s`.
pub(super) fn launch(
    kernels: &Kernels,
    s: sys::CUstream,
    fa: &FusedAttention,
    pdl: bool,
    p: &AttentionProblem,
) -> Result<()> {
    let (kernel, hd) = kernel_for(p.head_dim).ok_or_else(|| {
        Error::Gpu(format!(
            "no fused attention kernel for head dim {}",
            p.head_dim
        ))
    })?;
    let tiles = p.rows.div_ceil(BLOCK_ROWS);
    let splits = splits(tiles * p.batch, p.keys, fa);
    let scale_log2 = std::f32::consts::LOG2_E / (p.head_dim as f32).sqrt();
    let l = |x: usize| A::L(x as i64);
    kernels.launch_cluster(
        kernel,
        ((tiles * splits) as u32, 1, p.batch as u32),
        THREADS,
        smem_bytes(hd) as u32,
        s,
        &[
            A::P(p.q.0),
            l(p.q.1),
            l(p.q.2),
            l(p.q.3),
            A::P(p.k),
            A::P(p.v),
            l(p.kv.0),
            l(p.kv.1),
            l(p.kv.2),
            A::P(p.o.0),
            l(p.o.1),
            l(p.o.2),
            l(p.o.3),
            A::I(p.inner.max(1) as i32),
            A::I(p.rows as i32),
            A::I(p.keys as i32),
            A::I(p.head_dim as i32),
            A::I(p.mask_rows as i32),
            A::I(p.mask_keys as i32),
            A::F(scale_log2),
            A::I(splits as i32),
        ],
        pdl,
        (splits as u32, 1, 1),
    )
}

/// Raises the shared-memory limit of the fused-attention kernels for head dims `dims`.
pub(super) fn prepare(kernels: &Kernels, dims: &[usize], dev: sys::CUdevice) -> Result<()> {
    for &d in dims {
        if let Some((k, hd)) = kernel_for(d) {
            kernels.set_max_smem(k, smem_bytes(hd) as i32, dev)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dims_map_to_the_smallest_padded_kernel() {
        assert_eq!(kernel_for(72).map(|(_, hd)| hd), Some(80));
        assert_eq!(kernel_for(256).map(|(_, hd)| hd), Some(256));
        assert_eq!(kernel_for(16).map(|(_, hd)| hd), Some(16));
        assert_eq!(kernel_for(64).map(|(_, hd)| hd), Some(64));
        assert!(kernel_for(12).is_none(), "not a multiple of 8");
        assert!(kernel_for(264).is_none(), "too large");
        assert!(kernel_for(0).is_none());
    }

    #[test]
    fn shared_memory_fits_the_cluster_merge_and_hopper() {
        for (hd, _) in VARIANTS {
            // O (rows padded by 8), m, l of every row and 8 cluster weights per row, all fp32.
            let merge = BLOCK_ROWS * (hd + 8) * 4 + 2 * BLOCK_ROWS * 4 + BLOCK_ROWS * 8 * 4;
            assert!(smem_bytes(hd) >= merge, "hd {hd}");
            assert!(smem_bytes(hd) <= 227 * 1024, "hd {hd}");
        }
    }

    #[test]
    fn splits_fill_the_gpu_within_the_key_blocks_and_cluster_limit() {
        let fa = FusedAttention {
            target_ctas: 132,
            max_splits: 8,
            gemma: true,
        };
        // Decoder: 51 tokens x 8 heads = 7 tiles over 584 keys (10 blocks).
        assert_eq!(splits(7, 584, &fa), 8);
        // LLM prefix: 532 x 8 = 67 tiles, more than half the target: unsplit.
        assert_eq!(splits(67, 532, &fa), 1);
        assert_eq!(splits(30, 532, &fa), 5);
        // Vision: 2 views x 16 heads x 4 tiles.
        assert_eq!(splits(128, 256, &fa), 1);
        // One view: 64 tiles, unsplit too.
        assert_eq!(splits(64, 256, &fa), 1);
        assert_eq!(splits(200, 256, &fa), 1);
        // Never more splits than key blocks.
        assert_eq!(splits(1, 100, &fa), 2);
        let no_clusters = FusedAttention {
            max_splits: 1,
            ..fa
        };
        assert_eq!(splits(7, 584, &no_clusters), 1);
    }

    /// One case of the GPU check: `outer` x `inner` problems in the vision layout (q|k|v
    /// interleaved per token, like `qkv_v`; one problem is the MQA layout of the Gemma blocks).
    struct Case {
        name: &'static str,
        outer: usize,
        inner: usize,
        rows: usize,
        keys: usize,
        d: usize,
        mask_rows: usize,
        mask_keys: usize,
        max_splits: usize,
    }

    fn bf16_round(x: f32) -> f32 {
        half::bf16::from_f32(x).to_f32()
    }

    /// Runs `c` on the GPU twice and checks it against an f64 softmax attention over the same
    /// bf16 inputs: relative L2 error, no NaN, identical reruns. K/V rows past `keys` hold NaN,
    /// which masking must never let through.
    fn check_case(kernels: &Kernels, stream: sys::CUstream, c: &Case) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(c.rows as u64 * 31 + c.d as u64);
        let batch = c.outer * c.inner;
        let w = c.inner * c.d;
        let kv_rows = c.keys + 13;
        let (rows_q, row_q) = (c.rows.max(kv_rows), 3 * w);
        // q|k|v buffer [outer][rows_q][3w]; output [outer][rows][w].
        let mut qkv = vec![0f32; c.outer * rows_q * row_q];
        for (i, x) in qkv.iter_mut().enumerate() {
            let (r, col) = ((i / row_q) % rows_q, i % row_q);
            *x = if col >= w && r >= c.keys {
                f32::NAN
            } else {
                bf16_round(rng.gen_range(-2.0f32..2.0))
            };
        }
        let bits: Vec<u16> = qkv
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect();
        let dq = DBuf::from_slice(&bits).unwrap();
        let out_len = c.outer * c.rows * w;
        let dout = DBuf::new(out_len * 2).unwrap();
        let problem = AttentionProblem {
            q: (dq.ptr, row_q, rows_q * row_q, c.d),
            k: dq.ptr + (w * 2) as u64,
            v: dq.ptr + (2 * w * 2) as u64,
            kv: (row_q, rows_q * row_q, c.d),
            o: (dout.ptr, w, c.rows * w, c.d),
            inner: c.inner,
            batch,
            rows: c.rows,
            keys: c.keys,
            head_dim: c.d,
            mask_rows: c.mask_rows,
            mask_keys: c.mask_keys,
        };
        let fa = FusedAttention {
            target_ctas: 132,
            max_splits: c.max_splits,
            gemma: true,
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            launch(kernels, stream, &fa, false, &problem).unwrap();
            // SAFETY: plain stream synchronisation.
            cu(unsafe { sys::cuStreamSynchronize(stream) }, "sync").unwrap();
            runs.push(dout.download::<u16>(out_len).unwrap());
        }
        assert_eq!(runs[0], runs[1], "{}: reruns differ", c.name);
        let got: Vec<f64> = runs[0]
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f64())
            .collect();
        let scale = 1.0 / (c.d as f64).sqrt();
        let (mut err, mut norm) = (0f64, 0f64);
        for b in 0..batch {
            let (bo, bi) = (b / c.inner, b % c.inner);
            let at = |r: usize, sect: usize, j: usize| {
                qkv[(bo * rows_q + r) * row_q + sect * w + bi * c.d + j] as f64
            };
            for r in 0..c.rows {
                let n = if r < c.mask_rows { c.mask_keys } else { c.keys };
                let logits: Vec<f64> = (0..n)
                    .map(|kk| (0..c.d).map(|j| at(r, 0, j) * at(kk, 1, j)).sum::<f64>() * scale)
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..c.d {
                    let want = (0..n).map(|kk| e[kk] * at(kk, 2, j)).sum::<f64>() / z;
                    let g = got[(bo * c.rows + r) * w + bi * c.d + j];
                    assert!(g.is_finite(), "{}: non-finite output", c.name);
                    err += (g - want).powi(2);
                    norm += want * want;
                }
            }
        }
        let rel = (err / norm).sqrt();
        println!("fused attention {}: rel L2 {rel:.2e}", c.name);
        assert!(rel < 1e-2, "{}: rel L2 {rel:.3e}", c.name);
    }

    #[test]
    fn gpu_fused_attention_matches_f64_softmax_attention() {
        let test = "gpu_fused_attention_matches_f64_softmax_attention";
        let Some((ctx, kernels)) = crate::gpu::device::test_kernels(test) else {
            return;
        };
        let (major, _) = ctx.compute_capability().unwrap();
        prepare(&kernels, &[16, 72, 256], ctx.cu_device()).unwrap();
        let stream = ctx.new_stream().unwrap();
        let clusters = if major >= 9 { 8 } else { 1 };
        // The decoder: 51 tokens x 8 heads over prefix + suffix keys; the state token's heads
        // see the prefix and themselves only. Key blocks over a cluster, and not.
        let decoder = |name, max_splits| Case {
            name,
            outer: 1,
            inner: 1,
            rows: 408,
            keys: 583,
            d: 256,
            mask_rows: 8,
            mask_keys: 533,
            max_splits,
        };
        let cases = [
            decoder("decoder, cluster", clusters),
            decoder("decoder, one CTA per tile", 1),
            // Vision: view x head batches, head dim 72 padded to 80, ragged row tiles.
            Case {
                name: "vision layout",
                outer: 2,
                inner: 3,
                rows: 100,
                keys: 100,
                d: 72,
                mask_rows: 0,
                mask_keys: 0,
                max_splits: clusters,
            },
            // pi0-tiny's head dim, a mask inside the first key block.
            Case {
                name: "head dim 16",
                outer: 1,
                inner: 1,
                rows: 40,
                keys: 150,
                d: 16,
                mask_rows: 5,
                mask_keys: 3,
                max_splits: clusters,
            },
        ];
        for c in &cases {
            check_case(&kernels, stream.cu_stream(), c);
        }
    }
}
