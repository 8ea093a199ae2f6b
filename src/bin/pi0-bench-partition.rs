//! `pi0-bench-partition`: the partition layer's measurements (the reference's
//! `benchmark_forward_methods.py --iterations N`), on the synthetic stages or the real engine.
//!
//! ```text
//! pi0-bench-partition --iterations 200 --sweep            # six-way table (+ sweep)
//! pi0-bench-partition --confinement --equivalence --reconfig 30
//! pi0-bench-partition --backend mps --confinement         # needs nvidia-cuda-mps-control -d
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pi0_mps::engine::ModelInput;
use pi0_mps::partition::bench::{self, Workload};
use pi0_mps::partition::spans::{stage_times, StageSpan};
use pi0_mps::partition::swap::Stage;
use pi0_mps::partition::synthetic::{PartitionKernels, SyntheticConfig, SyntheticStages};
use pi0_mps::partition::{
    cuda_available, Backend, PartitionedPi0, PipelineOptions, SplitRequest, StageEngine,
};

#[derive(Parser, Debug)]
#[command(
    about = "SM-partition benchmark: six configurations, confinement, equivalence, live reconfiguration"
)]
struct Args {
    /// Frames per configuration.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Also sweep complementary splits (encoder 90..20 %).
    #[arg(long)]
    sweep: bool,
    /// More splits to time, e.g. `48-52,45-55` (encoder-decoder percentages, concurrent).
    #[arg(long, value_delimiter = ',', value_parser = parse_split)]
    splits: Vec<(u32, u32)>,
    /// Skip the six-way benchmark.
    #[arg(long)]
    no_bench: bool,
    /// Backend of the partitioned configurations: green or mps.
    #[arg(long, default_value = "green")]
    backend: String,
    /// Prove confinement with the %smid probe for several splits.
    #[arg(long)]
    confinement: bool,
    /// Concurrent == sequential over this many frames (per phase) with reconfigurations.
    #[arg(long, default_value_t = 0)]
    equivalence: usize,
    /// Reconfiguration under load: stream this many seconds with 20 split changes.
    #[arg(long, default_value_t = 0.0)]
    reconfig: f64,
    /// Synthetic encoder FMA iterations per layer (sets its cost).
    #[arg(long, default_value_t = 600)]
    enc_iters: i32,
    /// Synthetic decoder weight MiB streamed per step.
    #[arg(long, default_value_t = 512)]
    dec_weight_mib: usize,
    /// Engine: synthetic (the layer's own load kernels) or pi0 (the real engine, random
    /// full-size weights: 2 views, prompt 20, chunk 50).
    #[arg(long, default_value = "synthetic")]
    engine: String,
    /// Write JSON results and tables here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Study (pi0 engine): the green 50-50 frame with cuBLASLt candidate i of each listed GEMM
    /// shape, `m,n,k;m,n,k` (`PI0_LT_PICK` set in-process, the split's graphs captured again
    /// for each), instead of the other measurements.
    #[arg(long)]
    lt_sweep: Option<String>,
    /// Study (pi0 engine): the green 50-50 frame, one split for the whole sweep, with the
    /// second stage enqueued each listed number of µs after the first (`PI0_STAGE_DELAY_US`;
    /// the encoder after the decoder, or the reverse with `PI0_FWD_ENCODER_FIRST=1`), in the
    /// listed order and then back, instead of the other measurements.
    #[arg(long)]
    delay_sweep: Option<String>,
    /// Candidates per shape for --lt-sweep (also asks the heuristic for that many).
    #[arg(long, default_value_t = 6)]
    lt_candidates: usize,
    /// Capture each configuration's graphs (and the native forward's) this many times and
    /// keep the fastest set before measuring it: graph instances of one configuration keep
    /// run states a few % apart (docs/partition-notes.md). 1: the first capture, as before.
    #[arg(long, default_value_t = 1)]
    graph_candidates: usize,
    /// Study (pi0 engine): this many lockstep frames of the green 50-50 split, each frame's
    /// time printed in order (is the frame period's tail periodic, a drift, or noise?), instead
    /// of the other measurements.
    #[arg(long, default_value_t = 0)]
    frame_trace: usize,
    /// Study (pi0 engine): each stage on its half of the green 50-50 split, alone and beside
    /// aggressors that load one shared resource each (power, launches, L2, HBM), then beside
    /// the other stage; this many runs per row, instead of the other measurements.
    #[arg(long, default_value_t = 0)]
    interference: usize,
}

/// `E-D` → (E, D), both percentages in 1..=100.
fn parse_split(s: &str) -> Result<(u32, u32), String> {
    let (e, d) = s
        .split_once('-')
        .ok_or_else(|| format!("split {s:?}: expected ENCODER-DECODER, e.g. 48-52"))?;
    let pct = |v: &str| -> Result<u32, String> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| format!("split {s:?}: {v:?} is not a percentage in 1..=100"))
    };
    Ok((pct(e)?, pct(d)?))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Err(why) = cuda_available() {
        eprintln!("pi0-bench-partition: no GPU here ({why}); nothing to measure");
        std::process::exit(0);
    }
    if let Err(e) = run(&args) {
        eprintln!("pi0-bench-partition: {e}");
        std::process::exit(1);
    }
}

fn write(args: &Args, name: &str, text: &str) {
    if let Some(d) = &args.out {
        let _ = std::fs::create_dir_all(d);
        let _ = std::fs::write(d.join(name), text);
    }
}

fn run(args: &Args) -> pi0_mps::Result<()> {
    let backend: Backend = args.backend.parse()?;
    match args.engine.as_str() {
        "synthetic" => {
            let ctx = cudarc::driver::CudaContext::new(0)
                .map_err(|e| pi0_mps::Error::Gpu(e.to_string()))?;
            let cfg = SyntheticConfig {
                enc_iters: args.enc_iters,
                dec_weight_bytes: args.dec_weight_mib << 20,
                ..Default::default()
            };
            let stages = SyntheticStages::new(&ctx, cfg.clone())?;
            let work = workload(&stages, 8);
            println!("engine: synthetic stages {cfg:?}");
            let p = PartitionedPi0::new(
                ctx.clone(),
                stages,
                PipelineOptions {
                    backend: Backend::None,
                    ..Default::default()
                },
            )?;
            run_all(args, backend, &p, &work, None)
        }
        "pi0" => {
            use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
            use pi0_mps::model::config::ModelConfig;
            let t = std::time::Instant::now();
            let cfg = ModelConfig::pi0();
            let opts = GpuOptions {
                max_views: 2,
                max_prompt_len: 20,
                max_chunk: 50,
                prefix_slots: 2,
                decoder_slots: 1,
                ..Default::default()
            };
            let mut eng = Pi0Cuda::random(&cfg, 1, opts)?;
            println!(
                "engine: pi0 random full-size weights on {} ready in {:.1} s",
                eng.device_name(),
                t.elapsed().as_secs_f64()
            );
            let work = pi0_workload(&cfg, 8);
            // The engine's own forward (graphs, one stream, whole GPU): "forward sequential".
            for i in 0..5 {
                eng.forward(&work.inputs[i % 8], &work.noise[i % 8])?;
            }
            if args.graph_candidates > 1 {
                let times = eng.keep_fastest_forward_graphs(args.graph_candidates, |e| {
                    // The first call after a capture runs eagerly: warm up first.
                    for i in 0..5 {
                        e.forward(&work.inputs[i % 8], &work.noise[i % 8])?;
                    }
                    Ok(bench::Summary::of(&native_latencies(e, &work, 20)?).p50)
                })?;
                println!(
                    "graph candidates | native forward | {} ms",
                    bench::list_ms(&times)
                );
            }
            let lat = native_latencies(&mut eng, &work, args.iterations)?;
            let (mut e, mut d) = (Vec::new(), Vec::new());
            for i in 0..20 {
                let (_, st) = eng.forward_timed(&work.inputs[i % 8], &work.noise[i % 8])?;
                e.push(st.encoder_ms as f64);
                d.push(st.decoder_ms as f64);
            }
            let l = bench::Summary::of(&lat);
            let native = bench::ConfigResult {
                name: "forward sequential".into(),
                backend: Backend::None,
                request: SplitRequest::whole(),
                encoder_sms: 132,
                decoder_sms: 132,
                concurrent: false,
                latency: l,
                frame_period_ms: l.mean,
                obs_to_action: None,
                encoder_solo: bench::Summary::of(&e),
                decoder_solo: bench::Summary::of(&d),
                decoder_loaded: None,
                streaming_encoder_period_ms: None,
            };
            println!("native forward: p50 {:.3} ms p99 {:.3} ms (encoder {:.3} ms, decoder {:.3} ms GPU time)", l.p50, l.p99, native.encoder_solo.p50, native.decoder_solo.p50);
            let ctx = eng.context().clone();
            let stages = pi0_mps::partition::pi0::Pi0Stages::new(eng, 50);
            let p = PartitionedPi0::new(
                ctx,
                stages,
                PipelineOptions {
                    backend: Backend::None,
                    ..Default::default()
                },
            )?;
            if args.frame_trace > 0 {
                return frame_trace(&p, &work, args.frame_trace);
            }
            if let Some(delays) = &args.delay_sweep {
                return delay_sweep(&p, &work, delays, args.iterations);
            }
            if let Some(shapes) = &args.lt_sweep {
                return lt_sweep(&p, &work, shapes, args.lt_candidates, args.iterations);
            }
            if args.interference > 0 {
                return interference(&p, &work, args.interference);
            }
            run_all(args, backend, &p, &work, Some(native))
        }
        other => Err(pi0_mps::Error::Parameter {
            name: "engine".into(),
            reason: format!("`{other}`: use synthetic or pi0"),
        }),
    }
}

/// Wall time of each of `n` calls of the engine's own `forward`, ms.
fn native_latencies(
    eng: &mut pi0_mps::gpu::Pi0Cuda,
    work: &Workload,
    n: usize,
) -> pi0_mps::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = std::time::Instant::now();
        eng.forward(work.input(i), work.noise(i))?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lat)
}

/// --frame-trace: each frame of the green 50-50 lockstep `forward`, in order, then the mean
/// of the even and odd frames (the pipeline alternates two prefix slots, each with its own
/// graphs) and of each half of the run.
fn frame_trace(
    p: &PartitionedPi0<pi0_mps::partition::pi0::Pi0Stages>,
    work: &Workload,
    frames: usize,
) -> pi0_mps::Result<()> {
    p.reconfigure(Backend::Green, SplitRequest::new(50, 50)?, true, true)?;
    for pass in 0..2 {
        // The second pass also takes the stages' GPU timestamps (two events per launch).
        p.record_stage_spans(pass == 1);
        let t = bench::time_frames(p, work, frames)?;
        let v = &t.latency_ms;
        let spans = p.take_stage_spans()?;
        p.record_stage_spans(false);
        println!("\nframe trace, pass {pass} ({frames} frames, ms):");
        for (i, row) in v.chunks(10).enumerate() {
            println!("{:4}: {}", i * 10, bench::list_ms(row));
        }
        let mean = |x: &[f64]| bench::Summary::of(x).mean;
        // Frames alternate the two prefix slots (each with its own graphs).
        let parity = |m: usize| -> Vec<f64> { v.iter().skip(m).step_by(2).copied().collect() };
        let (first, second) = v.split_at(v.len() / 2);
        println!(
            "period {:.3}, p50 {:.3}, even {:.3}, odd {:.3}, first half {:.3}, second half {:.3}",
            t.period_ms,
            bench::Summary::of(v).p50,
            mean(&parity(0)),
            mean(&parity(1)),
            mean(first),
            mean(second)
        );
        if !spans.is_empty() {
            print_stage_spans(&spans);
        }
    }
    let (dec, enc_period) = bench::streaming_under_load(p, work, frames)?;
    println!(
        "streaming, same split: decoder p50 {:.3} mean {:.3} ms, one observation every {enc_period:.3} ms",
        dec.p50, dec.mean
    );
    Ok(())
}

/// The frame-trace pass's GPU timestamps: each stage's GPU time and the gap from its own
/// previous end (what the host left idle), per frame and on average, and how far the encoder
/// started after the decoder.
fn print_stage_spans(spans: &[StageSpan]) {
    let dec = stage_times(spans, Stage::Decoder);
    let enc = stage_times(spans, Stage::Encoder);
    println!("GPU spans (ms): frame | decoder time, gap | encoder time, gap | encoder start - decoder start");
    let gap = |g: Option<f64>| g.map_or("-".into(), |g| format!("{g:.3}"));
    for (i, (d, e)) in dec.iter().zip(&enc).enumerate() {
        println!(
            "{i:4} | {:.3} {} | {:.3} {} | {:.3}",
            d.gpu_ms,
            gap(d.gap_ms),
            e.gpu_ms,
            gap(e.gap_ms),
            e.start_ms - d.start_ms
        );
    }
    let mean = |v: Vec<f64>| bench::Summary::of(&v).mean;
    println!(
        "spans mean: decoder {:.3} + gap {:.3}, encoder {:.3} + gap {:.3}, encoder start - decoder start {:.3}",
        mean(dec.iter().map(|d| d.gpu_ms).collect()),
        mean(dec.iter().filter_map(|d| d.gap_ms).collect()),
        mean(enc.iter().map(|e| e.gpu_ms).collect()),
        mean(enc.iter().filter_map(|e| e.gap_ms).collect()),
        mean(dec.iter().zip(&enc).map(|(d, e)| e.start_ms - d.start_ms).collect())
    );
}

/// --delay-sweep: does the pair's frame depend on how the stages line up? One green 50-50
/// split (so one state of its graphs), the second stage started later by each delay in turn; a
/// frame that moves by more than the delay, or not monotonically, says it does.
fn delay_sweep(
    p: &PartitionedPi0<pi0_mps::partition::pi0::Pi0Stages>,
    work: &Workload,
    delays: &str,
    iterations: usize,
) -> pi0_mps::Result<()> {
    let delays: Vec<u64> = delays
        .split(',')
        .map(|d| {
            d.trim().parse().map_err(|_| pi0_mps::Error::Parameter {
                name: "delay-sweep".into(),
                reason: format!("`{d}` is not a whole number of µs"),
            })
        })
        .collect::<pi0_mps::Result<_>>()?;
    // Set before the first frame: the pipeline reads the knob only if it was there then.
    std::env::set_var("PI0_STAGE_DELAY_US", "0");
    let half = SplitRequest {
        encoder_pct: 50,
        decoder_pct: 50,
    };
    p.reconfigure(Backend::Green, half, true, true)?;
    println!("\n| second stage delay µs | frame ms | frame p50 ms |");
    println!("|---|---|---|");
    let order = delays.iter().chain(delays.iter().rev());
    for &us in order {
        // The pipeline reads it each frame; no other thread reads the environment here.
        std::env::set_var("PI0_STAGE_DELAY_US", us.to_string());
        let frames = bench::time_frames(p, work, iterations)?;
        let (frame, p50) = (frames.period_ms, bench::Summary::of(&frames.latency_ms).p50);
        println!("| {us} | {frame:.3} | {p50:.3} |");
    }
    std::env::set_var("PI0_STAGE_DELAY_US", "0");
    Ok(())
}

/// --lt-sweep: the green 50-50 frame, the encoder alone on its half and the decoder while the
/// encoder runs, with the default cuBLASLt picks and with candidate i of each shape.
fn lt_sweep(
    p: &PartitionedPi0<pi0_mps::partition::pi0::Pi0Stages>,
    work: &Workload,
    shapes: &str,
    candidates: usize,
    iterations: usize,
) -> pi0_mps::Result<()> {
    let half = SplitRequest {
        encoder_pct: 50,
        decoder_pct: 50,
    };
    let kernels = PartitionKernels::load(p.context())?;
    let recaptures: usize = std::env::var("PI0_SWEEP_RECAPTURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Plans are made again, and the split's graphs captured again, under the current picks.
    let measure = |label: &str| -> pi0_mps::Result<()> {
        p.reconfigure(Backend::None, SplitRequest::whole(), false, true)?;
        p.synchronize()?;
        p.forget_prepared_splits();
        p.engine().engine.replan_gemms()?;
        p.reconfigure(Backend::Green, half, true, true)?;
        let r = bench::measure(p, label, work, iterations)?;
        // The same split measured again: tells a state of the split from drift over time.
        let again = bench::measure(p, label, work, iterations)?;
        // The same split with its graphs captured again: a state of the graphs or of the split.
        // `PI0_SWEEP_RECAPTURES` times, each measured (default once).
        let mut recaptured = Vec::new();
        for _ in 0..recaptures {
            p.recapture_graphs()?;
            let m = bench::measure(p, label, work, iterations)?;
            recaptured.push(format!("{:.3}", m.frame_period_ms));
        }
        // Which physical SMs each stage got: a new split is made for every row, and its SMs
        // are the driver's choice.
        let (enc, dec) = p.streams();
        let (enc, dec) = (
            kernels.probe_sms(&enc, false)?,
            kernels.probe_sms(&dec, false)?,
        );
        println!(
            "| {label} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {} | {} |",
            r.frame_period_ms,
            again.frame_period_ms,
            recaptured.join(" / "),
            r.encoder_solo.p50,
            r.decoder_loaded.map_or(f64::NAN, |d| d.p50),
            sm_ranges(&enc),
            sm_ranges(&dec)
        );
        Ok(())
    };
    println!("\n| green 50-50 with | frame ms | frame again ms | frame, graphs recaptured ms | encoder solo ms | decoder under load ms | encoder SMs | decoder SMs |");
    println!("|---|---|---|---|---|---|---|---|");
    // The baseline with the engine's own candidate count, which the down projection's
    // preferred pick depends on.
    measure("default")?;
    // The engine reads these when it plans a GEMM; no other thread reads the environment here.
    std::env::set_var("PI0_LT_CANDS", candidates.to_string());
    for shape in shapes.split(';') {
        for i in 0..candidates {
            std::env::set_var("PI0_LT_PICK", format!("{shape}:{i}"));
            if let Err(e) = measure(&format!("{shape}:{i}")) {
                println!("| {shape}:{i} | error: {e} | | | | | | |");
            }
        }
    }
    std::env::remove_var("PI0_LT_PICK");
    std::env::remove_var("PI0_LT_CANDS");
    measure("default (again)")
}

/// --interference: the green 50-50 split, each stage timed beside each aggressor.
fn interference<E: StageEngine + 'static>(
    p: &PartitionedPi0<E>,
    work: &Workload,
    n: usize,
) -> pi0_mps::Result<()> {
    use pi0_mps::partition::interference::{self as inf, Aggressors, Load, Victim};
    let agg = Aggressors::load(p.context())?;
    p.reconfigure(
        Backend::Green,
        SplitRequest {
            encoder_pct: 50,
            decoder_pct: 50,
        },
        true,
        true,
    )?;
    let info = p.partition();
    println!(
        "interference study on green 50-50: encoder {} SMs, decoder {} SMs, {n} runs per row",
        info.encoder_sms, info.decoder_sms
    );
    let mut rows = Vec::new();
    for victim in [Victim::Decoder, Victim::Encoder] {
        let r = inf::study(p, work, &agg, victim, &Load::all(), n)?;
        println!("{}", inf::table(&r));
        rows.extend(r);
    }
    println!("\n{}", inf::table(&rows));
    Ok(())
}

/// `{0,1,2,5,7,8}` → `0-2,5,7-8`.
fn sm_ranges(sms: &std::collections::BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = sms.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.next_if_eq(&(last + 1)).is_some() {
            last += 1;
        }
        out.push(if first == last {
            format!("{first}")
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

fn run_all<E: StageEngine + 'static>(
    args: &Args,
    backend: Backend,
    p: &PartitionedPi0<E>,
    work: &Workload,
    native: Option<bench::ConfigResult>,
) -> pi0_mps::Result<()> {
    let ctx = p.context().clone();
    let kernels = PartitionKernels::load(&ctx)?;
    let layout = pi0_mps::partition::pipeline::device_layout(&ctx)?;
    println!(
        "device: {} SMs, green contexts: {} groups of {} + {} left over",
        layout.total,
        layout.groups,
        layout.granularity,
        layout.remainder()
    );
    let mut summary = String::new();
    let req = |e, d| SplitRequest::new(e, d).unwrap();

    if args.confinement {
        let splits: Vec<(Backend, SplitRequest)> = match backend {
            Backend::Mps => vec![
                (Backend::Mps, req(50, 50)),
                (Backend::Mps, req(70, 30)),
                (Backend::Mps, req(30, 70)),
                (Backend::Mps, req(25, 12)),
                (Backend::Mps, req(80, 60)),
            ],
            _ => vec![
                (Backend::Green, req(50, 50)),
                (Backend::Green, req(70, 30)),
                (Backend::Green, req(30, 70)),
                (Backend::Green, req(90, 10)),
                (Backend::Green, req(20, 20)),
                (Backend::Green, req(70, 70)),
                (Backend::Green, req(100, 30)),
                (Backend::None, req(100, 100)),
            ],
        };
        let rows = bench::confinement(p, &kernels, &splits)?;
        let t = bench::confinement_table(&rows);
        println!("\n## confinement (%smid probe, 528 blocks)\n{t}");
        write(args, &format!("confinement-{backend}.md"), &t);
        summary += &format!(
            "confinement {backend}: {}/{} ok\n",
            rows.iter().filter(|r| r.ok()).count(),
            rows.len()
        );
    }

    if args.equivalence > 0 {
        let splits = match backend {
            Backend::Mps => vec![
                (Backend::Mps, req(70, 30)),
                (Backend::Mps, req(50, 50)),
                (Backend::None, req(100, 100)),
                (Backend::Mps, req(30, 70)),
            ],
            _ => vec![
                (Backend::Green, req(70, 30)),
                (Backend::Green, req(50, 50)),
                (Backend::None, req(100, 100)),
                (Backend::Green, req(30, 70)),
                (Backend::Green, req(60, 60)),
            ],
        };
        let eq = bench::equivalence(p, work, args.equivalence, 20, &splits)?;
        let line = format!(
            "equivalence ({backend}): {} chunks, {} reconfigurations, {} configurations; vs sequential on the same split: {} bitwise equal, max rel err {:.3e} (need ≤ 1e-3): {}; vs sequential on the whole GPU: max rel err {:.3e}",
            eq.frames,
            eq.reconfigurations,
            eq.configurations,
            eq.bitwise_equal,
            eq.max_rel_err,
            if eq.max_rel_err <= 1e-3 { "PASS" } else { "FAIL" },
            eq.max_rel_err_whole_gpu
        );
        println!("\n{line}");
        summary += &line;
        summary.push('\n');
    }

    if args.reconfig > 0.0 {
        let b = if backend == Backend::Mps {
            Backend::Mps
        } else {
            Backend::Green
        };
        let splits = vec![
            (b, req(70, 30)),
            (b, req(50, 50)),
            (b, req(30, 70)),
            (b, req(60, 40)),
            (b, req(80, 20)),
            (b, req(40, 60)),
        ];
        // Camera at 30 Hz, or 2.5 × the slowest solo encoder of the cycle if that is slower
        // (the encoder slows down while the decoder runs): no drops unless a switch causes one.
        p.reconfigure(b, req(30, 70), true, true)?;
        let mut slow = 0.0f64;
        for i in 0..5 {
            let t0 = std::time::Instant::now();
            p.encode(&work.inputs[i % work.inputs.len()])?;
            slow = slow.max(t0.elapsed().as_secs_f64());
        }
        let cam = Duration::from_secs_f64((slow * 2.5).max(1.0 / 30.0));
        let r = bench::reconfig_under_load(p, work, args.reconfig, 20, cam, &splits)?;
        let line = format!(
            "reconfig ({b}): {:.1} s, {} changes, {} errors; camera {:.2} ms: {} submitted, {} encoded, {} dropped; \
             {} chunks (median gap {:.3} ms, max gap {:.3} ms); prepare new p50 {:.2} ms (max n={}), cached p50 {:.3} ms; \
             applied encoder p50/p99 {:.3}/{:.3} ms, decoder p50/p99 {:.3}/{:.3} ms; boundary swap p50/p99 {:.1}/{:.1} µs",
            r.seconds,
            r.changes,
            r.errors,
            cam.as_secs_f64() * 1e3,
            r.submitted,
            r.encoded,
            r.dropped,
            r.chunks,
            r.median_gap_ms,
            r.max_gap_ms,
            r.prepare_new_ms.p50,
            r.prepare_new_ms.n,
            r.prepare_cached_ms.p50,
            r.applied_encoder_ms.p50,
            r.applied_encoder_ms.p99,
            r.applied_decoder_ms.p50,
            r.applied_decoder_ms.p99,
            r.swap_us.p50,
            r.swap_us.p99,
        );
        println!("\n{line}");
        summary += &line;
        summary.push('\n');
    }

    if !args.no_bench {
        let mut sweep: Vec<(u32, u32)> = if args.sweep {
            vec![
                (90, 10),
                (80, 20),
                (60, 40),
                (40, 60),
                (20, 80),
                // Overlapping: the decoder on the whole GPU, the encoder confined.
                (20, 100),
                (30, 100),
                (40, 100),
                (50, 100),
                (60, 80),
            ]
        } else {
            vec![]
        };
        sweep.extend(&args.splits);
        let pb = if backend == Backend::Mps {
            Backend::Mps
        } else {
            Backend::Green
        };
        let cases = bench::six_way(pb, &sweep);
        let mut res = bench::run_cases(p, &cases, work, args.iterations, args.graph_candidates)?;
        if let Some(n) = native.clone() {
            res.insert(0, n);
            // The pipeline's own whole-GPU sequential run stays as a second row.
            if let Some(r) = res
                .iter_mut()
                .skip(1)
                .find(|r| r.name == "forward sequential")
            {
                r.name = "forward sequential (pipeline, 2 streams)".into();
            }
        }
        let t = bench::report(&res);
        println!(
            "\n## six-way benchmark ({} iterations, {} engine)\n{t}",
            args.iterations, args.engine
        );
        write(args, &format!("bench-{}-{pb}.md", args.engine), &t);
        write(
            args,
            &format!("bench-{}-{pb}.jsonl", args.engine),
            &bench::to_json(&res),
        );
    }
    if !summary.is_empty() {
        println!("\n## summary\n{summary}");
        write(args, &format!("summary-{backend}.txt"), &summary);
    }
    Ok(())
}

fn workload(s: &SyntheticStages, n: usize) -> Workload {
    let mut inputs = Vec::new();
    let mut noise = Vec::new();
    for i in 0..n {
        let mut inp = s.observation(i as u64 + 1);
        inp.state = pi0_mps::engine::gaussian_noise(100 + i as u64, 1, s.cfg.action_dim);
        inputs.push(inp);
        noise.push(pi0_mps::engine::gaussian_noise(
            1000 + i as u64,
            s.cfg.chunk,
            s.cfg.action_dim,
        ));
    }
    Workload { inputs, noise }
}

fn pi0_workload(cfg: &pi0_mps::model::config::ModelConfig, n: usize) -> Workload {
    use rand::{Rng, SeedableRng};
    let px = cfg.vision.image_size * cfg.vision.image_size * 3;
    let mut inputs = Vec::new();
    let mut noise = Vec::new();
    for i in 0..n {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42 + i as u64);
        inputs.push(ModelInput {
            images: (0..2)
                .map(|_| Some((0..px).map(|_| rng.gen_range(-1.0f32..1.0)).collect()))
                .collect(),
            tokens: (0..20)
                .map(|j| {
                    if j == 0 {
                        2
                    } else {
                        rng.gen_range(3..cfg.vocab_size as u32)
                    }
                })
                .collect(),
            state: (0..cfg.action_dim)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect(),
        });
        noise.push(pi0_mps::engine::gaussian_noise(
            1000 + i as u64,
            50,
            cfg.action_dim,
        ));
    }
    Workload { inputs, noise }
}

#[cfg(test)]
mod tests {
    use super::sm_ranges;

    #[test]
    fn sm_ranges_joins_runs() {
        let set = |v: &[u32]| v.iter().copied().collect();
        assert_eq!(sm_ranges(&set(&[0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
        assert_eq!(sm_ranges(&set(&[3])), "3");
        assert_eq!(sm_ranges(&set(&[])), "");
    }
}
