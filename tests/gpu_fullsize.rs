//! Full-size π0 on random weights: the CUDA engine against the f32 CPU reference engine on
//! identical inputs (views 1, 2, 3 with one masked, prompt 0 and 20), no NaN, determinism.
//! Needs a GPU and ~14 GB of host memory; the checkpoint (~6.5 GB) is written to
//! $PI0_FULL_CKPT (default /tmp/pi0-full-random) when missing. Runs only with PI0_FULL=1.
//! `PI0_FULL=1 cargo test --release --test gpu_fullsize -- --nocapture`

mod gpu_common;

use std::path::PathBuf;
use std::time::Instant;

use gpu_common::*;
use pi0_mps::cpu::CpuEngine;
use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
use pi0_mps::model::{checkpoint, config::ModelConfig, generate};
use pi0_mps::PolicyEngine;

const FULL_REL: f64 = 2e-2;

#[test]
fn gpu_fullsize_vs_cpu_reference() {
    if skip("gpu_fullsize_vs_cpu_reference") {
        return;
    }
    if std::env::var("PI0_FULL").ok().as_deref() != Some("1") {
        println!("skipping gpu_fullsize_vs_cpu_reference: set PI0_FULL=1 (writes a 6.5 GB checkpoint, ~14 GB RAM)");
        return;
    }
    let dir = std::env::var_os("PI0_FULL_CKPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pi0-full-random"));
    if !dir.join("model.safetensors").is_file() {
        let t = Instant::now();
        std::fs::create_dir_all(&dir).unwrap();
        generate::write_random_checkpoint(&ModelConfig::pi0(), &dir, 7, Default::default())
            .unwrap();
        println!(
            "wrote random full-size checkpoint to {} in {:.1} s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let loaded = checkpoint::load(&dir).unwrap();
    let t = Instant::now();
    let mut gpu = Pi0Cuda::new(&loaded, GpuOptions::default()).unwrap();
    println!("GPU engine ready in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut cpu = CpuEngine::new(&loaded).unwrap();
    println!("CPU engine ready in {:.1} s", t.elapsed().as_secs_f64());
    let cfg = loaded.config.clone();
    let px = cfg.vision.image_size * cfg.vision.image_size * 3;
    let cases: [(usize, &[usize], usize); 6] = [
        (1, &[], 0),
        (1, &[], 20),
        (2, &[], 0),
        (2, &[], 20),
        (3, &[2], 0),
        (3, &[1], 20),
    ];
    let mut worst = 0f64;
    for (i, (views, masked, prompt)) in cases.iter().enumerate() {
        let input = random_input(100 + i as u64, *views, masked, *prompt, cfg.vocab_size, px);
        let noise =
            pi0_mps::engine::gaussian_noise(200 + i as u64, cfg.action_horizon, cfg.action_dim);
        let t = Instant::now();
        let want = cpu.sample_actions(&input, &noise).unwrap();
        let cpu_s = t.elapsed().as_secs_f64();
        let a = gpu.forward(&input, &noise).unwrap();
        let b = gpu.forward(&input, &noise).unwrap();
        let e = gpu.forward_eager(&input, &noise).unwrap();
        assert_eq!(a, b, "case {i}: same inputs twice differ");
        assert_eq!(a, e, "case {i}: graph and eager differ");
        let (rel, max) = rel_l2(&a, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
        println!(
            "full-size views {views} (masked {masked:?}) prompt {prompt}: GPU vs CPU rel L2 {rel:.3e}, max |d| {max:.3e} (CPU {cpu_s:.1} s)"
        );
        worst = worst.max(rel);
    }
    assert!(worst <= FULL_REL, "worst rel L2 {worst:.3e} > {FULL_REL}");
}
