//! Helpers shared by the GPU tests (tests/gpu_*.rs).
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod golden_data;
pub use golden_data::*;

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
