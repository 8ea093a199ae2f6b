//! Helpers shared by the GPU tests (tests/gpu_*.rs).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pi0_mps::ModelInput;
use rand::{Rng, SeedableRng};

/// Prints why GPU tests are skipped here and returns true, or false when a GPU is usable.
pub fn skip(test: &str) -> bool {
    match pi0_mps::gpu::skip_reason() {
        Some(why) => {
            println!("skipping {test}: no usable GPU ({why})");
            true
        }
        None => false,
    }
}

pub fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pi0-tiny")
}

/// pi0-tiny-asym: $PI0_ASYM_DIR, else ../shared/golden/pi0-tiny-asym.
pub fn asym_dir() -> PathBuf {
    std::env::var_os("PI0_ASYM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/pi0-tiny-asym")
        })
}

pub struct G {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read_golden(dir: &Path) -> HashMap<String, G> {
    let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden is safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
            other => panic!("golden tensor {name} has dtype {other:?}"),
        };
        out.insert(
            name,
            G {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    out
}

/// The golden observation and noise.
pub fn golden_input(g: &HashMap<String, G>) -> (ModelInput, Vec<f32>) {
    let images: Vec<f32> = g["images"].data.iter().map(|&v| v as f32).collect();
    let px = images.len() / 3;
    let mask = &g["image_mask"].data;
    let imgs = (0..3)
        .map(|i| (mask[i] != 0.0).then(|| images[i * px..(i + 1) * px].to_vec()))
        .collect();
    let tm = &g["token_mask"].data;
    let tokens = g["tokens"]
        .data
        .iter()
        .zip(tm)
        .filter(|(_, &m)| m != 0.0)
        .map(|(&t, _)| t as u32)
        .collect();
    let state = g["state"].data.iter().map(|&v| v as f32).collect();
    let noise = g["noise"].data.iter().map(|&v| v as f32).collect();
    (
        ModelInput {
            images: imgs,
            tokens,
            state,
        },
        noise,
    )
}

/// (rel L2, max |d|); panics on NaN.
pub fn rel_l2(ours: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(ours.len(), want.len(), "length mismatch");
    let (mut num, mut den, mut max) = (0.0, 0.0, 0f64);
    for (&a, &b) in ours.iter().zip(want) {
        let d = a as f64 - b;
        assert!(d.is_finite(), "non-finite value: ours {a}, reference {b}");
        num += d * d;
        den += b * b;
        max = max.max(d.abs());
    }
    ((num / den).sqrt(), max)
}

/// A random observation: `views` slots (the ones in `masked` are None), `prompt` tokens.
pub fn random_input(
    seed: u64,
    views: usize,
    masked: &[usize],
    prompt: usize,
    vocab: usize,
    px: usize,
) -> ModelInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let images = (0..views)
        .map(|i| {
            (!masked.contains(&i)).then(|| (0..px).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        })
        .collect();
    let tokens = (0..prompt)
        .map(|i| {
            if i == 0 {
                2
            } else {
                rng.gen_range(3..vocab as u32)
            }
        })
        .collect();
    let state = (0..32)
        .map(|i| {
            if i < 14 {
                rng.gen_range(-1.0f32..1.0)
            } else {
                0.0
            }
        })
        .collect();
    ModelInput {
        images,
        tokens,
        state,
    }
}
