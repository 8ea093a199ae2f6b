//! The node's ROS-free pipeline on the built-in random tiny model (CPU engine): the runner's
//! stages, and the scheduler in sequential and concurrent mode, against direct runner calls.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pi0_mps::pipeline::runner::{builtin_checkpoint, ModelImage, OwnedImage};
use pi0_mps::pipeline::scheduler::{self, Input, Output};
use pi0_mps::pipeline::settings::{BackendChoice, NodeSettings};
use pi0_mps::pipeline::{JointSample, PolicyRunner};
use rand::{Rng, SeedableRng};

fn cache() -> &'static str {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_str()
        .unwrap()
}

fn settings() -> NodeSettings {
    NodeSettings {
        camera_topics: vec!["a".into(), "b".into()],
        camera_slots: vec![0, 1],
        backend: BackendChoice::Cpu,
        model_cache: cache().into(),
        chunk: 6,
        seed: 11,
        max_age_s: 0.0,
        ..NodeSettings::default()
    }
}

fn image(seed: u64, w: usize, h: usize, encoding: &str) -> OwnedImage {
    let ch = match encoding {
        "mono8" => 1,
        "rgba8" | "bgra8" => 4,
        _ => 3,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    OwnedImage {
        width: w,
        height: h,
        encoding: encoding.into(),
        step: w * ch,
        data: (0..w * h * ch).map(|_| rng.gen()).collect(),
    }
}

fn names() -> Vec<String> {
    (1..=7).map(|i| format!("joint{i}")).collect()
}

fn runner() -> Arc<PolicyRunner> {
    static R: OnceLock<Arc<PolicyRunner>> = OnceLock::new();
    R.get_or_init(|| Arc::new(PolicyRunner::from_settings(&settings()).unwrap()))
        .clone()
}

fn rel_l2(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn builtin_checkpoint_is_cached_and_random_weights_are_flagged() {
    let a = builtin_checkpoint(cache()).unwrap();
    let b = builtin_checkpoint(cache()).unwrap();
    assert_eq!(a, b);
    assert!(a.join(".complete").is_file());
    let r = runner();
    assert!(r.info().random_weights);
    assert_eq!(r.chunk(), 6);
}

#[test]
fn stages_compose_and_seeds_are_per_index() {
    let r = runner();
    let (i0, i1) = (image(1, 64, 48, "rgb8"), image(2, 30, 50, "bgra8"));
    let raws = [Some(i0.as_raw()), Some(i1.as_raw())];
    let pos = [0.1, -0.2, 0.3, 0.0, 0.5, 0.6, -0.7];
    let c0 = r.infer_raw(&raws, &names(), &pos, "pick", 5, 0).unwrap();
    assert_eq!(c0.points.len(), 6);
    assert_eq!(c0.points[0].len(), 7);
    assert_eq!(c0.seed, 11);
    assert!(c0.points.iter().flatten().all(|x| x.is_finite()));
    // Same inputs, same index: identical; other index: other noise, other actions.
    let again = r.infer_raw(&raws, &names(), &pos, "pick", 5, 0).unwrap();
    assert_eq!(again.points, c0.points);
    let c1 = r.infer_raw(&raws, &names(), &pos, "pick", 5, 1).unwrap();
    assert_eq!(c1.seed, 12);
    assert!(rel_l2(&c1.points, &c0.points) > 1e-3);
    // Encoder and decoder separately = the whole.
    let v0 = r.prepare_image(&i0.as_raw()).unwrap();
    let v1 = r.prepare_image(&i1.as_raw()).unwrap();
    let prefix = r.encode(&[Some(&v0), Some(&v1)], "pick", 5).unwrap();
    let d = r.decode(&prefix, &pos, 5, 0).unwrap();
    assert_eq!(d.points, c0.points);
    // The prompt matters.
    let other = r.infer_raw(&raws, &names(), &pos, "place", 5, 0).unwrap();
    assert!(rel_l2(&other.points, &c0.points) > 1e-4);
    // A masked view is fine; all masked is an error; bad inputs are errors.
    let m = r
        .infer_raw(&[Some(i0.as_raw()), None], &names(), &pos, "pick", 5, 0)
        .unwrap();
    assert_eq!(m.masked_slots, vec![1]);
    assert!(r
        .infer_raw(&[None, None], &names(), &pos, "pick", 5, 0)
        .is_err());
    let mut bad = image(3, 8, 8, "rgb8");
    bad.encoding = "yuv422".into();
    assert!(r.prepare_image(&bad.as_raw()).is_err());
    bad.encoding = "rgb8".into();
    bad.data.truncate(10);
    assert!(r.prepare_image(&bad.as_raw()).is_err());
    let mut nan = pos;
    nan[2] = f64::NAN;
    assert!(r.infer_raw(&raws, &names(), &nan, "pick", 5, 0).is_err());
}

async fn next_chunk(
    out: &mut tokio::sync::mpsc::Receiver<Output>,
) -> pi0_mps::pipeline::ActionChunk {
    match tokio::time::timeout(Duration::from_secs(120), out.recv()).await {
        Ok(Some(Output::Chunk(c))) => c,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// A joint state and the same frame on both cameras, all stamped `stamp`.
async fn send_observation(
    tx: &tokio::sync::mpsc::Sender<Input>,
    stamp: i64,
    positions: Vec<f64>,
    image: &Arc<ModelImage>,
) {
    tx.send(Input::Joints(JointSample { stamp, positions }))
        .await
        .unwrap();
    for camera in 0..2 {
        tx.send(Input::Frame {
            camera,
            stamp,
            image: image.clone(),
        })
        .await
        .unwrap();
    }
}

/// The scheduler's clock; stamps are a little older (within the sync slop, as live data).
const NOW: i64 = 1_000_000_000;
const T: i64 = NOW - 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_sequential_and_concurrent_match_the_runner() {
    let r = runner();
    let s = settings();
    let (i0, i1) = (image(4, 64, 48, "rgb8"), image(5, 64, 48, "mono8"));
    let (v0, v1) = (
        Arc::new(r.prepare_image(&i0.as_raw()).unwrap()),
        Arc::new(r.prepare_image(&i1.as_raw()).unwrap()),
    );
    let pos = vec![0.2; 7];
    let (tx, mut out, task) = scheduler::spawn(r.clone(), s.clone(), || NOW);
    tx.send(Input::Joints(JointSample {
        stamp: T + 100,
        positions: pos.clone(),
    }))
    .await
    .unwrap();
    tx.send(Input::Frame {
        camera: 0,
        stamp: T + 100,
        image: v0.clone(),
    })
    .await
    .unwrap();
    tx.send(Input::Frame {
        camera: 1,
        stamp: T + 100,
        image: v1.clone(),
    })
    .await
    .unwrap();
    let c = next_chunk(&mut out).await;
    assert_eq!((c.stamp, c.index), (T + 100, 0));
    let raws = [Some(i0.as_raw()), Some(i1.as_raw())];
    let want = r
        .infer_raw(&raws, &names(), &pos, &s.prompt, T + 100, 0)
        .unwrap();
    assert_eq!(c.points, want.points);
    assert!(c.timing.end_to_end_ms >= c.timing.decoder_ms);

    // Live switch to concurrent: the encoder runs on the frames, the decoder on each new
    // joint state (index 1, 2), against the same prefix.
    let mut live = s.clone();
    live.concurrent = true;
    live.prompt = "stack the cups".into();
    tx.send(Input::Settings(Box::new(live.clone())))
        .await
        .unwrap();
    for cam in 0..2 {
        tx.send(Input::Frame {
            camera: cam,
            stamp: T + 200,
            image: if cam == 0 { v0.clone() } else { v1.clone() },
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pos2 = vec![-0.1; 7];
    tx.send(Input::Joints(JointSample {
        stamp: T + 250,
        positions: pos2.clone(),
    }))
    .await
    .unwrap();
    let c = next_chunk(&mut out).await;
    assert_eq!((c.stamp, c.image_stamp, c.index), (T + 250, T + 200, 1));
    let want = r
        .infer_raw(&raws, &names(), &pos2, "stack the cups", T + 250, 1)
        .unwrap();
    assert_eq!(c.points, want.points);
    tx.send(Input::Joints(JointSample {
        stamp: T + 260,
        positions: pos.clone(),
    }))
    .await
    .unwrap();
    let c = next_chunk(&mut out).await;
    assert_eq!((c.stamp, c.index), (T + 260, 2));
    let want = r
        .infer_raw(&raws, &names(), &pos, "stack the cups", T + 260, 2)
        .unwrap();
    assert_eq!(c.points, want.points);

    // Shutdown with work in flight: the task ends (chunk delivered or dropped), no hang.
    tx.send(Input::Joints(JointSample {
        stamp: T + 270,
        positions: pos,
    }))
    .await
    .unwrap();
    tx.send(Input::Shutdown).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("scheduler stops")
        .unwrap();
}

/// A split the GPU cannot take: the scheduler takes the split it runs back, says so, and keeps
/// serving; an equal request afterwards is not re-applied, a new one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_takes_back_a_split_the_gpu_refused() {
    use pi0_mps::pipeline::scheduler::SmSplit;
    use std::sync::Mutex;
    let r = runner();
    let s = settings();
    let calls: Arc<Mutex<Vec<SmSplit>>> = Arc::default();
    let reconfigure: scheduler::Reconfigure = {
        let calls = calls.clone();
        Arc::new(move |split: SmSplit| {
            calls.lock().unwrap().push(split);
            if split.encoder_pct == 30 {
                Err(pi0_mps::Error::Gpu(
                    "injected: green context creation failed".into(),
                ))
            } else {
                Ok(Some(format!("applied {split}")))
            }
        })
    };
    let (tx, mut out, task) =
        scheduler::spawn_with_reconfigure(r.clone(), s.clone(), || NOW, reconfigure);
    let split = |e: u32, d: u32| {
        let mut l = s.clone();
        l.encoder_pct = e;
        l.decoder_pct = d;
        Input::Settings(Box::new(l))
    };
    let sp = |e, d| SmSplit {
        encoder_pct: e,
        decoder_pct: d,
        concurrent: false,
    };
    tx.send(split(70, 30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(split(30, 70)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(30), out.recv()).await {
        Ok(Some(Output::SplitRefused {
            requested,
            restored,
            reason,
        })) => {
            assert_eq!(requested, sp(30, 70));
            assert_eq!(restored, sp(70, 30), "back to the split the GPU runs");
            assert!(reason.contains("injected"), "{reason}");
        }
        other => panic!("expected SplitRefused, got {other:?}"),
    }
    // The scheduler is at 70-30 again: asking for 70-30 changes nothing, 60-40 is applied.
    tx.send(split(70, 30)).await.unwrap();
    tx.send(split(60, 40)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *calls.lock().unwrap(),
        vec![sp(70, 30), sp(30, 70), sp(60, 40)]
    );
    // Inference goes on.
    let i0 = image(6, 64, 48, "rgb8");
    let v0 = Arc::new(r.prepare_image(&i0.as_raw()).unwrap());
    send_observation(&tx, T + 100, vec![0.1; 7], &v0).await;
    let c = next_chunk(&mut out).await;
    assert!(c.points.iter().flatten().all(|x| x.is_finite()));
    tx.send(Input::Shutdown).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("scheduler stops")
        .unwrap();
}

/// The CUDA backend (partitioned streams) through the same runner: matches the CPU engine
/// within bf16 tolerance, and the split changes live. Skips on machines without a GPU.
#[test]
fn cuda_backend_matches_cpu_and_reconfigures() {
    if let Some(why) = pi0_mps::partition::cuda_available()
        .err()
        .or_else(pi0_mps::gpu::skip_reason)
    {
        eprintln!("SKIP cuda_backend_matches_cpu_and_reconfigures: {why}");
        return;
    }
    let mut s = settings();
    s.backend = BackendChoice::Cuda;
    let gpu = PolicyRunner::from_settings(&s).expect("CUDA runner");
    assert!(
        gpu.info().engine.starts_with("cuda"),
        "{}",
        gpu.info().engine
    );
    let cpu = runner();
    let (i0, i1) = (image(6, 64, 48, "rgb8"), image(7, 40, 40, "bgr8"));
    let raws = [Some(i0.as_raw()), Some(i1.as_raw())];
    let pos = [0.3, -0.1, 0.2, 0.0, 0.1, -0.4, 0.5];
    for (k, (e, d, c)) in [(50, 50, false), (70, 30, true), (100, 100, false)]
        .into_iter()
        .enumerate()
    {
        let report = gpu
            .reconfigure(e, d, c)
            .unwrap()
            .expect("partitioned engine");
        eprintln!("split {e}/{d} concurrent {c}: {report}");
        let g = gpu
            .infer_raw(&raws, &names(), &pos, "pick", 1, k as u64)
            .unwrap();
        let want = cpu
            .infer_raw(&raws, &names(), &pos, "pick", 1, k as u64)
            .unwrap();
        let err = rel_l2(&g.points, &want.points);
        eprintln!(
            "split {e}/{d}: rel L2 vs CPU {err:.2e}, encoder {:.2} ms, decoder {:.2} ms",
            g.timing.encoder_ms, g.timing.decoder_ms
        );
        assert!(err < 3e-2, "rel L2 {err}");
    }
    assert!(gpu.reconfigure(0, 50, false).is_err());
}

/// Concurrent mode with `decoder_trigger: timer`: the decoder runs at the control rate on
/// the newest prefix and joint state, without new inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_trigger_decodes_at_control_rate() {
    use pi0_mps::pipeline::settings::DecoderTrigger;
    let r = runner();
    let mut s = settings();
    s.concurrent = true;
    s.decoder_trigger = DecoderTrigger::Timer;
    s.control_rate_hz = 20.0;
    let img = Arc::new(r.prepare_image(&image(8, 32, 32, "rgb8").as_raw()).unwrap());
    let (tx, mut out, task) = scheduler::spawn(r.clone(), s, || NOW);
    send_observation(&tx, T, vec![0.0; 7], &img).await;
    let mut indices = Vec::new();
    for _ in 0..3 {
        let c = next_chunk(&mut out).await;
        assert_eq!(c.stamp, T);
        indices.push(c.index);
    }
    assert_eq!(indices, vec![0, 1, 2]);
    tx.send(Input::Shutdown).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
}
