//! Quickstart: every basic pattern of the SM-partitioned pipeline in a few lines each.
//!
//! ```text
//! cargo run --release --example quickstart                       # random full-size π0 weights
//! cargo run --release --example quickstart -- /path/to/checkpoint
//! ```
//! Needs an NVIDIA GPU (prints why not and exits 0 otherwise). docs/tuning.md explains the knobs.

use pi0_mps::engine::{gaussian_noise, ModelInput};
use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
use pi0_mps::model::config::ModelConfig;
use pi0_mps::partition::pi0::Pi0Stages;
use pi0_mps::partition::{cuda_available, Backend, PartitionedPi0, PipelineOptions, SplitRequest};

fn main() -> pi0_mps::Result<()> {
    env_logger::init();
    if let Err(why) = cuda_available() {
        println!("quickstart needs an NVIDIA GPU: {why}");
        return Ok(());
    }
    // 1. The engine: a checkpoint directory, or random weights of the full model.
    let opts = GpuOptions {
        max_views: 2,
        max_prompt_len: 20,
        max_chunk: 50,
        ..Default::default()
    };
    let mut engine = match std::env::args().nth(1) {
        Some(dir) => Pi0Cuda::new(&pi0_mps::model::checkpoint::load(dir.as_ref())?, opts)?,
        None => Pi0Cuda::random(&ModelConfig::pi0(), 1, opts)?,
    };
    let cfg = pi0_mps::PolicyEngine::config(&engine).clone();
    let px = cfg.vision.image_size * cfg.vision.image_size * 3;
    let input = ModelInput {
        images: vec![Some(vec![0.1; px]), Some(vec![-0.2; px])], // two pre-processed views
        tokens: (0..20).map(|i| 2 + i as u32).collect(),         // prompt token ids
        state: vec![0.0; cfg.action_dim],                        // normalised joint state
    };
    let noise = gaussian_noise(0, 50, cfg.action_dim);

    // 2. forward, sequential: the engine alone (both stages as CUDA graphs, whole GPU).
    let actions = engine.forward(&input, &noise)?;
    println!("forward sequential: {} values", actions.len());

    // 3. The partitioned pipeline around the same engine (green contexts by default).
    let ctx = engine.context().clone();
    let p = PartitionedPi0::new(ctx, Pi0Stages::new(engine, 50), PipelineOptions::default())?;

    // 4. forward, concurrent: both stages on the whole GPU, frame t+1's encoder overlapping
    //    frame t's decoder (the chunk uses the previous observation's prefix).
    p.reconfigure(Backend::None, SplitRequest::whole(), true, true)?;
    let c = p.forward(&input, &noise)?;
    println!("forward concurrent: prefix of observation {}", c.prefix_obs);

    // 5. Partitioned: encoder / decoder percentages of the SMs, sequential or concurrent.
    for (e, d, concurrent) in [
        (100, 100, false),
        (50, 50, true),
        (70, 30, true),
        (30, 70, true),
    ] {
        let c = p.forward_mps(&input, &noise, e, d, concurrent)?;
        println!(
            "forward_mps {e}-{d} concurrent={concurrent}: encoder {} SMs, decoder {} SMs, {:.2} ms",
            c.encoder_sms, c.decoder_sms, c.latency_ms
        );
    }

    // 6. Streaming: camera frames in, action chunks out at control rate, split changed live.
    let obs = p.submit_observation(input.clone())?;
    let chunk = p.request_actions(&input.state, &noise)?;
    println!(
        "streaming: submitted {obs}, chunk used prefix {}",
        chunk.prefix_obs
    );
    let sw = p.set_split(60, 40)?; // takes effect at each stage's next frame boundary
    println!(
        "switched to encoder {} / decoder {} SMs in {:.1} ms",
        sw.to.encoder_sms, sw.to.decoder_sms, sw.prepare_ms
    );
    Ok(())
}
