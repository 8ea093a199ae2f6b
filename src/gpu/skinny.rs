//! Launch planning for the decoder's weight-streaming GEMM (kernels/skinny.cu): which kernel
//! variant for the token count, how many split-K slices for the weight shape, and the shared
//! memory it needs. The partial sums are consumed by the layer's next kernel.

use super::device::K;

/// Weight rows per CTA, k per pipeline stage, pipeline depth: as in kernels/skinny.cu.
const BN: usize = 128;
const BK: usize = 64;
const STAGES: usize = 4;
/// Token rows the kernel variants cover (10 tiles of 8).
pub const MAX_ROWS: usize = 80;

/// One weight GEMM's launch: `part[splits][rows][n] = X[rows][k] · W[n][k]ᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgemmPlan {
    pub kernel: K,
    pub grid: (u32, u32, u32),
    pub smem: u32,
    pub splits: usize,
    /// k per split (a multiple of 64).
    pub kps: usize,
}

/// Whether the weight-streaming kernel covers this GEMM (k a multiple of the stage depth and
/// the token rows within the widest variant).
pub fn supports(rows: usize, k: usize) -> bool {
    (1..=MAX_ROWS).contains(&rows) && k >= BK && k % BK == 0
}

/// The token-tile variant for `rows` and its dynamic shared memory.
fn variant(rows: usize) -> (K, usize) {
    let tiles = rows.div_ceil(8);
    let even = tiles + (tiles & 1);
    let k = match even {
        0..=2 => K::Wgemm2,
        4 => K::Wgemm4,
        6 => K::Wgemm6,
        8 => K::Wgemm8,
        _ => K::Wgemm10,
    };
    (k, smem_bytes(even.max(2)))
}

/// The stage ring plus the stages' mbarriers.
fn smem_bytes(token_tiles: usize) -> usize {
    (BN + 8 * token_tiles) * BK * 2 * STAGES + 8 * STAGES
}

/// Every variant with the dynamic shared memory it needs (raised once per kernel at start-up).
pub fn variants() -> [(K, usize); 5] {
    [
        (K::Wgemm2, smem_bytes(2)),
        (K::Wgemm4, smem_bytes(4)),
        (K::Wgemm6, smem_bytes(6)),
        (K::Wgemm8, smem_bytes(8)),
        (K::Wgemm10, smem_bytes(10)),
    ]
}

/// The CTA count to aim for on a GPU with `sms` multiprocessors: one wave, allowing a few idle
/// SMs rather than doubling the split-K partials a full wave would need for N = 1024.
pub fn target_ctas(sms: usize) -> usize {
    sms - sms / 16
}

/// Plans `rows` × `n` × `k`: split K in halves until the grid has at least `target_ctas` CTAs
/// (enough weight loads in flight to keep HBM busy), while each split keeps whole stages.
pub fn plan(rows: usize, n: usize, k: usize, target_ctas: usize) -> WgemmPlan {
    let tiles = n.div_ceil(BN);
    let mut splits = 1;
    while tiles * splits < target_ctas && k % (2 * splits * BK) == 0 {
        splits *= 2;
    }
    let (kernel, smem) = variant(rows);
    WgemmPlan {
        kernel,
        grid: (tiles as u32, splits as u32, 1),
        smem: smem as u32,
        splits,
        kps: k / splits,
    }
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

    #[test]
    fn full_size_expert_shapes_fill_the_h100() {
        // π0 expert: QKV 1024→2560, O 2048→1024, gate|up 1024→8192, down 4096→1024; 51 rows.
        let target = target_ctas(132);
        let qkv = plan(51, 2560, 1024, target);
        assert_eq!((qkv.grid.0, qkv.splits, qkv.kps), (20, 8, 128));
        let o = plan(51, 1024, 2048, target);
        assert_eq!((o.grid.0, o.splits, o.kps), (8, 16, 128));
        let gu = plan(51, 8192, 1024, target);
        assert_eq!((gu.grid.0, gu.splits, gu.kps), (64, 2, 512));
        let down = plan(51, 1024, 4096, target);
        assert_eq!((down.grid.0, down.splits, down.kps), (8, 16, 256));
        assert_eq!(qkv.kernel, K::Wgemm8);
        for p in [qkv, o, gu, down] {
            assert!(p.grid.0 as usize * p.splits >= target);
            assert_eq!(p.kps % BK, 0);
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
    fn splits_stop_at_one_stage_per_split() {
        let p = plan(10, 64, 64, 132);
        assert_eq!((p.splits, p.kps), (1, 64));
        assert_eq!(plan(10, 128, 256, 1000).splits, 4);
    }

    #[test]
    fn variants_cover_every_row_count() {
        for rows in 1..=MAX_ROWS {
            let (k, smem) = variant(rows);
            let tiles = match k {
                K::Wgemm2 => 2,
                K::Wgemm4 => 4,
                K::Wgemm6 => 6,
                K::Wgemm8 => 8,
                _ => 10,
            };
            assert!(tiles * 8 >= rows, "{rows} rows in {tiles} tiles");
            assert!(smem <= 227 * 1024);
        }
        assert!(!supports(81, 64));
        assert!(!supports(51, 100));
        assert!(supports(65, 1024));
    }
}
