//! Golden data helpers shared by the CPU and GPU golden tests and the checkpoint tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pi0_mps::ModelInput;

/// pi0-tiny, copied into the repo so that every clone carries a golden test.
pub fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pi0-tiny")
}

/// pi0-tiny-asym: $PI0_ASYM_DIR, else ../shared/golden/pi0-tiny-asym beside the checkout.
pub fn asym_dir() -> PathBuf {
    std::env::var_os("PI0_ASYM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/pi0-tiny-asym")
        })
}

/// One tensor of golden.safetensors, floats and integers alike as f64.
pub struct G {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl G {
    pub fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
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

/// The model input from openpi's padded arrays: masked views and padding are dropped.
pub fn input_from_arrays(
    images: &[f32],
    image_mask: &[f64],
    tokens: &[f64],
    token_mask: &[f64],
    state: &[f32],
) -> ModelInput {
    let px = images.len() / image_mask.len();
    ModelInput {
        images: image_mask
            .iter()
            .enumerate()
            .map(|(i, &m)| (m != 0.0).then(|| images[i * px..(i + 1) * px].to_vec()))
            .collect(),
        tokens: tokens
            .iter()
            .zip(token_mask)
            .filter(|(_, &m)| m != 0.0)
            .map(|(&t, _)| t as u32)
            .collect(),
        state: state.to_vec(),
    }
}

/// The golden observation (the noise is `g["noise"]`).
pub fn golden_input(g: &HashMap<String, G>) -> ModelInput {
    input_from_arrays(
        &g["images"].f32s(),
        &g["image_mask"].data,
        &g["tokens"].data,
        &g["token_mask"].data,
        &g["state"].f32s(),
    )
}

/// (rel L2, max |d|) of `ours` against `want`; panics on NaN or Inf.
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
