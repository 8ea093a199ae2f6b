//! GPU tests of the partition layer on the synthetic stages. On a machine without a GPU each
//! test prints why it is skipped and passes (libcuda is probed before cudarc touches it).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::CudaContext;
use pi0_mps::partition::bench::{self, Workload};
use pi0_mps::partition::spans::stage_times;
use pi0_mps::partition::swap::Stage;
use pi0_mps::partition::synthetic::{PartitionKernels, SyntheticConfig, SyntheticStages};
use pi0_mps::partition::{
    cuda_available, split, Backend, PartitionedPi0, PipelineOptions, SmLayout, SplitRequest,
};

fn gpu() -> Option<Arc<CudaContext>> {
    match cuda_available() {
        Ok(()) => Some(CudaContext::new(0).expect("CUDA context")),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

fn small() -> SyntheticConfig {
    SyntheticConfig {
        enc_iters: 200,
        dec_weight_bytes: 64 << 20,
        ..Default::default()
    }
}

/// The partition pipeline over the small synthetic stages, with default options.
fn synthetic_pipeline(ctx: &Arc<CudaContext>) -> PartitionedPi0<SyntheticStages> {
    PartitionedPi0::new(
        ctx.clone(),
        SyntheticStages::new(ctx, small()).unwrap(),
        PipelineOptions::default(),
    )
    .unwrap()
}

fn workload(s: &SyntheticStages) -> Workload {
    let mut inputs = Vec::new();
    let mut noise = Vec::new();
    for i in 0..4u64 {
        let mut inp = s.observation(i + 7);
        inp.state = pi0_mps::engine::gaussian_noise(50 + i, 1, s.cfg.action_dim);
        inputs.push(inp);
        noise.push(pi0_mps::engine::gaussian_noise(
            500 + i,
            s.cfg.chunk,
            s.cfg.action_dim,
        ));
    }
    Workload { inputs, noise }
}

fn req(e: u32, d: u32) -> SplitRequest {
    SplitRequest::new(e, d).unwrap()
}

/// The device's green-context layout (SM count and groups), as the pipeline reads it.
fn green_layout(ctx: &Arc<CudaContext>) -> SmLayout {
    pi0_mps::partition::pipeline::device_layout(ctx).unwrap()
}

/// The SMs the planner gives each stage of `request` on `layout`: what a split on this GPU
/// must report (70-30 on a 132-SM H100: 92 / 40), whatever the GPU's SM count.
fn planned_sms(backend: Backend, request: SplitRequest, layout: SmLayout) -> (u32, u32) {
    let plan = split::plan(backend, request, layout).unwrap();
    (plan.encoder_sms(&layout), plan.decoder_sms(&layout))
}

#[test]
fn cuda_probe_never_panics() {
    // On CI this is Err with a reason; on the GPU machine Ok. Either way: no panic.
    match cuda_available() {
        Ok(()) => eprintln!("GPU present"),
        Err(why) => assert!(!why.is_empty()),
    }
}

#[test]
fn green_partitions_confine_eager_and_graph_launches() {
    let Some(ctx) = gpu() else { return };
    let kernels = PartitionKernels::load(&ctx).unwrap();
    let p = synthetic_pipeline(&ctx);
    let rows = bench::confinement(
        &p,
        &kernels,
        &[
            (Backend::Green, req(70, 30)),
            (Backend::Green, req(50, 50)),
            (Backend::Green, req(60, 60)),
        ],
    )
    .unwrap();
    println!("{}", bench::confinement_table(&rows));
    for r in &rows {
        assert!(r.ok(), "{r:?}");
        assert!(r.encoder_sms < p.total_sms() && r.decoder_sms < p.total_sms());
    }
    // Disjoint complementary splits use every SM.
    assert_eq!(rows[0].encoder_sms + rows[0].decoder_sms, p.total_sms());
}

#[test]
fn invalid_split_is_refused_and_nothing_changes() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    p.set_split(70, 30).unwrap();
    let before = p.partition();
    assert!(p.set_split(0, 50).is_err());
    assert!(p.set_split(70, 101).is_err());
    let w = workload(p.engine());
    assert!(p
        .forward_mps(&w.inputs[0], &w.noise[0], 120, 30, true)
        .is_err());
    assert_eq!(p.partition(), before);
}

#[test]
fn concurrent_equals_sequential_with_reconfigurations() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let eq = bench::equivalence(
        &p,
        &w,
        60,
        10,
        &[
            (Backend::Green, req(70, 30)),
            (Backend::None, req(100, 100)),
            (Backend::Green, req(30, 70)),
        ],
    )
    .unwrap();
    println!("{eq:?}");
    assert_eq!(eq.frames, 120);
    assert_eq!(eq.configurations, 3, "{eq:?}");
    assert!(eq.max_rel_err <= 1e-3, "{eq:?}");
    // The synthetic stages use fixed-order reductions: results must be bitwise identical,
    // on the same split and on the whole GPU.
    assert_eq!(eq.bitwise_equal, eq.frames, "{eq:?}");
    assert_eq!(eq.max_rel_err_whole_gpu, 0.0, "{eq:?}");
}

#[test]
fn pipelined_forward_uses_previous_prefix() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let a = p
        .forward_mps(&w.inputs[0], &w.noise[0], 70, 30, true)
        .unwrap();
    assert_eq!(
        a.prefix_obs,
        a.input_obs.unwrap(),
        "first frame waits for its own prefix"
    );
    let b = p
        .forward_mps(&w.inputs[1], &w.noise[1], 70, 30, true)
        .unwrap();
    assert_eq!(b.prefix_obs, a.input_obs.unwrap());
    let c = p
        .forward_mps(&w.inputs[2], &w.noise[2], 70, 30, false)
        .unwrap();
    assert_eq!(c.prefix_obs, c.input_obs.unwrap());
    assert_eq!(
        p.partition().encoder_sms + p.partition().decoder_sms,
        p.total_sms()
    );
    // An explicit split partitions even after the pipeline was set to `none`.
    p.reconfigure(Backend::None, req(100, 100), true, true)
        .unwrap();
    let d = p
        .forward_mps(&w.inputs[3], &w.noise[3], 70, 30, true)
        .unwrap();
    assert_eq!(p.partition().backend, Backend::Green);
    assert_eq!(
        (d.encoder_sms, d.decoder_sms),
        planned_sms(Backend::Green, req(70, 30), green_layout(&ctx))
    );
}

#[test]
fn reconfiguration_under_load_loses_no_frames() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let splits = [
        (Backend::Green, req(70, 30)),
        (Backend::Green, req(50, 50)),
        (Backend::Green, req(30, 70)),
    ];
    let r = bench::reconfig_under_load(&p, &w, 3.0, 6, Duration::from_millis(20), &splits).unwrap();
    println!("{r:?}");
    assert_eq!(r.errors, 0);
    assert_eq!(r.changes, 6);
    assert!(r.dropped <= r.changes as u64, "{r:?}");
    assert!(r.chunks > 50, "{r:?}");
    assert!(
        r.applied_decoder_ms.n == 6 && r.applied_encoder_ms.n == 6,
        "{r:?}"
    );
}

#[test]
fn mps_backend_is_confined_or_explains_the_daemon() {
    let Some(ctx) = gpu() else { return };
    let kernels = PartitionKernels::load(&ctx).unwrap();
    let p = synthetic_pipeline(&ctx);
    match p.reconfigure(Backend::Mps, req(70, 30), false, true) {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("nvidia-cuda-mps-control -d"), "{m}");
            eprintln!("no MPS daemon; the error says how to start one: {m}");
            // Nothing changed.
            assert_eq!(p.partition().backend, Backend::Green);
        }
        Ok(_) => {
            let rows = bench::confinement(
                &p,
                &kernels,
                &[(Backend::Mps, req(70, 30)), (Backend::Mps, req(25, 12))],
            )
            .unwrap();
            println!("{}", bench::confinement_table(&rows));
            assert_eq!(
                (rows[0].encoder_sms, rows[0].decoder_sms),
                planned_sms(
                    Backend::Mps,
                    req(70, 30),
                    SmLayout::uniform(p.total_sms(), 1)
                )
            );
            for r in &rows {
                assert!(r.ok(), "{r:?}");
            }
            // Memory of the primary context is used by both MPS contexts: results equal.
            let w = workload(p.engine());
            let eq = bench::equivalence(
                &p,
                &w,
                30,
                10,
                &[(Backend::Mps, req(70, 30)), (Backend::Mps, req(40, 60))],
            )
            .unwrap();
            assert_eq!(eq.bitwise_equal, eq.frames, "{eq:?}");
        }
    }
}

#[test]
fn recaptured_graphs_run_and_give_the_same_actions() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let before = p
        .forward_mps(&w.inputs[0], &w.noise[0], 50, 50, false)
        .unwrap();
    assert!(before.actions.iter().all(|x| x.is_finite()));
    let captures = p.capture_times().len();
    p.recapture_graphs().unwrap();
    assert!(
        p.capture_times().len() >= captures + 2,
        "both stages' graphs captured again"
    );
    let after = p
        .forward_mps(&w.inputs[0], &w.noise[0], 50, 50, false)
        .unwrap();
    assert_eq!(
        (after.encoder_sms, after.decoder_sms),
        (before.encoder_sms, before.decoder_sms)
    );
    // Fixed-order reductions in the synthetic stages: the same inputs give the same bits.
    assert_eq!(before.actions, after.actions);
}

#[test]
fn keeping_the_fastest_graphs_leaves_a_complete_working_set() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let run = || {
        p.forward_mps(&w.inputs[0], &w.noise[0], 50, 50, false)
            .unwrap()
    };
    let before = run();
    // Rated 2, 1, 3 in capture order: the second set replaces the first, the third is
    // dropped and the second put back.
    let rating = [2.0, 1.0, 3.0];
    let mut calls = 0;
    let times = p
        .keep_fastest_graphs(3, || {
            let c = run();
            assert_eq!(
                c.actions, before.actions,
                "candidate {calls} computes the same"
            );
            calls += 1;
            Ok(rating[calls - 1])
        })
        .unwrap();
    assert_eq!(times, rating);
    let captures = p.capture_times().len();
    let after = run();
    assert_eq!(after.actions, before.actions);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        p.capture_times().len(),
        captures,
        "the kept set holds a graph for every shape run: nothing captured again"
    );
}

#[test]
fn stage_spans_time_every_launch_without_changing_results() {
    let Some(ctx) = gpu() else { return };
    let p = synthetic_pipeline(&ctx);
    let w = workload(p.engine());
    let plain = p
        .forward_mps(&w.inputs[0], &w.noise[0], 50, 50, false)
        .unwrap();
    p.record_stage_spans(true);
    let timed = p
        .forward_mps(&w.inputs[0], &w.noise[0], 50, 50, false)
        .unwrap();
    assert_eq!(timed.actions, plain.actions, "timestamps change nothing");
    let frames = 5;
    for i in 0..frames {
        p.forward_mps(&w.inputs[i % 4], &w.noise[i % 4], 50, 50, true)
            .unwrap();
    }
    let spans = p.take_stage_spans().unwrap();
    for stage in [Stage::Encoder, Stage::Decoder] {
        let times = stage_times(&spans, stage);
        assert_eq!(times.len(), frames + 1, "{stage:?}: one span per launch");
        for (i, f) in times.iter().enumerate() {
            let (gpu_ms, gap) = (f.gpu_ms, f.gap_ms);
            assert!(
                gpu_ms.is_finite() && gpu_ms > 0.0,
                "{stage:?} frame {i}: {gpu_ms} ms"
            );
            // One stream runs its launches in order: a gap is never negative.
            assert!(
                gap.unwrap_or(0.0) >= -1e-3,
                "{stage:?} frame {i}: gap {gap:?}"
            );
        }
    }
    assert_eq!(spans[0].start_ms, 0.0, "times count from the first start");
    assert!(p.take_stage_spans().unwrap().is_empty(), "taking clears");
    p.record_stage_spans(false);
    p.forward_mps(&w.inputs[1], &w.noise[1], 50, 50, true)
        .unwrap();
    assert!(
        p.take_stage_spans().unwrap().is_empty(),
        "nothing recorded while off"
    );
}
