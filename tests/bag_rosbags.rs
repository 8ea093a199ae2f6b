//! Interoperability with an independent rosbag2 implementation (PyPI `rosbags` 0.11.9):
//! bags it writes (MCAP and sqlite3; Jazzy metadata v9 and Humble-era v5) are read here with
//! every message count and field checked, and bags written here are read back by it.
//!
//! Needs a Python with `rosbags`: `$PI0_PYTHON`, else `.ros/bin/python` (scripts/ros-env.sh
//! creates it). Without one the tests print why and return.

use std::path::{Path, PathBuf};
use std::process::Command;

use pi0_mps::bag::generate::{generate_bag, synthetic_image, synthetic_joints, GenerateOptions};
use pi0_mps::bag::msgs::{
    CompressedImage, Header, Image, JointState, JointTrajectory, JointTrajectoryPoint, Time,
    JOINT_TRAJECTORY,
};
use pi0_mps::bag::{Bag, BagWriter, Storage, WriterOptions};

fn python_with_rosbags() -> Option<PathBuf> {
    let mut cands = Vec::new();
    if let Some(p) = std::env::var_os("PI0_PYTHON").filter(|p| !p.is_empty()) {
        cands.push(PathBuf::from(p));
    }
    cands.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ros/bin/python"));
    for c in cands {
        let ok = Command::new(&c)
            .args(["-c", "import rosbags, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(c);
        }
    }
    None
}

macro_rules! need_python {
    () => {
        match python_with_rosbags() {
            Some(p) => p,
            None => {
                eprintln!(
                    "skipping: no Python with the `rosbags` package (set PI0_PYTHON or run \
                     scripts/ros-env.sh to create .ros/)"
                );
                return;
            }
        }
    };
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bag")
        .join(name)
}

fn run_py(py: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(py).args(args).output().expect("run python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const N_IMG: usize = 4;
const N_COMP: usize = 3;
const N_JS: usize = 5;
const N_ACT: usize = 3;

fn topic_offset(topic: &str) -> i64 {
    match topic {
        "/cam/image" => 0,
        "/cam/compressed" => 1000,
        "/joint_states" => 2000,
        "/actions" => 3000,
        t => panic!("unexpected topic {t}"),
    }
}

fn check_image(img: &Image, k: usize) {
    let (h, w) = if k < N_IMG { (4 + k, 6) } else { (480, 640) };
    assert_eq!((img.height, img.width), (h as u32, w as u32), "image {k}");
    assert_eq!(img.encoding, "rgb8");
    assert_eq!(img.is_bigendian, 0);
    assert_eq!(img.step, (w * 3) as u32);
    assert_eq!(
        img.header,
        Header {
            stamp: Time {
                sec: 100 + k as i32,
                nanosec: 1000 * k as u32
            },
            frame_id: format!("cam{k}")
        }
    );
    assert_eq!(img.data.len(), h * w * 3);
    for (i, &b) in img.data.iter().enumerate() {
        assert_eq!(b as usize, (7 * i + k) % 256, "image {k} byte {i}");
    }
}

fn check_compressed(c: &CompressedImage, k: usize) {
    assert_eq!(
        c.header.stamp,
        Time {
            sec: 200 + k as i32,
            nanosec: 0
        }
    );
    assert_eq!(c.header.frame_id, "c");
    assert_eq!(c.format, if k % 2 == 0 { "png" } else { "jpeg" });
    assert_eq!(c.data, (0..k as u8 + 3).collect::<Vec<u8>>());
}

fn check_joints(j: &JointState, k: usize) {
    let n = k + 1;
    assert_eq!(
        j.header.stamp,
        Time {
            sec: 300 + k as i32,
            nanosec: 7
        }
    );
    assert_eq!(j.header.frame_id, "");
    assert_eq!(j.name, (0..n).map(|i| format!("j{i}")).collect::<Vec<_>>());
    assert_eq!(
        j.position,
        (0..n)
            .map(|i| 0.5 * i as f64 + k as f64)
            .collect::<Vec<_>>()
    );
    assert_eq!(j.velocity, (0..n).map(|i| -(i as f64)).collect::<Vec<_>>());
    assert!(j.effort.is_empty());
}

fn check_trajectory(t: &JointTrajectory, k: usize) {
    assert_eq!(
        t.header.stamp,
        Time {
            sec: 400 + k as i32,
            nanosec: 9
        }
    );
    assert_eq!(t.header.frame_id, "base");
    assert_eq!(t.joint_names, vec!["a", "b"]);
    assert_eq!(t.points.len(), k + 1);
    for (i, p) in t.points.iter().enumerate() {
        assert_eq!(p.positions, vec![k as f64, 0.25 * i as f64]);
        assert!(p.velocities.is_empty() && p.accelerations.is_empty());
        assert_eq!(p.effort, if i == 0 { vec![1.5] } else { vec![] });
        assert_eq!(
            p.time_from_start,
            Time {
                sec: i as i32,
                nanosec: 5
            }
        );
    }
}

#[test]
fn bags_written_by_rosbags_are_read_field_by_field() {
    let py = need_python!();
    let dir = tempfile::tempdir().unwrap();
    run_py(
        &py,
        &[script("write_bags.py").as_os_str(), dir.path().as_os_str()],
    );
    let expected_counts = [
        ("/cam/image", N_IMG + 1),
        ("/cam/compressed", N_COMP),
        ("/joint_states", N_JS),
        ("/actions", N_ACT),
    ];
    for (name, storage, version) in [
        ("mcap_v9", Storage::Mcap, 9),
        ("sqlite3_v9", Storage::Sqlite3, 9),
        ("mcap_v5", Storage::Mcap, 5),
        ("sqlite3_v5", Storage::Sqlite3, 5),
    ] {
        let bag = Bag::open(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bag.storage, storage, "{name}");
        let meta = bag.metadata.as_ref().expect("metadata");
        assert_eq!(meta.version, version, "{name}");
        assert_eq!(meta.message_count, 16, "{name}");
        assert_eq!(meta.starting_time_ns, 1_000_000_000, "{name}");
        assert_eq!(meta.duration_ns, 40_002_000, "{name}");
        if version == 9 {
            let img = &bag.topics[bag.topic_index("/cam/image").unwrap()];
            assert!(img.type_description_hash.starts_with("RIHS01_"), "{name}");
        } else {
            let js = &bag.topics[bag.topic_index("/joint_states").unwrap()];
            assert!(
                js.offered_qos_profiles.contains("history: 3"),
                "{name}: {js:?}"
            );
        }
        let counts = bag.count_messages().unwrap();
        for (topic, n) in expected_counts {
            let t = &bag.topics[bag.topic_index(topic).unwrap()];
            assert_eq!(t.message_count, n as u64, "{name} {topic} metadata count");
            assert_eq!(counts[topic], n as u64, "{name} {topic} actual count");
            assert_eq!(t.serialization_format, "cdr");
        }
        // Every message, in timestamp order, every field.
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut last_t = i64::MIN;
        bag.for_each(None, |m| {
            let topic = bag.topic(&m).name.clone();
            let k = *seen.get(&topic).unwrap_or(&0);
            seen.insert(topic.clone(), k + 1);
            assert!(m.timestamp >= last_t, "{name}: out of order");
            last_t = m.timestamp;
            let expect_t = if topic == "/cam/image" && k == N_IMG {
                1_000_000_000 + 10_000_000 * N_IMG as i64
            } else {
                1_000_000_000 + 10_000_000 * k as i64 + topic_offset(&topic)
            };
            assert_eq!(m.timestamp, expect_t, "{name} {topic} {k}");
            match topic.as_str() {
                "/cam/image" => check_image(&Image::decode(&m.data)?, k),
                "/cam/compressed" => check_compressed(&CompressedImage::decode(&m.data)?, k),
                "/joint_states" => check_joints(&JointState::decode(&m.data)?, k),
                "/actions" => check_trajectory(&JointTrajectory::decode(&m.data)?, k),
                _ => unreachable!(),
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(seen.values().sum::<usize>(), 16, "{name}");
        // Re-encoding is byte-identical to what rosbags serialized.
        let first_js = bag.read_all(Some(&["/joint_states"])).unwrap().remove(0);
        assert_eq!(
            JointState::decode(&first_js.data).unwrap().encode(),
            first_js.data
        );
        let big = bag.read_all(Some(&["/cam/image"])).unwrap().pop().unwrap();
        assert_eq!(Image::decode(&big.data).unwrap().encode(), big.data);
    }
}

#[test]
fn bags_written_here_are_read_by_rosbags() {
    let py = need_python!();
    let dir = tempfile::tempdir().unwrap();
    for (storage, version) in [
        (Storage::Mcap, 9),
        (Storage::Sqlite3, 9),
        (Storage::Mcap, 5),
        (Storage::Sqlite3, 5),
    ] {
        let path = dir
            .path()
            .join(format!("{}_v{version}", storage.identifier()));
        let opts = GenerateOptions {
            writer: WriterOptions {
                storage,
                version,
                ..Default::default()
            },
            camera_topics: vec!["/cam0".into(), "/cam1".into()],
            frames: 3,
            ..Default::default()
        };
        generate_bag(&path, &opts).unwrap();
        let out = run_py(&py, &[script("read_bag.py").as_os_str(), path.as_os_str()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["version"], version);
        assert_eq!(v["storage"], storage.identifier());
        assert_eq!(v["topics"]["/cam0"]["type"], "sensor_msgs/msg/Image");
        assert_eq!(v["topics"]["/cam0"]["count"], 3);
        assert_eq!(v["topics"]["/cam1"]["count"], 3);
        assert_eq!(
            v["topics"]["/joint_states"]["type"],
            "sensor_msgs/msg/JointState"
        );
        let msgs = v["messages"].as_array().unwrap();
        let n_js = v["topics"]["/joint_states"]["count"].as_u64().unwrap() as usize;
        assert_eq!(msgs.len(), 6 + n_js);
        assert_eq!(v["message_count"].as_u64().unwrap() as usize, msgs.len());
        // Field by field against what the generator produced.
        let mut frame = [0usize; 2];
        for m in msgs {
            let t = m["t"].as_i64().unwrap();
            assert_eq!(m["stamp"].as_i64().unwrap(), t);
            match m["topic"].as_str().unwrap() {
                "/joint_states" => {
                    let js = synthetic_joints(&opts, (t - opts.start_ns) as f64 * 1e-9, t);
                    let pos: Vec<f64> = m["position"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| f64::from_bits(x.as_u64().unwrap()))
                        .collect();
                    assert_eq!(pos, js.position);
                    assert_eq!(m["name"], serde_json::json!(js.name));
                }
                cam => {
                    let c = if cam == "/cam0" { 0 } else { 1 };
                    let img = synthetic_image(&opts, c, frame[c], t).unwrap();
                    frame[c] += 1;
                    assert_eq!(m["width"], img.width);
                    assert_eq!(m["height"], img.height);
                    assert_eq!(m["encoding"], "rgb8");
                    assert_eq!(m["step"], img.step);
                    assert_eq!(m["len"].as_u64().unwrap() as usize, img.data.len());
                    let sum: u64 = img.data.iter().map(|&b| b as u64).sum();
                    assert_eq!(m["sum"].as_u64().unwrap(), sum);
                    assert_eq!(m["frame_id"], format!("camera{c}"));
                }
            }
        }
        assert_eq!(frame, [3, 3]);
    }

    // An action bag (JointTrajectory), as the replay writes them.
    let path = dir.path().join("actions");
    let mut w = BagWriter::create(&path, WriterOptions::default()).unwrap();
    let t = w.add_topic("/pi0/actions", JOINT_TRAJECTORY).unwrap();
    let traj = JointTrajectory {
        header: Header {
            stamp: Time::from_nanos(1_700_000_000_123_456_789),
            frame_id: String::new(),
        },
        joint_names: vec!["joint1".into(), "joint2".into()],
        points: (0..4)
            .map(|i| JointTrajectoryPoint {
                positions: vec![i as f64 * 0.1, -1.0 / (i as f64 + 1.0)],
                time_from_start: Time::from_nanos((i + 1) * 20_000_000),
                ..Default::default()
            })
            .collect(),
    };
    w.write(t, 1_700_000_000_200_000_000, &traj.encode())
        .unwrap();
    w.finish().unwrap();
    let out = run_py(&py, &[script("read_bag.py").as_os_str(), path.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &v["messages"][0];
    assert_eq!(m["topic"], "/pi0/actions");
    assert_eq!(m["t"], 1_700_000_000_200_000_000i64);
    assert_eq!(m["stamp"], 1_700_000_000_123_456_789i64);
    assert_eq!(m["joint_names"], serde_json::json!(["joint1", "joint2"]));
    let expect: Vec<Vec<u64>> = traj
        .points
        .iter()
        .map(|p| p.positions.iter().map(|x| x.to_bits()).collect())
        .collect();
    assert_eq!(m["positions"], serde_json::json!(expect));
    assert_eq!(
        m["time_from_start"],
        serde_json::json!([20_000_000, 40_000_000, 60_000_000, 80_000_000])
    );
}
