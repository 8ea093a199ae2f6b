//! Explore split configurations on this GPU: the six configurations of the reference benchmark
//! plus a sweep, with latency, frame period and decoder latency under encoder load, then the
//! recommended split.
//!
//! ```text
//! cargo run --release --example explore_partitions -- --iterations 50 [--synthetic] [--mps]
//! ```
//! `--synthetic` uses the partition layer's stand-in stages (no weights, fast);
//! `--mps` needs `nvidia-cuda-mps-control -d` running (see docs/tuning.md).

use std::time::Duration;

use pi0_mps::engine::{gaussian_noise, ModelInput};
use pi0_mps::partition::bench::{self, Workload};
use pi0_mps::partition::synthetic::{SyntheticConfig, SyntheticStages};
use pi0_mps::partition::{
    cuda_available, Backend, PartitionedPi0, PipelineOptions, SplitRequest, StageEngine,
};

fn main() -> pi0_mps::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let iterations = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    if let Err(why) = cuda_available() {
        println!("explore_partitions needs an NVIDIA GPU: {why}");
        return Ok(());
    }
    let backend = if flag("--mps") {
        Backend::Mps
    } else {
        Backend::Green
    };
    if flag("--synthetic") {
        let ctx =
            cudarc::driver::CudaContext::new(0).map_err(|e| pi0_mps::Error::Gpu(e.to_string()))?;
        let s = SyntheticStages::new(&ctx, SyntheticConfig::default())?;
        let work = Workload {
            inputs: (0..4).map(|i| s.observation(i)).collect(),
            noise: (0..4).map(|i| gaussian_noise(i, 50, 32)).collect(),
        };
        let p = PartitionedPi0::new(ctx, s, PipelineOptions::default())?;
        explore(&p, &work, backend, iterations)
    } else {
        use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
        let cfg = pi0_mps::model::config::ModelConfig::pi0();
        let opts = GpuOptions {
            max_views: 2,
            max_prompt_len: 20,
            max_chunk: 50,
            ..Default::default()
        };
        let engine = Pi0Cuda::random(&cfg, 1, opts)?;
        let px = cfg.vision.image_size * cfg.vision.image_size * 3;
        let work = Workload {
            inputs: (0..4)
                .map(|i| ModelInput {
                    images: vec![
                        Some(gaussian_noise(i, px, 1).iter().map(|x| x.tanh()).collect());
                        2
                    ],
                    tokens: (0..20).map(|t| 2 + t as u32).collect(),
                    state: gaussian_noise(100 + i, 1, cfg.action_dim),
                })
                .collect(),
            noise: (0..4)
                .map(|i| gaussian_noise(i, 50, cfg.action_dim))
                .collect(),
        };
        let ctx = engine.context().clone();
        let p = PartitionedPi0::new(
            ctx,
            pi0_mps::partition::pi0::Pi0Stages::new(engine, 50),
            PipelineOptions::default(),
        )?;
        explore(&p, &work, backend, iterations)
    }
}

fn explore<E: StageEngine + 'static>(
    p: &PartitionedPi0<E>,
    work: &Workload,
    backend: Backend,
    iterations: usize,
) -> pi0_mps::Result<()> {
    // The six configurations, plus complementary and overlapping splits.
    let sweep = [(80, 20), (60, 40), (40, 60), (20, 80), (30, 100), (50, 100)];
    let results = bench::run_cases(p, &bench::six_way(backend, &sweep), work, iterations, 1)?;
    println!("{}", bench::report(&results));
    // Switch live to the recommended split while streaming, and report the switch.
    if let Some(best) = bench::recommend(&results) {
        let (e, d) = (
            best.request.encoder_pct as u32,
            best.request.decoder_pct as u32,
        );
        let r = bench::reconfig_under_load(
            p,
            work,
            3.0,
            4,
            Duration::from_millis(40),
            &[
                (backend, SplitRequest::new(e, d)?),
                (backend, SplitRequest::new(50, 50)?),
            ],
        )?;
        println!(
            "streaming 3 s with 4 switches: {} chunks, {} dropped observations, switch applied after {:.2} ms (decoder) / {:.2} ms (encoder) at the median",
            r.chunks, r.dropped, r.applied_decoder_ms.p50, r.applied_encoder_ms.p50
        );
    }
    Ok(())
}
