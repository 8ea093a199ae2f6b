//! pi0-bench: latency of the CUDA engine's `forward` (CUDA graphs) per configuration.
//! Warm-up, then median / p90 / p99 of N runs, plus a stage breakdown (encoder, decoder GPU
//! time from events). Without `--checkpoint` it runs full-size π0 on seeded random weights.
//!
//!   pi0-bench --views 2 --prompt-len 20 --chunk 50 --iterations 200
//!   pi0-bench --configs 1x20x50,2x20x50,3x20x50,2x0x63      (views x prompt x chunk)

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
use pi0_mps::model::{checkpoint, config::ModelConfig};
use pi0_mps::ModelInput;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Latency of pi0 forward on the CUDA engine")]
struct Args {
    /// Checkpoint directory; random full-size weights when absent.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    views: usize,
    #[arg(long, default_value_t = 20)]
    prompt_len: usize,
    #[arg(long, default_value_t = 50)]
    chunk: usize,
    /// Several configurations in one process: "VxPxC,..." (views x prompt tokens x chunk).
    #[arg(long)]
    configs: Option<String>,
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Time `forward_eager` (no graphs) too.
    #[arg(long)]
    eager: bool,
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Decoder weight GEMMs on cuBLASLt instead of the weight-streaming kernel.
    #[arg(long)]
    cublaslt_decoder: bool,
    /// No programmatic dependent launches in the decoder.
    #[arg(long)]
    no_pdl: bool,
    /// Attention as cuBLASLt QKᵀ / P·V GEMMs around a softmax kernel instead of the fused kernel.
    #[arg(long)]
    unfused_attention: bool,
    /// The fused attention kernel for the LLM and the action expert too (not only vision).
    #[arg(long)]
    fused_gemma_attention: bool,
    /// Study: for each GEMM shape "m,n,k;..." run each cuBLASLt heuristic candidate in the
    /// captured graphs (PI0_LT_PICK set in-process) and print encoder / decoder medians.
    #[arg(long)]
    lt_sweep: Option<String>,
    /// Candidates per shape for --lt-sweep (also asks the heuristic for that many).
    #[arg(long, default_value_t = 16)]
    lt_candidates: usize,
    /// Study: time the LLM's gate|up + GELU·up N times per path (cuBLASLt + gelu_mul_k, each
    /// shape of the fused Hopper kernel) on each configuration's prefix, and compare their h.
    #[arg(long)]
    gate_up_study: Option<usize>,
}

/// --lt-sweep: encoder and decoder GPU medians of `forward` with candidate i of each shape.
fn lt_sweep(
    eng: &mut Pi0Cuda,
    shapes: &str,
    candidates: usize,
    input: &ModelInput,
    noise: &[f32],
) -> pi0_mps::Result<()> {
    // The reference runs on the engine's own plans, made before any candidate count is set.
    let reference = eng.forward(input, noise)?;
    // The engine reads these when it plans a GEMM; no other thread reads the environment here.
    std::env::set_var("PI0_LT_CANDS", candidates.to_string());
    println!("\n| shape | candidate | encoder ms | decoder ms | rel diff vs default |");
    println!("|---|---|---|---|---|");
    for shape in shapes.split(';') {
        for i in 0..candidates {
            std::env::set_var("PI0_LT_PICK", format!("{shape}:{i}"));
            eng.replan_gemms()?;
            let mut out = Vec::new();
            for _ in 0..4 {
                out = eng.forward(input, noise)?;
            }
            let (mut enc, mut dec) = (Vec::new(), Vec::new());
            for _ in 0..30 {
                let (_, t) = eng.forward_timed(input, noise)?;
                enc.push(t.encoder_ms as f64);
                dec.push(t.decoder_ms as f64);
            }
            enc.sort_by(|a, b| a.partial_cmp(b).unwrap());
            dec.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let num: f64 = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
            println!(
                "| {shape} | {i} | {:.3} | {:.3} | {:.2e} |",
                pct(&enc, 0.5),
                pct(&dec, 0.5),
                (num / den).sqrt()
            );
        }
    }
    std::env::remove_var("PI0_LT_PICK");
    std::env::remove_var("PI0_LT_CANDS");
    eng.replan_gemms()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("pi0-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> pi0_mps::Result<()> {
    let configs: Vec<(usize, usize, usize)> = match &args.configs {
        Some(s) => s
            .split(',')
            .map(|c| {
                let v: Vec<usize> = c
                    .split('x')
                    .map(|x| x.trim().parse().expect("VxPxC"))
                    .collect();
                assert!(v.len() == 3, "configs are VxPxC");
                (v[0], v[1], v[2])
            })
            .collect(),
        None => vec![(args.views, args.prompt_len, args.chunk)],
    };
    let opts = GpuOptions {
        device: args.device,
        max_views: configs.iter().map(|c| c.0).max().unwrap().max(1),
        max_prompt_len: configs.iter().map(|c| c.1).max().unwrap(),
        max_chunk: configs.iter().map(|c| c.2).max().unwrap(),
        weight_streaming: !args.cublaslt_decoder,
        pdl: !args.no_pdl,
        fused_attention: !args.unfused_attention,
        fused_gemma_attention: args.fused_gemma_attention,
        ..Default::default()
    };
    let t = Instant::now();
    let (mut eng, what) = match &args.checkpoint {
        Some(dir) => {
            let loaded = checkpoint::load(dir)?;
            (
                Pi0Cuda::new(&loaded, opts)?,
                format!("checkpoint {}", dir.display()),
            )
        }
        None => (
            Pi0Cuda::random(&ModelConfig::pi0(), 1, opts)?,
            "random full-size pi0 weights (seed 1)".to_string(),
        ),
    };
    let cfg = pi0_mps::PolicyEngine::config(&eng).clone();
    println!(
        "device: {} | weights: {} | ready in {:.1} s (kernels from cache: {}) | decoder GEMMs: {} | PDL: {} | attention: {}",
        eng.device_name(),
        what,
        t.elapsed().as_secs_f64(),
        eng.kernels_from_cache(),
        if args.cublaslt_decoder { "cuBLASLt" } else { "weight-streaming" },
        !args.no_pdl,
        match (args.unfused_attention, args.fused_gemma_attention) {
            (true, _) => "cuBLASLt + softmax",
            (false, false) => "fused (vision)",
            (false, true) => "fused (vision, LLM, expert)",
        }
    );
    let px = cfg.vision.image_size * cfg.vision.image_size * 3;
    let mut rows = Vec::new();
    let mut breakdown = Vec::new();
    for &(views, prompt, chunk) in &configs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let input = ModelInput {
            images: (0..views)
                .map(|_| Some((0..px).map(|_| rng.gen_range(-1.0f32..1.0)).collect()))
                .collect(),
            tokens: (0..prompt)
                .map(|i| {
                    if i == 0 {
                        2
                    } else {
                        rng.gen_range(3..cfg.vocab_size as u32)
                    }
                })
                .collect(),
            state: (0..cfg.action_dim)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect(),
        };
        let noise = pi0_mps::engine::gaussian_noise(7, chunk, cfg.action_dim);
        for _ in 0..args.warmup.max(2) {
            let out = eng.forward(&input, &noise)?;
            if out.iter().any(|x| !x.is_finite()) {
                return Err(pi0_mps::Error::Gpu("non-finite actions".into()));
            }
        }
        let mut ts = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            let out = eng.forward(&input, &noise)?;
            ts.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(out);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // Parts of forward: GPU events for each copy and stage, host wall for the rest.
        let mut parts: [Vec<f64>; 5] = Default::default();
        for _ in 0..args.iterations.clamp(5, 50) {
            let (_, st) = eng.forward_timed(&input, &noise)?;
            let vals = [
                st.upload_ms,
                st.encoder_ms,
                st.decoder_ms,
                st.download_ms,
                st.host_ms(),
            ];
            for (v, x) in parts.iter_mut().zip(vals) {
                v.push(x as f64);
            }
        }
        for v in parts.iter_mut() {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        breakdown.push((views, prompt, chunk, parts.each_ref().map(|v| pct(v, 0.5))));
        let (enc, dec) = (&parts[1], &parts[2]);
        let eager = if args.eager {
            let mut e = Vec::new();
            for _ in 0..args.iterations.clamp(3, 20) {
                let t = Instant::now();
                eng.forward_eager(&input, &noise)?;
                e.push(t.elapsed().as_secs_f64() * 1e3);
            }
            e.sort_by(|a, b| a.partial_cmp(b).unwrap());
            Some(pct(&e, 0.5))
        } else {
            None
        };
        if let Some(shapes) = &args.lt_sweep {
            lt_sweep(&mut eng, shapes, args.lt_candidates, &input, &noise)?;
        }
        if let Some(n) = args.gate_up_study {
            eng.forward(&input, &noise)?;
            println!("\n| config | h = GELU(gate)·up path | µs per layer | h rel L2 vs cuBLASLt |");
            println!("|---|---|---|---|");
            for (path, us, rel) in eng.study_llm_gate_up(n)? {
                println!("| {views}x{prompt}x{chunk} | {path} | {us:.1} | {rel:.2e} |");
            }
        }
        rows.push((
            views,
            prompt,
            chunk,
            pct(&ts, 0.5),
            pct(&ts, 0.9),
            pct(&ts, 0.99),
            pct(enc, 0.5),
            pct(dec, 0.5),
            eager,
        ));
    }
    println!("\n| views | prompt | chunk | median ms | p90 ms | p99 ms | encoder ms | decoder ms | eager ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.0,
            r.1,
            r.2,
            r.3,
            r.4,
            r.5,
            r.6,
            r.7,
            r.8.map(|x| format!("{x:.3}")).unwrap_or("-".into())
        );
    }
    println!("(iterations {}, warm-up {}, 10 flow steps, forward = upload + encoder graph + decoder graph + download)", args.iterations, args.warmup);
    println!("\n| views | prompt | chunk | upload ms | encoder ms | decoder ms | download ms | host ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for (v, p, c, m) in breakdown {
        println!(
            "| {v} | {p} | {c} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            m[0], m[1], m[2], m[3], m[4]
        );
    }
    println!("(medians of `forward_timed`: GPU events per part; host = wall − the four parts: input checks, staging, launches, wake-up)");
    Ok(())
}
