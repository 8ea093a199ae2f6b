//! Image pre-processing: ROS encodings, openpi's resize_with_pad (Pillow BILINEAR), [-1, 1].
//!
//! Expected bytes/hashes below were produced by Pillow 12.0.0 running openpi_client's
//! `_resize_with_pad_pil` logic on the same deterministic pixels (`lcg_bytes`).

use pi0_mps::model::preprocess::{
    image_to_model_input, resize_rgb8, resize_with_pad_rgb8, resized_dims, u8_to_model, RawImage,
};

/// The generator the reference script used: x = 1664525·x + 1013904223 (mod 2^32), byte = x >> 24.
fn lcg_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &v in b {
        h ^= v as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn rgb(w: usize, h: usize, data: &[u8]) -> RawImage<'_> {
    RawImage {
        width: w,
        height: h,
        encoding: "rgb8",
        step: w * 3,
        data,
    }
}

const PIL_50X31_TO_8: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000898889868f9085847c80817a7c7a8b81788b86738983767f8f83937b858a7e807f7b807d7c7b76817e887a7a8379777b897f81777b9079777b757f828a777d817c7b787a847c6e7b8a8c798d837a89837e7d818b85828a7577777c817f7d7f77000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
const PIL_5X3_TO_11: &str = "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000003c8cdf5584df9471dec462cab36369a36308b14860be2db8ad5ec195a2b68bbdb16774be736fc19065c7a55ebd96627089652497566fa547baa673c8a4afc5a3c6c4be437cae4684874d996655a35d5f7f54685b64718c737abf979dd5c1c8e4d2d8e9b63f55a1405f6c4378414a8b3c61873778843e81a2458bc173a2d8aabdeec0c8f64f68484a5f50404863373f76336a8a30959f2587af1a7ac03882d15f90e36f95ea1b7c421f6e482a4a5832396b2f6e8b2da3ac198ab60571bf1a72ce3979de467ce4000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

/// (w, h, size, seed, fnv1a of the size×size×3 output, resized dims)
type PilCase = (usize, usize, usize, u32, u64, (usize, usize));

#[test]
fn matches_pillow_byte_for_byte() {
    // (w, h, size, seed, fnv1a of the size×size×3 output, resized dims)
    let cases: [PilCase; 10] = [
        (37, 23, 16, 1, 0x72bce9aecb3c1ecc, (16, 9)),
        (50, 31, 8, 2, 0x17df72f10110258f, (8, 4)),
        (5, 3, 11, 3, 0x08f70bb0f06d07a0, (11, 6)),
        (9, 14, 12, 4, 0x18fede5ee84fafe4, (7, 12)),
        (640, 480, 224, 5, 0x4e4041249acc8453, (224, 168)),
        (480, 640, 224, 6, 0x7b656f34cc459042, (168, 224)),
        (300, 200, 224, 7, 0xfe6d2aecebd2ee54, (224, 149)),
        (1280, 720, 224, 8, 0xd8e9134c8d560c2d, (224, 126)),
        (224, 224, 224, 9, 0x2e514eac4204dfff, (224, 224)),
        (100, 224, 224, 10, 0x2d82e7b6cf0075b9, (100, 224)),
    ];
    for (w, h, size, seed, hash, dims) in cases {
        let data = lcg_bytes(w * h * 3, seed);
        let out = resize_with_pad_rgb8(&rgb(w, h, &data), size).unwrap();
        assert_eq!(out.len(), size * size * 3);
        assert_eq!(resized_dims(w, h, size), dims, "{w}x{h}");
        if (w, h, size) == (50, 31, 8) {
            assert_eq!(out, unhex(PIL_50X31_TO_8));
        }
        if (w, h, size) == (5, 3, 11) {
            assert_eq!(out, unhex(PIL_5X3_TO_11));
        }
        assert_eq!(fnv1a(&out), hash, "{w}x{h} -> {size}: differs from Pillow");
    }
}

#[test]
fn single_pass_resizes_match_pillow() {
    // (w, h, out_w, out_h, seed, fnv1a) of Image.resize((out_w, out_h), BILINEAR)
    let cases: [(usize, usize, usize, usize, u32, u64); 4] = [
        (37, 23, 37, 10, 11, 0xa2bd730114b19bc8),
        (37, 23, 12, 23, 12, 0x15e1028d7b6c6c64),
        (7, 5, 300, 2, 13, 0x4228a15e4e215e67),
        (640, 480, 3, 1000, 14, 0xd39bf06e2b160804),
    ];
    for (w, h, ow, oh, seed, hash) in cases {
        let data = lcg_bytes(w * h * 3, seed);
        let out = resize_rgb8(&data, w, h, ow, oh).unwrap();
        assert_eq!(out.len(), ow * oh * 3);
        assert_eq!(
            fnv1a(&out),
            hash,
            "{w}x{h} -> {ow}x{oh}: differs from Pillow"
        );
    }
}

/// Pillow's algorithm written plainly in f64: triangle filter with support max(scale, 1),
/// normalized weights, horizontal then vertical pass, no rounding in between.
fn reference_resize_f64(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f64> {
    fn weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
        let scale = n_in as f64 / n_out as f64;
        let fs = scale.max(1.0);
        (0..n_out)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let lo = ((center - fs + 0.5).floor().max(0.0)) as usize;
                let hi = ((center + fs + 0.5).floor() as usize).min(n_in);
                let ws: Vec<(usize, f64)> = (lo..hi)
                    .map(|i| (i, (1.0 - ((i as f64 + 0.5 - center) / fs).abs()).max(0.0)))
                    .collect();
                let total: f64 = ws.iter().map(|p| p.1).sum();
                ws.into_iter().map(|(i, v)| (i, v / total)).collect()
            })
            .collect()
    }
    let wx = weights(w, ow);
    let wy = weights(h, oh);
    let mut tmp = vec![0f64; h * ow * 3];
    for y in 0..h {
        for (x, ws) in wx.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * ow + x) * 3 + c] = ws
                    .iter()
                    .map(|&(i, v)| src[(y * w + i) * 3 + c] as f64 * v)
                    .sum();
            }
        }
    }
    let mut out = vec![0f64; oh * ow * 3];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..ow {
            for c in 0..3 {
                out[(y * ow + x) * 3 + c] =
                    ws.iter().map(|&(i, v)| tmp[(i * ow + x) * 3 + c] * v).sum();
            }
        }
    }
    out
}

#[test]
fn resize_agrees_with_plain_f64_reference() {
    let mut seed = 100;
    for (w, h, ow, oh) in [
        (640, 480, 224, 168),
        (61, 47, 224, 172),
        (300, 17, 40, 9),
        (13, 13, 5, 5),
    ] {
        seed += 1;
        let data = lcg_bytes(w * h * 3, seed);
        let ours = resize_rgb8(&data, w, h, ow, oh).unwrap();
        let reference = reference_resize_f64(&data, w, h, ow, oh);
        let mut num = 0.0;
        let mut den = 0.0;
        let mut max_abs: f64 = 0.0;
        for (&a, &r) in ours.iter().zip(&reference) {
            let d = a as f64 - r;
            assert!(d.is_finite());
            num += d * d;
            den += r * r;
            max_abs = max_abs.max(d.abs());
        }
        let rel = (num / den).sqrt();
        // Two roundings to uint8 (one per pass) and 22-bit fixed-point weights.
        assert!(max_abs <= 1.5, "{w}x{h}->{ow}x{oh}: max |d| {max_abs}");
        assert!(rel < 4e-3, "{w}x{h}->{ow}x{oh}: rel L2 {rel}");
    }
}

#[test]
fn model_size_rgb8_passes_through_unchanged() {
    let data = lcg_bytes(224 * 224 * 3, 42);
    let out = image_to_model_input(&rgb(224, 224, &data), 224).unwrap();
    assert_eq!(out.len(), 224 * 224 * 3);
    for (i, (&o, &v)) in out.iter().zip(&data).enumerate() {
        assert_eq!(
            o.to_bits(),
            (v as f32 / 255.0 * 2.0 - 1.0).to_bits(),
            "value {i}"
        );
    }
}

#[test]
fn uint8_to_float_is_openpis_formula() {
    assert_eq!(u8_to_model(0), -1.0);
    assert_eq!(u8_to_model(255), 1.0);
    for v in 0..=255u8 {
        let expected = (v as f32 / 255.0f32) * 2.0f32 - 1.0f32;
        assert_eq!(u8_to_model(v).to_bits(), expected.to_bits());
        assert!((u8_to_model(v) as f64 - (v as f64 / 127.5 - 1.0)).abs() < 1e-6);
    }
}

/// Writes `rgb` (w×h×3) in `encoding` with `extra` padding bytes at the end of each row.
fn encode(rgb: &[u8], w: usize, h: usize, encoding: &str, extra: usize) -> (Vec<u8>, usize) {
    let ch = match encoding {
        "rgb8" | "bgr8" => 3,
        "rgba8" | "bgra8" => 4,
        _ => unreachable!(),
    };
    let step = w * ch + extra;
    let mut out = vec![0xAB; step * h];
    for y in 0..h {
        for x in 0..w {
            let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
            let q = &mut out[y * step + x * ch..y * step + x * ch + ch];
            match encoding {
                "rgb8" => q.copy_from_slice(p),
                "bgr8" => q.copy_from_slice(&[p[2], p[1], p[0]]),
                "rgba8" => q.copy_from_slice(&[p[0], p[1], p[2], 77]),
                "bgra8" => q.copy_from_slice(&[p[2], p[1], p[0], 77]),
                _ => unreachable!(),
            }
        }
    }
    (out, step)
}

#[test]
fn every_encoding_and_row_padding_gives_the_same_pixels() {
    for (w, h) in [(640, 480), (224, 224), (33, 71)] {
        let pixels = lcg_bytes(w * h * 3, (w * h) as u32);
        let expected = image_to_model_input(&rgb(w, h, &pixels), 224).unwrap();
        for enc in ["rgb8", "bgr8", "rgba8", "bgra8"] {
            for extra in [0, 5] {
                let (data, step) = encode(&pixels, w, h, enc, extra);
                let img = RawImage {
                    width: w,
                    height: h,
                    encoding: enc,
                    step,
                    data: &data,
                };
                let got = image_to_model_input(&img, 224).unwrap();
                assert!(got == expected, "{enc} {w}x{h} step {step}");
            }
        }
        // mono8 is the gray value in all three channels.
        let gray = lcg_bytes(w * h, 7);
        let step = w + 3;
        let mut mono = vec![0u8; step * h];
        let mut as_rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let g = gray[y * w + x];
                mono[y * step + x] = g;
                as_rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[g, g, g]);
            }
        }
        let img = RawImage {
            width: w,
            height: h,
            encoding: "mono8",
            step,
            data: &mono,
        };
        let got = image_to_model_input(&img, 224).unwrap();
        assert!(
            got == image_to_model_input(&rgb(w, h, &as_rgb), 224).unwrap(),
            "mono8 {w}x{h}"
        );
    }
}

#[test]
fn letterbox_is_black_and_centred_with_the_odd_row_at_the_bottom() {
    // 300×200 → 224×149: 75 padding rows, 37 on top and 38 at the bottom.
    let white = vec![255u8; 300 * 200 * 3];
    let out = image_to_model_input(&rgb(300, 200, &white), 224).unwrap();
    let row = |y: usize| &out[y * 224 * 3..(y + 1) * 224 * 3];
    for y in 0..224 {
        let expected = if (37..37 + 149).contains(&y) {
            1.0
        } else {
            -1.0
        };
        assert!(row(y).iter().all(|&v| v == expected), "row {y}");
    }
    // 200 wide × 300 tall: columns instead.
    let out = image_to_model_input(&rgb(200, 300, &white), 224).unwrap();
    for y in 0..224 {
        for x in 0..224 {
            let expected = if (37..37 + 149).contains(&x) {
                1.0
            } else {
                -1.0
            };
            assert_eq!(out[(y * 224 + x) * 3], expected, "({x}, {y})");
        }
    }
}

#[test]
fn extreme_aspect_ratio_keeps_one_pixel() {
    let data = vec![200u8; 1000 * 3];
    let out = image_to_model_input(&rgb(1000, 1, &data), 224).unwrap();
    assert_eq!(out.len(), 224 * 224 * 3);
    assert_eq!(resized_dims(1000, 1, 224), (224, 1));
    assert_eq!(out.iter().filter(|&&v| v != -1.0).count(), 224 * 3);
}

fn image_err(img: RawImage, size: usize) -> String {
    image_to_model_input(&img, size).unwrap_err().to_string()
}

#[test]
fn bad_images_are_refused_with_a_reason() {
    let data = vec![0u8; 64 * 64 * 4];
    let img = |w, h, enc, step, len| RawImage {
        width: w,
        height: h,
        encoding: enc,
        step,
        data: &data[..len],
    };
    let e = image_err(img(8, 8, "16UC1", 16, 128), 224);
    assert!(e.contains("unsupported encoding `16UC1`"), "{e}");
    assert!(e.contains("rgb8, bgr8, rgba8, bgra8, mono8"), "{e}");
    let e = image_err(img(8, 8, "yuv422", 16, 128), 224);
    assert!(e.contains("yuv422"), "{e}");
    let e = image_err(img(0, 8, "rgb8", 0, 0), 224);
    assert!(e.contains("empty image (0×8)"), "{e}");
    let e = image_err(img(8, 0, "rgb8", 24, 0), 224);
    assert!(e.contains("empty image (8×0)"), "{e}");
    let e = image_err(img(8, 8, "rgba8", 24, 8 * 32), 224);
    assert!(
        e.contains("step 24 is smaller than width × bytes per pixel = 8 × 4 = 32"),
        "{e}"
    );
    let e = image_err(img(8, 8, "rgb8", 24, 24 * 8 - 1), 224);
    assert!(
        e.contains("data has 191 bytes, step × height = 24 × 8 = 192 needed"),
        "{e}"
    );
    let e = image_err(img(8, 8, "rgb8", 24, 192), 0);
    assert!(e.contains("target size must be at least 1"), "{e}");
    assert!(e.starts_with("image: "), "{e}");
    // Longer data than step × height is accepted (trailing bytes ignored).
    assert!(image_to_model_input(&img(8, 8, "rgb8", 24, 200), 224).is_ok());
}

// ---------------------------------------------------------------------------------------------
// State normalization / action un-normalization (openpi transforms.Normalize / Unnormalize)
// ---------------------------------------------------------------------------------------------

mod normalization {
    use pi0_mps::model::normalize::{find_norm_stats, NormMode, NormStats, Normalizer};
    use rand::{Rng, SeedableRng};

    fn stats_json(state: &str, actions: &str) -> String {
        format!(r#"{{"norm_stats": {{"state": {state}, "actions": {actions}}}}}"#)
    }

    const S3: &str = r#"{"mean": [1.0, 2.0, 3.0], "std": [0.5, 2.0, 0.0],
                        "q01": [-1.0, 0.0, 3.0], "q99": [1.0, 10.0, 3.0]}"#;

    fn normalizer(mode: NormMode) -> Normalizer {
        let stats = NormStats::from_json_str(&stats_json(S3, S3), "s.json").unwrap();
        Normalizer::new(stats, mode).unwrap()
    }

    #[test]
    fn zscore_by_hand() {
        let n = normalizer(NormMode::ZScore);
        let out = n.normalize_state(&[2.0f64, 0.0, 3.0], 5).unwrap();
        // (x - mean) / (std + 1e-6); std 0 → divides by 1e-6 (x = mean gives 0); zero padding.
        let expected = [
            (1.0f64 / 0.500001) as f32,
            (-2.0f64 / 2.000001) as f32,
            0.0,
            0.0,
            0.0,
        ];
        assert_eq!(out, expected);
        assert!((out[0] - 1.999996).abs() < 1e-6);
        // f32 input takes the same path.
        assert_eq!(n.normalize_state(&[2.0f32, 0.0, 3.0], 5).unwrap(), expected);
        // Un-normalize: x * (std + 1e-6) + mean, first robot_dim columns of each row.
        let actions = [1.0f32, -1.0, 2.0, 9.0, 9.0, 0.0, 0.5, 0.0, 9.0, 9.0];
        let out = n.unnormalize_actions(&actions, 5, 3).unwrap();
        let expected = [
            (1.0 * 0.500001 + 1.0) as f32,
            (2.0 - 2.000001) as f32,
            (2.0 * 0.000001 + 3.0) as f32,
            1.0,
            (0.5 * 2.000001 + 2.0) as f32,
            3.0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn quantile_by_hand() {
        let n = normalizer(NormMode::Quantile);
        let out = n.normalize_state(&[0.0f64, 5.0], 4).unwrap();
        // (x - q01) / (q99 - q01 + 1e-6) * 2 - 1
        let e0 = (1.0f64 / 2.000001 * 2.0 - 1.0) as f32;
        let e1 = (5.0f64 / 10.000001 * 2.0 - 1.0) as f32;
        assert_eq!(out, [e0, e1, 0.0, 0.0]);
        assert!(e0 < 0.0 && e0 > -1e-6);
        // (x + 1) / 2 * (q99 - q01 + 1e-6) + q01
        let out = n.unnormalize_actions(&[1.0, -1.0, 0.0, 7.0], 4, 3).unwrap();
        let expected = [
            (2.0f64 / 2.0 * 2.000001 - 1.0) as f32,
            0.0,
            (1.0f64 / 2.0 * 0.000001 + 3.0) as f32,
        ];
        assert_eq!(out, expected);
    }

    fn rel_l2(a: &[f32], reference: &[f64]) -> f64 {
        assert_eq!(a.len(), reference.len());
        let num: f64 = a
            .iter()
            .zip(reference)
            .map(|(&x, &r)| (x as f64 - r).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|r| r * r).sum();
        let rel = (num / den).sqrt();
        assert!(rel.is_finite());
        rel
    }

    fn random_stats(rng: &mut impl Rng, n: usize) -> String {
        let v = |rng: &mut dyn rand::RngCore, lo: f64, hi: f64| -> Vec<f64> {
            (0..n).map(|_| rng.gen_range(lo..hi)).collect()
        };
        let mean = v(rng, -2.0, 2.0);
        let std = v(rng, 0.05, 3.0);
        let q01 = v(rng, -4.0, -0.5);
        let q99: Vec<f64> = q01.iter().map(|q| q + rng.gen_range(0.1..6.0)).collect();
        serde_json::json!({"mean": mean, "std": std, "q01": q01, "q99": q99}).to_string()
    }

    #[test]
    fn random_data_against_f64_formulas_and_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for mode in [NormMode::ZScore, NormMode::Quantile] {
            for (robot_dim, stats_dim) in [(14, 14), (8, 32), (7, 20)] {
                let s = random_stats(&mut rng, stats_dim);
                let a = random_stats(&mut rng, stats_dim);
                let stats = NormStats::from_json_str(&stats_json(&s, &a), "r").unwrap();
                let n = Normalizer::new(stats.clone(), mode).unwrap();
                let state: Vec<f64> = (0..robot_dim).map(|_| rng.gen_range(-5.0..5.0)).collect();
                let ours = n.normalize_state(&state, 32).unwrap();
                let st = &stats.state;
                let mut reference: Vec<f64> = state
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| match mode {
                        NormMode::ZScore => (x - st.mean[i]) / (st.std[i] + 1e-6),
                        NormMode::Quantile => {
                            let (q01, q99) =
                                (st.q01.as_ref().unwrap()[i], st.q99.as_ref().unwrap()[i]);
                            (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0
                        }
                    })
                    .collect();
                reference.resize(32, 0.0);
                assert!(rel_l2(&ours, &reference) < 1e-7, "{mode:?}");
                assert!(ours[robot_dim..].iter().all(|&v| v == 0.0));

                let chunk = 50;
                let actions: Vec<f32> = (0..chunk * 32).map(|_| rng.gen_range(-1.5..1.5)).collect();
                let ours = n.unnormalize_actions(&actions, 32, robot_dim).unwrap();
                let at = &stats.actions;
                let reference: Vec<f64> = (0..chunk)
                    .flat_map(|r| (0..robot_dim).map(move |j| (r, j)))
                    .map(|(r, j)| {
                        let x = actions[r * 32 + j] as f64;
                        match mode {
                            NormMode::ZScore => x * (at.std[j] + 1e-6) + at.mean[j],
                            NormMode::Quantile => {
                                let (q01, q99) =
                                    (at.q01.as_ref().unwrap()[j], at.q99.as_ref().unwrap()[j]);
                                (x + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
                            }
                        }
                    })
                    .collect();
                assert!(rel_l2(&ours, &reference) < 1e-7, "{mode:?}");

                // Round trip with the state stats used for actions too.
                let same = NormStats::from_json_str(&stats_json(&s, &s), "r").unwrap();
                let n = Normalizer::new(same, mode).unwrap();
                let normalized = n.normalize_state(&state, 32).unwrap();
                let back = n.unnormalize_actions(&normalized, 32, robot_dim).unwrap();
                assert!(rel_l2(&back, &state) < 1e-6, "{mode:?} round trip");
            }
        }
    }

    #[test]
    fn identity_pads_and_cuts() {
        let n = Normalizer::identity();
        assert!(n.is_identity());
        assert_eq!(
            n.normalize_state(&[1.5f64, -2.0], 4).unwrap(),
            [1.5, -2.0, 0.0, 0.0]
        );
        assert_eq!(
            n.unnormalize_actions(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)
                .unwrap(),
            [1.0, 2.0, 4.0, 5.0]
        );
    }

    #[test]
    fn file_layouts() {
        let dir = tempfile::tempdir().unwrap();
        // openpi: assets/<asset_id>/norm_stats.json
        let assets = dir.path().join("assets").join("trossen");
        std::fs::create_dir_all(&assets).unwrap();
        // Without the "norm_stats" wrapper and with null quantiles (z-score needs none).
        let bare = r#"{"state": {"mean": [1.0], "std": [2.0], "q01": null, "q99": null},
                       "actions": {"mean": [0.0], "std": [1.0]}}"#;
        std::fs::write(assets.join("norm_stats.json"), bare).unwrap();
        assert_eq!(
            find_norm_stats(dir.path()),
            Some(assets.join("norm_stats.json"))
        );
        let n = Normalizer::load(dir.path(), NormMode::ZScore).unwrap();
        assert_eq!(
            n.normalize_state(&[3.0f64], 2).unwrap(),
            [(2.0 / 2.000001f64) as f32, 0.0]
        );
        let e = Normalizer::load(dir.path(), NormMode::Quantile)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quantile normalization needs `state.q01` and `state.q99`"),
            "{e}"
        );
        // A second asset makes the choice ambiguous.
        let other = dir.path().join("assets").join("aloha");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("norm_stats.json"), bare).unwrap();
        assert_eq!(find_norm_stats(dir.path()), None);
        let e = Normalizer::load(dir.path(), NormMode::ZScore)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no norm_stats.json"), "{e}");
        // norm_stats.json directly in the directory wins.
        std::fs::write(dir.path().join("norm_stats.json"), bare).unwrap();
        assert!(Normalizer::load(dir.path(), NormMode::ZScore).is_ok());
        let e = Normalizer::load(&dir.path().join("missing.json"), NormMode::ZScore)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("I/O error on") && e.contains("missing.json"),
            "{e}"
        );
        assert_eq!("quantile".parse::<NormMode>().unwrap(), NormMode::Quantile);
        assert_eq!("zscore".parse::<NormMode>().unwrap(), NormMode::ZScore);
        let e = "minmax".parse::<NormMode>().unwrap_err().to_string();
        assert!(e.contains("`minmax` is not a normalization mode"), "{e}");
    }

    #[test]
    fn broken_stats_files_are_refused_with_a_reason() {
        let ok = r#"{"mean": [0.0, 1.0], "std": [1.0, 1.0]}"#;
        let cases = [
            ("{".to_string(), "s.json: not valid JSON"),
            ("[1, 2]".to_string(), "s.json: expected a JSON object"),
            (
                r#"{"norm_stats": {"actions": {"mean": [0.0], "std": [1.0]}, "foo": 1}}"#
                    .to_string(),
                "no `state` statistics (keys present: [\"actions\", \"foo\"])",
            ),
            (
                format!(r#"{{"norm_stats": {{"state": {ok}}}}}"#),
                "no `actions` statistics",
            ),
            (
                stats_json(r#"{"mean": [0.0, 1.0], "std": [1.0]}"#, ok),
                "`state.std` has 1 values but `state.mean` has 2",
            ),
            (
                stats_json(
                    ok,
                    r#"{"mean": [0.0, 1.0], "std": [1.0, 1.0], "q01": [0.0], "q99": [1.0, 2.0]}"#,
                ),
                "`actions.q01` has 1 values but `actions.mean` has 2",
            ),
            (
                stats_json(r#"{"mean": [0.0, "x"], "std": [1.0, 1.0]}"#, ok),
                "`state.mean[1]` is not a number: \"x\"",
            ),
            (
                stats_json(r#"{"mean": [[0.0], [1.0]], "std": [1.0, 1.0]}"#, ok),
                "`state.mean[0]` is not a number: [0.0]",
            ),
            (stats_json(r#"{"std": [1.0]}"#, ok), "`state` has no `mean`"),
            (
                stats_json(ok, r#"{"mean": [1.0]}"#),
                "`actions` has no `std`",
            ),
            (stats_json(ok, "[1.0]"), "`actions` is not an object"),
            (
                stats_json(r#"{"mean": [], "std": []}"#, ok),
                "`state.mean` is empty",
            ),
        ];
        for (json, expected) in cases {
            let e = NormStats::from_json_str(&json, "s.json")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("normalization stats: s.json: "), "{e}");
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }

    #[test]
    fn bad_states_and_actions_are_refused_with_a_reason() {
        let n = normalizer(NormMode::ZScore);
        let err = |r: pi0_mps::Result<Vec<f32>>| r.unwrap_err().to_string();
        let e = err(n.normalize_state(&[0.0f64, f64::NAN], 32));
        assert_eq!(e, "state: state[1] is NaN (state must be finite)");
        let e = err(n.normalize_state(&[f32::NEG_INFINITY], 32));
        assert_eq!(e, "state: state[0] is -inf (state must be finite)");
        let e = err(Normalizer::identity().normalize_state(&[0.0f64; 33], 32));
        assert_eq!(
            e,
            "state: state has 33 values, more than the model's action_dim 32"
        );
        let e = err(n.normalize_state(&[0.0f64; 4], 32));
        assert!(
            e.contains("state has 4 values but the `state` statistics only 3"),
            "{e}"
        );
        let e = err(n.unnormalize_actions(&[0.0; 10], 3, 2));
        assert!(
            e.contains("action chunk has 10 values, not a positive multiple of action_dim 3"),
            "{e}"
        );
        let e = err(n.unnormalize_actions(&[], 3, 2));
        assert!(e.contains("action chunk has 0 values"), "{e}");
        let e = err(n.unnormalize_actions(&[0.0; 6], 3, 4));
        assert!(
            e.contains("robot action dimension 4 must be in 1..=3"),
            "{e}"
        );
        let e = err(n.unnormalize_actions(&[0.0; 6], 3, 0));
        assert!(
            e.contains("robot action dimension 0 must be in 1..=3"),
            "{e}"
        );
        let e = err(n.unnormalize_actions(&[0.0; 10], 5, 4));
        assert!(
            e.contains("robot action dimension 4 exceeds the 3 values of the `actions` statistics"),
            "{e}"
        );
        let mut a = [0.0f32; 10];
        a[7] = f32::NAN;
        let e = err(n.unnormalize_actions(&a, 5, 3));
        assert!(e.contains("model action [1, 2] is NaN"), "{e}");
    }
}
