//! f32 building blocks of the reference engine: strided GEMM (matrixmultiply), `Linear` with
//! PyTorch `(out, in)` weights used in place, LayerNorm, Gemma RMSNorm, GELU (tanh), SiLU,
//! split-half RoPE, softmax and multi-/multi-query attention with a per-row key limit.
//!
//! Every formula follows openpi's JAX code (flax / big_vision / gemma.py) in f32; the comments
//! name the expression each one mirrors.

use rayon::prelude::*;

/// C (m×n) = A (m×k) · B (k×n), every operand given by its row and column strides.
/// C is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(rsc > 0 && csc > 0, "gemm: C strides must be positive");
    assert!(last(m, n, rsc, csc) < c.len(), "gemm: C out of bounds");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[i * rsc + j * csc] = 0.0;
            }
        }
        return;
    }
    assert!(last(m, k, rsa, csa) < a.len(), "gemm: A out of bounds");
    assert!(last(k, n, rsb, csb) < b.len(), "gemm: B out of bounds");
    // SAFETY: every index the kernel touches is inside the slices (checked above); C's strides
    // are positive and C is borrowed mutably, so it aliases neither A nor B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// A raw pointer that may cross threads; used only to write disjoint column blocks of one C.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// Taking `self` makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the column blocks written through it never overlap (see `matmul_nt`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `x (m×k) · wᵀ` for a PyTorch weight `w (n×k)`: (m×n), without transposing `w`.
/// Large products are split over output columns across rayon threads when more than the four
/// threads matrixmultiply uses by itself are available; each element's sum is the same either way.
pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let flops = 2.0 * m as f64 * k as f64 * n as f64;
    let split = rayon::current_num_threads() > 4 && flops > 1e8;
    matmul_nt_split(x, m, k, w, n, split)
}

/// `matmul_nt` with the column split across rayon threads forced on or off.
pub fn matmul_nt_split(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    split: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "matmul_nt: x is not {m}×{k}");
    assert_eq!(w.len(), n * k, "matmul_nt: w is not {n}×{k}");
    let mut out = vec![0f32; m * n];
    const BLOCK: usize = 256;
    if split && m > 0 && k > 0 && n >= 2 * BLOCK {
        let blocks = n.div_ceil(BLOCK);
        let c = SendPtr(out.as_mut_ptr());
        let c_len = out.len();
        (0..blocks).into_par_iter().for_each(|bi| {
            let j0 = bi * BLOCK;
            let nb = BLOCK.min(n - j0);
            // SAFETY: block `bi` writes only columns j0..j0+nb of every row of C, which no other
            // block writes; all indices are < c_len (m rows × n columns).
            unsafe {
                debug_assert!((m - 1) * n + j0 + nb - 1 < c_len);
                matrixmultiply::sgemm(
                    m,
                    k,
                    nb,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr().add(j0 * k),
                    1,
                    k as isize,
                    0.0,
                    c.get().add(j0),
                    n as isize,
                    1,
                );
            }
        });
    } else {
        gemm(m, k, n, x, k, 1, w, 1, k, &mut out, n, 1);
    }
    out
}

/// A PyTorch `nn.Linear`: weight `(out, in)`, optional bias.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    /// y = x · Wᵀ + b for `x` of `rows × in_dim`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(
            x.len() % self.in_dim,
            0,
            "Linear: input is not a multiple of {}",
            self.in_dim
        );
        let rows = x.len() / self.in_dim;
        let mut y = matmul_nt(x, rows, self.in_dim, &self.weight, self.out_dim);
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_dim) {
                for (y, b) in row.iter_mut().zip(b) {
                    *y += b;
                }
            }
        }
        y
    }
}

/// flax `nn.LayerNorm` (f32, its default fast variance): mean, var = max(0, mean(x²) − mean²),
/// (x − mean) · (rsqrt(var + eps) · w) + b.
pub fn layer_norm(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(width) {
        let n = width as f32;
        let mean = row.iter().sum::<f32>() / n;
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / n;
        let var = (mean_sq - mean * mean).max(0.0);
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * (inv * w) + b;
        }
    }
}

/// gemma.py `RMSNorm`: x · rsqrt(mean(x²) + eps) · scale, where `scale` is the stored
/// weight plus one (`(1 + w)`, precomputed at load time: the same f32 number).
pub fn rms_norm(x: &[f32], width: usize, scale: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(width) {
        let var = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (v, s) in row.iter_mut().zip(scale) {
            *v = *v * inv * s;
        }
    }
    out
}

/// `jax.nn.gelu(approximate=True)`: x · 0.5 · (1 + tanh(√(2/π) · (x + 0.044715 x³))).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    x * (0.5 * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))).tanh()))
}

/// `jax.nn.swish`: x · sigmoid(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x * (1.0 / (1.0 + (-x).exp()))
}

/// RoPE tables for `positions`: (sin, cos), each `positions.len() × head_dim/2`, as gemma.py
/// `_apply_rope` computes them in f32: timescale = max_wavelength^(2i/head_dim),
/// radians = position / timescale.
pub fn rope_tables(
    positions: &[usize],
    head_dim: usize,
    max_wavelength: f32,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let timescale: Vec<f32> = (0..half)
        .map(|i| max_wavelength.powf((2.0 / head_dim as f32) * i as f32))
        .collect();
    let mut sin = Vec::with_capacity(positions.len() * half);
    let mut cos = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for ts in &timescale {
            let r = p as f32 / ts;
            sin.push(r.sin());
            cos.push(r.cos());
        }
    }
    (sin, cos)
}

/// Split-half RoPE in place on `x` (`rows × heads·head_dim`): per head, the first half pairs with
/// the second: [x1·cos − x2·sin, x2·cos + x1·sin].
pub fn apply_rope(x: &mut [f32], heads: usize, head_dim: usize, sin: &[f32], cos: &[f32]) {
    let half = head_dim / 2;
    let width = heads * head_dim;
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        let (s, c) = (
            &sin[r * half..(r + 1) * half],
            &cos[r * half..(r + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

/// `jax.nn.softmax` over the first `n` entries of `row` (e = exp(x − max); e / Σe); the
/// entries from `n` on are masked keys and become exactly 0.
pub fn softmax_prefix(row: &mut [f32], n: usize) {
    let max = row[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in &mut row[..n] {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in &mut row[..n] {
        *v /= sum;
    }
    row[n..].fill(0.0);
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// softmax(q·kᵀ)·v per head with `q` already scaled: `q` is `nq × heads·head_dim`, `k` and `v`
/// are `nk × kv_heads·head_dim` (query head h reads kv head h / (heads / kv_heads)).
/// Query row i sees keys `0..visible(i)` (the others are masked). Returns `nq × heads·head_dim`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    nq: usize,
    nk: usize,
    s: AttnShape,
    visible: &(dyn Fn(usize) -> usize + Sync),
) -> Vec<f32> {
    let (hd, qd, kvd) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    assert_eq!(q.len(), nq * qd, "attention: q shape");
    assert_eq!(k.len(), nk * kvd, "attention: k shape");
    assert_eq!(v.len(), nk * kvd, "attention: v shape");
    let group = s.heads / s.kv_heads;
    let per_head: Vec<Vec<f32>> = (0..s.heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let mut logits = vec![0f32; nq * nk];
            // logits (nq×nk) = q_h (nq×hd) · k_gᵀ (hd×nk)
            gemm(
                nq,
                hd,
                nk,
                &q[h * hd..],
                qd,
                1,
                &k[g * hd..],
                1,
                kvd,
                &mut logits,
                nk,
                1,
            );
            for (i, row) in logits.chunks_exact_mut(nk).enumerate() {
                softmax_prefix(row, visible(i).min(nk));
            }
            let mut out = vec![0f32; nq * hd];
            // out (nq×hd) = probs (nq×nk) · v_g (nk×hd)
            gemm(
                nq,
                nk,
                hd,
                &logits,
                nk,
                1,
                &v[g * hd..],
                kvd,
                1,
                &mut out,
                hd,
                1,
            );
            out
        })
        .collect();
    let mut out = vec![0f32; nq * qd];
    for (h, o) in per_head.iter().enumerate() {
        for i in 0..nq {
            out[i * qd + h * hd..i * qd + (h + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
    out
}

/// Adds `y` into `x` elementwise (residual connection).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "residual shapes differ");
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.sample(StandardNormal)).collect()
    }

    /// Relative L2 distance of `a` from the f64 reference `b`; NaN never passes.
    fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        let r = (num / den).sqrt();
        assert!(r.is_finite(), "non-finite error");
        r
    }

    #[test]
    fn matmul_nt_matches_f64_with_odd_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 13, 5),
            (33, 64, 130),
            (51, 96, 600),
            (3, 40, 1000),
        ] {
            let x = randn(m * k, 1);
            let w = randn(n * k, 2);
            let y = matmul_nt(&x, m, k, &w, n);
            let y_split = matmul_nt_split(&x, m, k, &w, n, true);
            assert!(y == y_split, "the column split changes results");
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                }
            }
            assert!(rel_l2(&y, &want) < 1e-6, "{m}×{k}×{n}");
        }
    }

    #[test]
    fn linear_adds_bias_per_row() {
        let lin = Linear {
            weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            bias: Some(vec![0.5, -1.0]),
            in_dim: 3,
            out_dim: 2,
        };
        let y = lin.forward(&[1.0, 0.0, -1.0, 2.0, 1.0, 0.0]);
        assert_eq!(y, vec![-2.0 + 0.5, -2.0 - 1.0, 4.0 + 0.5, 13.0 - 1.0]);
    }

    #[test]
    fn layer_norm_matches_f64() {
        let (rows, width) = (9, 192);
        let mut x = randn(rows * width, 3);
        for v in &mut x {
            *v = *v * 3.0 + 0.7; // non-zero mean
        }
        let w = randn(width, 4);
        let b = randn(width, 5);
        let mut want = vec![0f64; x.len()];
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
            for c in 0..width {
                want[r * width + c] =
                    (row[c] as f64 - mean) / (var + 1e-6).sqrt() * w[c] as f64 + b[c] as f64;
            }
        }
        layer_norm(&mut x, width, &w, &b, 1e-6);
        assert!(rel_l2(&x, &want) < 1e-6);
    }

    #[test]
    fn rms_norm_matches_f64() {
        let (rows, width) = (5, 64);
        let x = randn(rows * width, 6);
        let raw = randn(width, 7);
        let scale: Vec<f32> = raw.iter().map(|w| 1.0 + w * 0.1).collect();
        let y = rms_norm(&x, width, &scale, 1e-6);
        let mut want = vec![0f64; x.len()];
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64;
            for c in 0..width {
                want[r * width + c] = row[c] as f64 / (ms + 1e-6).sqrt() * scale[c] as f64;
            }
        }
        assert!(rel_l2(&y, &want) < 1e-6);
    }

    #[test]
    fn gelu_and_silu_match_f64() {
        let x = randn(1000, 8);
        let g: Vec<f32> = x.iter().map(|&v| gelu_tanh(v)).collect();
        let s: Vec<f32> = x.iter().map(|&v| silu(v)).collect();
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let gw: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
            })
            .collect();
        let sw: Vec<f64> = x
            .iter()
            .map(|&v| v as f64 / (1.0 + (-v as f64).exp()))
            .collect();
        assert!(rel_l2(&g, &gw) < 1e-6);
        assert!(rel_l2(&s, &sw) < 1e-6);
        // The tanh form, not the erf form: they differ by 4.4e-4 at x = 2.5.
        let erf_form = 0.5 * 2.5 * (1.0 + libm_erf(2.5 / 2f64.sqrt()));
        assert!((gelu_tanh(2.5) as f64 - erf_form).abs() > 3e-4);
    }

    /// erf by its Maclaurin series (enough terms for |x| ≤ 3).
    fn libm_erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..60 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }

    #[test]
    fn rope_is_split_half_and_matches_f64() {
        let (rows, heads, hd) = (6, 3, 16);
        let positions: Vec<usize> = vec![0, 1, 5, 17, 300, 815];
        let x = randn(rows * heads * hd, 9);
        let (sin, cos) = rope_tables(&positions, hd, 10_000.0);
        let mut y = x.clone();
        apply_rope(&mut y, heads, hd, &sin, &cos);
        let half = hd / 2;
        let mut want = vec![0f64; x.len()];
        for (r, &pos) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = r * heads * hd + h * hd;
                for i in 0..half {
                    // The angle as openpi forms it in f32; sin/cos of it in f64.
                    let ts = 10_000f32.powf((2.0 / hd as f32) * i as f32);
                    let ang = (pos as f32 / ts) as f64;
                    let exact = pos as f64 / 10_000f64.powf(2.0 * i as f64 / hd as f64);
                    // f32 rounding of the angle: at most ~1 ulp of 815 rad.
                    assert!((ang - exact).abs() < 1.5e-4, "{} vs {exact}", ang);
                    let (a, b) = (x[base + i] as f64, x[base + half + i] as f64);
                    want[base + i] = a * ang.cos() - b * ang.sin();
                    want[base + half + i] = b * ang.cos() + a * ang.sin();
                }
            }
        }
        assert!(rel_l2(&y, &want) < 2e-6, "{}", rel_l2(&y, &want));
        // Position 0 is the identity.
        assert_eq!(&y[..heads * hd], &x[..heads * hd]);
    }

    #[test]
    fn softmax_masks_tail_and_matches_f64() {
        let mut row = randn(20, 10);
        for v in &mut row {
            *v *= 10.0;
        }
        let orig = row.clone();
        softmax_prefix(&mut row, 13);
        let max = orig[..13].iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let sum: f64 = orig[..13].iter().map(|&v| (v as f64 - max).exp()).sum();
        let want: Vec<f64> = (0..20)
            .map(|i| {
                if i < 13 {
                    (orig[i] as f64 - max).exp() / sum
                } else {
                    0.0
                }
            })
            .collect();
        assert!(rel_l2(&row, &want) < 1e-6);
        assert!(row[13..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn attention_mqa_with_key_limit_matches_f64() {
        let s = AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let (nq, nk) = (5, 9);
        let q = randn(nq * s.heads * s.head_dim, 11);
        let k = randn(nk * s.kv_heads * s.head_dim, 12);
        let v = randn(nk * s.kv_heads * s.head_dim, 13);
        let visible = |i: usize| if i == 0 { 4 } else { nk };
        let out = attention(&q, &k, &v, nq, nk, s, &visible);
        let (hd, qd, kvd) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let mut want = vec![0f64; nq * qd];
        for h in 0..s.heads {
            let g = h / 2;
            for i in 0..nq {
                let lim = visible(i);
                let logits: Vec<f64> = (0..lim)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[i * qd + h * hd + d] as f64 * k[j * kvd + g * hd + d] as f64)
                            .sum()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                for d in 0..hd {
                    want[i * qd + h * hd + d] = (0..lim)
                        .map(|j| (logits[j] - max).exp() / z * v[j * kvd + g * hd + d] as f64)
                        .sum();
                }
            }
        }
        assert!(rel_l2(&out, &want) < 1e-6);
    }
}
