//! The CUDA engine against openpi's fp32 outputs (golden sets pi0-tiny and pi0-tiny-asym), graph
//! vs eager, determinism, the stage API on other slots and on a green-context stream, and the
//! missing-GPU error. Skips with a printed reason on machines without a usable GPU.
//! `cargo test --release --test gpu_golden -- --nocapture --test-threads=1` prints the figures.

mod gpu_common;

use std::sync::Arc;

use gpu_common::*;
use pi0_mps::gpu::{GpuOptions, Pi0Cuda};
use pi0_mps::model::checkpoint;

/// bf16 engine vs openpi fp32 actions.
const GOLDEN_REL: f64 = 1e-2;

fn run_golden(name: &str, dir: &std::path::Path, opts: GpuOptions) {
    let loaded = checkpoint::load(dir).unwrap();
    let g = read_golden(dir);
    let input = golden_input(&g);
    let noise = g["noise"].f32s();
    let want = &g["actions_fp32"].data;
    let mut eng = Pi0Cuda::new(&loaded, opts).unwrap();
    let eager = eng.forward_eager(&input, &noise).unwrap();
    let (rel, max) = rel_l2(&eager, want);
    println!("{name}: eager vs actions_fp32 rel L2 {rel:.3e}, max |d| {max:.3e}");
    let first = eng.forward(&input, &noise).unwrap(); // eager + capture
    let graph = eng.forward(&input, &noise).unwrap(); // graphs
    let graph2 = eng.forward(&input, &noise).unwrap();
    let (grel, gmax) = rel_l2(&graph, want);
    println!("{name}: graph vs actions_fp32 rel L2 {grel:.3e}, max |d| {gmax:.3e}");
    assert!(
        rel <= GOLDEN_REL,
        "{name}: eager rel L2 {rel:.3e} > {GOLDEN_REL}"
    );
    assert!(
        grel <= GOLDEN_REL,
        "{name}: graph rel L2 {grel:.3e} > {GOLDEN_REL}"
    );
    assert_eq!(
        graph, graph2,
        "{name}: same inputs twice gave different outputs"
    );
    assert_eq!(first, eager, "{name}: eager runs differ");
    assert_eq!(graph, eager, "{name}: graph and eager differ");
    if let Some(d) = g.get("actions_default") {
        let (r, _) = rel_l2(&graph, &d.data);
        println!("{name}: graph vs openpi bf16 actions_default rel L2 {r:.3e}");
    }
}

#[test]
fn gpu_golden_pi0_tiny() {
    if skip("gpu_golden_pi0_tiny") {
        return;
    }
    run_golden("pi0-tiny", &tiny_dir(), GpuOptions::default());
}

/// The reference paths (cuBLASLt decoder weight GEMMs; cuBLASLt attention around the softmax
/// kernel), the streaming decoder without programmatic dependent launches and the fused
/// attention kernel in the Gemma blocks too: same golden limits.
#[test]
fn gpu_golden_pi0_tiny_other_decoder_paths() {
    if skip("gpu_golden_pi0_tiny_other_decoder_paths") {
        return;
    }
    let paths = [
        (
            "cuBLASLt decoder",
            GpuOptions {
                weight_streaming: false,
                ..GpuOptions::default()
            },
        ),
        (
            "no PDL",
            GpuOptions {
                pdl: false,
                ..GpuOptions::default()
            },
        ),
        (
            "unfused attention",
            GpuOptions {
                fused_attention: false,
                ..GpuOptions::default()
            },
        ),
        (
            "fused attention everywhere",
            GpuOptions {
                fused_gemma_attention: true,
                ..GpuOptions::default()
            },
        ),
    ];
    for (what, opts) in paths {
        run_golden(&format!("pi0-tiny ({what})"), &tiny_dir(), opts);
    }
}

#[test]
fn gpu_golden_pi0_tiny_asym() {
    if skip("gpu_golden_pi0_tiny_asym") {
        return;
    }
    let dir = asym_dir();
    if !dir.join("golden.safetensors").is_file() {
        println!(
            "skipping gpu_golden_pi0_tiny_asym: {} not found (set PI0_ASYM_DIR)",
            dir.display()
        );
        return;
    }
    run_golden("pi0-tiny-asym", &dir, GpuOptions::default());
}

/// pi0-tiny's checkpoint with its golden input and noise.
fn tiny_case() -> (
    checkpoint::LoadedCheckpoint,
    pi0_mps::engine::ModelInput,
    Vec<f32>,
) {
    let dir = tiny_dir();
    let g = read_golden(&dir);
    (
        checkpoint::load(&dir).unwrap(),
        golden_input(&g),
        g["noise"].f32s(),
    )
}

/// Stage API on a second stream and the second slots gives the forward result; so does a stream
/// of a green context (16 SMs), eagerly and as a graph captured there.
#[test]
fn gpu_stage_api_slots_and_green_context() {
    if skip("gpu_stage_api_slots_and_green_context") {
        return;
    }
    let (loaded, input, noise) = tiny_case();
    let mut eng = Pi0Cuda::new(&loaded, GpuOptions::default()).unwrap();
    let want = eng.forward_eager(&input, &noise).unwrap();
    let ctx = eng.context().clone();
    let s2 = ctx.new_stream().unwrap();
    eng.upload_observation(&s2, 1, &input).unwrap();
    eng.enqueue_encoder(&s2, 1).unwrap();
    eng.upload_decoder_inputs(&s2, 1, &input.state, &noise)
        .unwrap();
    eng.enqueue_decoder(&s2, 1, 1).unwrap();
    let got = eng.download_actions(&s2, 1).unwrap();
    // Slots tune their cuBLASLt algorithms independently: equal up to rounding.
    let (rel, _) = rel_l2(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
    println!("slot 1 / decoder 1 on another stream vs forward: rel {rel:.3e}");
    assert!(
        rel < 1e-3,
        "slot 1 / decoder 1 on another stream differs: {rel}"
    );

    let gs = green_stream(&ctx, 16).expect("green context");
    let gstream = unsafe { ctx.wrap_borrowed_stream(gs.1) };
    eng.upload_observation(&gstream, 1, &input).unwrap();
    eng.enqueue_encoder(&gstream, 1).unwrap();
    eng.upload_decoder_inputs(&gstream, 0, &input.state, &noise)
        .unwrap();
    eng.enqueue_decoder(&gstream, 1, 0).unwrap();
    let got = eng.download_actions(&gstream, 0).unwrap();
    let (rel, _) = rel_l2(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
    println!("green-context stream (eager) vs forward: rel {rel:.3e}");
    assert!(rel < 1e-3, "green-context eager run differs: {rel}");
    let eg = eng.capture_encoder(&gstream, 1).unwrap();
    eng.upload_decoder_inputs(&gstream, 0, &input.state, &noise)
        .unwrap();
    let dg = eng.capture_decoder(&gstream, 1, 0).unwrap();
    eng.upload_observation(&gstream, 1, &input).unwrap();
    eng.upload_decoder_inputs(&gstream, 0, &input.state, &noise)
        .unwrap();
    eg.launch().unwrap();
    dg.launch().unwrap();
    let got = eng.download_actions(&gstream, 0).unwrap();
    let (rel, _) = rel_l2(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
    println!("green-context graphs vs forward: rel {rel:.3e}");
    assert!(rel < 1e-3, "green-context graph run differs: {rel}");
    drop((eg, dg, gstream));
    unsafe {
        cudarc::driver::sys::cuStreamDestroy_v2(gs.1);
        cudarc::driver::sys::cuGreenCtxDestroy(gs.0);
    }
}

/// The pipeline's concurrent `forward` on the real engine: it decodes the previous prefix
/// first and encodes this observation meanwhile. A bad observation (a NaN pixel) is refused
/// with an error, and the next call goes on from the last good prefix, with the actions the
/// sequential engine gives for that prefix and this call's state and noise.
#[test]
fn gpu_concurrent_forward_refuses_a_bad_observation_and_goes_on() {
    use pi0_mps::partition::{Backend, PartitionedPi0, PipelineOptions, SplitRequest};
    if skip("gpu_concurrent_forward_refuses_a_bad_observation_and_goes_on") {
        return;
    }
    let (loaded, input, noise) = tiny_case();
    let mut reference = Pi0Cuda::new(&loaded, GpuOptions::default()).unwrap();
    let engine = Pi0Cuda::new(&loaded, GpuOptions::default()).unwrap();
    let opts = PipelineOptions {
        backend: Backend::None,
        split: SplitRequest::whole(),
        concurrent: true,
        ..PipelineOptions::default()
    };
    let chunk = noise.len() / loaded.config.action_dim;
    let p = PartitionedPi0::from_engine(engine, chunk, opts).unwrap();
    let first = p.forward(&input, &noise).unwrap();
    let good_obs = first.input_obs.unwrap();
    let mut bad = input.clone();
    bad.images[0].as_mut().unwrap()[7] = f32::NAN;
    let err = p.forward(&bad, &noise).unwrap_err().to_string();
    println!("bad observation: {err}");
    assert!(err.contains("view 0"), "{err}");
    // This call's state differs, so its chunk is not the first call's.
    let mut next = input.clone();
    for v in next.state.iter_mut() {
        *v = 0.5 - *v;
    }
    let c = p.forward(&next, &noise).unwrap();
    assert_eq!(c.prefix_obs, good_obs, "went on from the last good prefix");
    let mut want_in = input.clone();
    want_in.state = next.state.clone();
    let want = reference.forward(&want_in, &noise).unwrap();
    assert_eq!(c.actions.len(), want.len());
    assert!(c.actions.iter().all(|v| v.is_finite()));
    let (rel, _) = rel_l2(
        &c.actions,
        &want.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    println!("concurrent chunk after a bad observation vs sequential: rel {rel:.3e}");
    assert!(rel < 1e-3, "rel {rel}");
}

fn green_stream(
    ctx: &Arc<cudarc::driver::CudaContext>,
    sms: u32,
) -> Result<
    (
        cudarc::driver::sys::CUgreenCtx,
        cudarc::driver::sys::CUstream,
    ),
    String,
> {
    use cudarc::driver::sys;
    let ck = |r: sys::CUresult, w: &str| {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(format!("{w}: {r:?}"))
        }
    };
    unsafe {
        let dev = ctx.cu_device();
        let mut all: sys::CUdevResource = std::mem::zeroed();
        ck(
            sys::cuDeviceGetDevResource(
                dev,
                &mut all,
                sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
            ),
            "res",
        )?;
        let (mut grp, mut rem): (sys::CUdevResource, sys::CUdevResource) =
            (std::mem::zeroed(), std::mem::zeroed());
        let mut n = 1u32;
        ck(
            sys::cuDevSmResourceSplitByCount(&mut grp, &mut n, &all, &mut rem, 0, sms),
            "split",
        )?;
        let mut desc: sys::CUdevResourceDesc = std::ptr::null_mut();
        ck(
            sys::cuDevResourceGenerateDesc(&mut desc, &mut grp, 1),
            "desc",
        )?;
        let mut g: sys::CUgreenCtx = std::ptr::null_mut();
        ck(
            sys::cuGreenCtxCreate(
                &mut g,
                desc,
                dev,
                sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32,
            ),
            "gc",
        )?;
        let mut s: sys::CUstream = std::ptr::null_mut();
        ck(
            sys::cuGreenCtxStreamCreate(
                &mut s,
                g,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                0,
            ),
            "stream",
        )?;
        Ok((g, s))
    }
}

/// Without a usable GPU, construction fails with Error::Gpu naming what was looked for.
#[test]
fn gpu_missing_gpu_is_a_clear_error() {
    let Some(why) = pi0_mps::gpu::skip_reason() else {
        println!("skipping gpu_missing_gpu_is_a_clear_error: a GPU is present");
        return;
    };
    let loaded = checkpoint::load(&tiny_dir()).unwrap();
    let err = Pi0Cuda::new(&loaded, GpuOptions::default()).unwrap_err();
    let msg = err.to_string();
    println!("error without a GPU: {msg}");
    assert!(matches!(err, pi0_mps::Error::Gpu(_)), "{msg}");
    assert!(msg.contains("GPU") || msg.contains("CUDA"), "{msg}");
    assert!(!why.is_empty());
}
