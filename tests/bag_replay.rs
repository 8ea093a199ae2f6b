//! Offline replay through the node's pipeline (CPU engine, tiny golden model): determinism,
//! the stored expected action bag, comparison failures, and that the replay feeds the
//! pipeline exactly what the node would (same chunks as `PolicyRunner::infer_raw`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pi0_mps::bag::compare::{compare_bags, read_action_chunks, CompareOptions};
use pi0_mps::bag::generate::{
    generate_bag, synthetic_image, synthetic_joints, to_png, GenerateOptions,
};
use pi0_mps::bag::msgs::{self, JointTrajectory};
use pi0_mps::bag::replay::{chunk_to_trajectory, load_params_file, replay_offline, ReplayOptions};
use pi0_mps::bag::{Bag, BagWriter, Storage, WriterOptions};
use pi0_mps::model::preprocess::RawImage;
use pi0_mps::pipeline::{NodeSettings, ParamValue, PolicyRunner};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data(p: &str) -> PathBuf {
    root().join("tests/data").join(p)
}

fn replay_bin(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pi0-replay"))
        .args(args)
        .output()
        .expect("run pi0-replay")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn offline(input: &Path, out: &Path) -> Output {
    replay_bin(&[
        "offline".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--checkpoint".as_ref(),
        data("pi0-tiny").as_os_str(),
        "--params-file".as_ref(),
        data("bags/replay_params.yaml").as_os_str(),
    ])
}

fn test_settings() -> NodeSettings {
    let mut o = load_params_file(&data("bags/replay_params.yaml"), "pi0").unwrap();
    o.push((
        "checkpoint".into(),
        ParamValue::String(data("pi0-tiny").to_string_lossy().into()),
    ));
    NodeSettings::from_overrides(o.iter().map(|(n, v)| (n.as_str(), v))).unwrap()
}

#[test]
fn offline_replay_is_deterministic_and_matches_the_stored_expected_bag() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let input = data("bags/input");
    for d in [&a, &b] {
        let o = offline(&input, &d.path().join("actions"));
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("wrote 3 action chunks"), "{}", text(&o));
    }
    // Two runs: byte-identical bags.
    for f in ["actions_0.mcap", "metadata.yaml"] {
        let x = std::fs::read(a.path().join("actions").join(f)).unwrap();
        let y = std::fs::read(b.path().join("actions").join(f)).unwrap();
        assert!(x == y, "{f} differs between two replays");
    }
    // Against the stored expected bag (CLI, exit 0).
    let o = replay_bin(&[
        "compare".as_ref(),
        a.path().join("actions").as_os_str(),
        data("bags/expected_actions").as_os_str(),
        "--atol".as_ref(),
        "1e-4".as_ref(),
        "--rtol".as_ref(),
        "1e-4".as_ref(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("chunks: 3 actual, 3 expected, 3 compared"),
        "{t}"
    );
    assert!(t.contains("PASS"), "{t}");
    // Shapes of what was written.
    let bag = Bag::open(a.path().join("actions")).unwrap();
    let (topic, chunks) = read_action_chunks(&bag, None).unwrap();
    assert_eq!(topic, "/pi0/actions");
    assert_eq!(chunks.len(), 3);
    for c in &chunks {
        assert_eq!(c.msg.points.len(), 10);
        assert_eq!(c.msg.joint_names.len(), 7);
        assert!(c
            .msg
            .points
            .iter()
            .all(|p| p.positions.len() == 7 && p.positions.iter().all(|x| x.is_finite())));
        assert_eq!(c.msg.points[0].time_from_start.to_nanos(), 20_000_000);
        assert_eq!(c.msg.points[9].time_from_start.to_nanos(), 200_000_000);
    }
    // Observation stamps are the camera frames' stamps (10 Hz from the bag's start).
    let stamps: Vec<i64> = chunks
        .iter()
        .map(|c| c.msg.header.stamp.to_nanos())
        .collect();
    let t0 = 1_700_000_000_000_000_000;
    assert_eq!(stamps, vec![t0, t0 + 100_000_000, t0 + 200_000_000]);
}

/// Writes `chunks` (with one value changed) as a new action bag.
fn write_perturbed(src: &Path, dst: &Path, chunk: usize, point: usize, joint: usize, delta: f64) {
    let bag = Bag::open(src).unwrap();
    let (topic, chunks) = read_action_chunks(&bag, None).unwrap();
    let mut w = BagWriter::create(dst, WriterOptions::default()).unwrap();
    let t = w.add_topic(&topic, msgs::JOINT_TRAJECTORY).unwrap();
    for (i, c) in chunks.iter().enumerate() {
        let mut m: JointTrajectory = c.msg.clone();
        if i == chunk {
            m.points[point].positions[joint] += delta;
        }
        w.write(t, c.timestamp, &m.encode()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn a_perturbed_expected_bag_fails_and_names_the_chunk() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("perturbed");
    write_perturbed(&data("bags/expected_actions"), &bad, 1, 4, 2, 0.01);
    let o = replay_bin(&[
        "compare".as_ref(),
        data("bags/expected_actions").as_os_str(),
        bad.as_os_str(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL: chunk 1 (stamp 1700000000.100000000 s)"),
        "{t}"
    );
    assert!(t.contains("at point 4 joint 2 (joint3)"), "{t}");
    assert!(
        !t.contains("FAIL: chunk 0") && !t.contains("FAIL: chunk 2"),
        "{t}"
    );
    assert!(t.contains("max abs error 1.000e-2"), "{t}");
    // A difference below the tolerance passes.
    let small = d.path().join("small");
    write_perturbed(&data("bags/expected_actions"), &small, 2, 0, 0, 1e-7);
    let r = compare_bags(
        data("bags/expected_actions"),
        &small,
        &CompareOptions::default(),
    )
    .unwrap();
    assert!(r.passed(), "{}", r.summary());
    assert!(r.max_abs > 0.0 && r.max_abs < 1e-6);
    // A missing chunk fails on the count.
    let o = replay_bin(&[
        "compare".as_ref(),
        data("bags/expected_actions").as_os_str(),
        data("bags/input").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no trajectory_msgs/msg/JointTrajectory topic"),
        "{}",
        text(&o)
    );
}

/// Copies a bag, leaving out the messages for which `drop(topic, k-th message of topic)`.
fn copy_bag(src: &Path, dst: &Path, storage: Storage, drop: impl Fn(&str, usize) -> bool) {
    let bag = Bag::open(src).unwrap();
    let mut w = BagWriter::create(
        dst,
        WriterOptions {
            storage,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<usize> = bag
        .topics
        .iter()
        .map(|t| w.add_topic(&t.name, &t.type_name).unwrap())
        .collect();
    let mut seen = vec![0usize; bag.topics.len()];
    bag.for_each(None, |m| {
        let k = seen[m.topic];
        seen[m.topic] += 1;
        if !drop(&bag.topics[m.topic].name, k) {
            w.write(ids[m.topic], m.timestamp, &m.data)?;
        }
        Ok(())
    })
    .unwrap();
    w.finish().unwrap();
}

#[test]
fn replay_feeds_the_pipeline_what_the_node_would() {
    let d = tempfile::tempdir().unwrap();
    let gen = GenerateOptions {
        camera_topics: vec!["/cam_base".into(), "/cam_wrist".into()],
        width: 20,
        height: 10,
        encoding: "bgr8".into(),
        frames: 3,
        seed: 5,
        ..Default::default()
    };
    let input = d.path().join("in");
    generate_bag(&input, &gen).unwrap();
    let mut settings = test_settings();
    settings
        .set(
            "camera_topics",
            &ParamValue::StringArray(vec!["cam_base".into(), "cam_wrist".into()]),
        )
        .unwrap();
    settings
        .set("camera_slots", &ParamValue::IntegerArray(vec![0, 1]))
        .unwrap();
    let runner = PolicyRunner::from_settings(&settings).unwrap();
    let opts = ReplayOptions {
        output: d.path().join("out"),
        ..Default::default()
    };
    let bag = Bag::open(&input).unwrap();
    let (summary, chunks) = replay_offline(&bag, &runner, &settings, &opts).unwrap();
    assert_eq!(summary.frames, 6);
    assert_eq!(summary.chunks, 3);
    assert_eq!(summary.masked, 0);
    assert_eq!(summary.actions_topic, "/pi0/actions");

    // Observation 0 = both cameras' first frames (camera 1 is 2 ms later, within the slop)
    // and the joint state stamped at the first frame.
    let t0 = gen.start_ns;
    let f0 = synthetic_image(&gen, 0, 0, t0).unwrap();
    let f1 = synthetic_image(&gen, 1, 0, t0 + gen.camera_offset_ns).unwrap();
    let js = synthetic_joints(&gen, 0.0, t0);
    fn raw(i: &pi0_mps::bag::msgs::Image) -> RawImage<'_> {
        RawImage {
            width: i.width as usize,
            height: i.height as usize,
            encoding: &i.encoding,
            step: i.step as usize,
            data: &i.data,
        }
    }
    let direct = runner
        .infer_raw(
            &[Some(raw(&f0)), Some(raw(&f1))],
            &js.name,
            &js.position,
            &settings.prompt,
            t0,
            0,
        )
        .unwrap();
    assert_eq!(chunks[0].points, direct.points);
    assert_eq!(chunks[0].stamp, t0);
    // What the output bag holds is exactly the returned chunks.
    let out = Bag::open(d.path().join("out")).unwrap();
    let (_, stored) = read_action_chunks(&out, None).unwrap();
    let expect: Vec<JointTrajectory> = chunks.iter().map(chunk_to_trajectory).collect();
    assert_eq!(
        stored.iter().map(|c| c.msg.clone()).collect::<Vec<_>>(),
        expect
    );
    // Each chunk used its own noise (index k): different chunks.
    assert_ne!(chunks[1].points, chunks[2].points);

    // The same bag in sqlite3 storage gives the same chunks; dropping the wrist camera's
    // second frame masks that view in observation 1 only.
    let sq = d.path().join("sq");
    copy_bag(&input, &sq, Storage::Sqlite3, |_, _| false);
    let o2 = ReplayOptions {
        output: d.path().join("out_sq"),
        ..Default::default()
    };
    let (_, c2) = replay_offline(&Bag::open(&sq).unwrap(), &runner, &settings, &o2).unwrap();
    assert_eq!(
        c2.iter().map(|c| &c.points).collect::<Vec<_>>(),
        chunks.iter().map(|c| &c.points).collect::<Vec<_>>()
    );
    let gap = d.path().join("gap");
    copy_bag(&input, &gap, Storage::Mcap, |t, k| {
        t == "/cam_wrist" && k == 1
    });
    let o3 = ReplayOptions {
        output: d.path().join("out_gap"),
        ..Default::default()
    };
    let (s3, c3) = replay_offline(&Bag::open(&gap).unwrap(), &runner, &settings, &o3).unwrap();
    assert_eq!(s3.chunks, 3);
    assert_eq!(s3.masked, 1);
    assert_eq!(c3[1].masked_slots, vec![1]);
    assert!(c3[0].masked_slots.is_empty() && c3[2].masked_slots.is_empty());
    assert_eq!(c3[0].points, chunks[0].points);
    assert_ne!(c3[1].points, chunks[1].points);
}

#[test]
fn compressed_camera_topics_replay_like_raw_ones() {
    // The stored input with every frame re-encoded as a PNG sensor_msgs/CompressedImage
    // (lossless): the replay must give exactly the same chunks.
    let d = tempfile::tempdir().unwrap();
    let src = Bag::open(data("bags/input")).unwrap();
    let comp = d.path().join("compressed");
    let mut w = BagWriter::create(&comp, WriterOptions::default()).unwrap();
    let ids: Vec<usize> = src
        .topics
        .iter()
        .map(|t| {
            let ty = if t.type_name == msgs::IMAGE {
                msgs::COMPRESSED_IMAGE
            } else {
                t.type_name.as_str()
            };
            w.add_topic(&t.name, ty).unwrap()
        })
        .collect();
    src.for_each(None, |m| {
        let data = if src.topic(&m).type_name == msgs::IMAGE {
            let img = msgs::Image::decode(&m.data)?;
            let c = to_png(&img)?;
            assert_eq!(c.format, "rgb8; png compressed rgb8");
            c.encode()
        } else {
            m.data.clone()
        };
        w.write(ids[m.topic], m.timestamp, &data)
    })
    .unwrap();
    w.finish().unwrap();
    let settings = test_settings();
    let runner = PolicyRunner::from_settings(&settings).unwrap();
    let run = |bag: &Path, out: &str| {
        let opts = ReplayOptions {
            output: d.path().join(out),
            ..Default::default()
        };
        replay_offline(&Bag::open(bag).unwrap(), &runner, &settings, &opts)
            .unwrap()
            .1
    };
    let raw = run(&data("bags/input"), "out_raw");
    let png = run(&comp, "out_png");
    assert_eq!(raw.len(), 3);
    assert_eq!(
        png.iter().map(|c| &c.points).collect::<Vec<_>>(),
        raw.iter().map(|c| &c.points).collect::<Vec<_>>()
    );
}

#[test]
fn generated_png_bags_replay_like_raw_ones() {
    // `pi0-replay generate --png`: the same frames as lossless CompressedImage; bgr8 is stored
    // in RGB order and mono8 stays grey, so the replay's chunks are identical.
    let d = tempfile::tempdir().unwrap();
    let settings = test_settings();
    let runner = PolicyRunner::from_settings(&settings).unwrap();
    for enc in ["bgr8", "mono8"] {
        let mut chunks = Vec::new();
        for png in [false, true] {
            let name = format!("{enc}_{png}");
            let gen = GenerateOptions {
                encoding: enc.into(),
                frames: 2,
                width: 24,
                height: 20,
                png,
                ..Default::default()
            };
            generate_bag(d.path().join(&name), &gen).unwrap();
            let bag = Bag::open(d.path().join(&name)).unwrap();
            let cam = &bag.topics[bag.topic_index("/camera/image_raw").unwrap()];
            let want = if png {
                msgs::COMPRESSED_IMAGE
            } else {
                msgs::IMAGE
            };
            assert_eq!(cam.type_name, want);
            let opts = ReplayOptions {
                output: d.path().join(format!("out_{name}")),
                ..Default::default()
            };
            let (s, c) = replay_offline(&bag, &runner, &settings, &opts).unwrap();
            assert_eq!(s.chunks, 2);
            chunks.push(c.into_iter().map(|c| c.points).collect::<Vec<_>>());
        }
        assert_eq!(chunks[0], chunks[1], "{enc}");
    }
}
