//! Bag reading/writing details: split bags (several storage files), timestamp order from
//! out-of-order storage, old relative-path layouts, writer refusals, deterministic writes.

use std::path::Path;

use pi0_mps::bag::msgs::{self, Header, JointState, Time};
use pi0_mps::bag::{Bag, BagMetadata, BagWriter, Storage, WriterOptions};

fn js(t: i64, x: f64) -> Vec<u8> {
    JointState {
        header: Header {
            stamp: Time::from_nanos(t),
            frame_id: String::new(),
        },
        name: vec!["a".into()],
        position: vec![x],
        ..Default::default()
    }
    .encode()
}

fn write(dir: &Path, storage: Storage, times: &[i64]) -> BagMetadata {
    let mut w = BagWriter::create(
        dir,
        WriterOptions {
            storage,
            ..Default::default()
        },
    )
    .unwrap();
    let t = w.add_topic("/joint_states", msgs::JOINT_STATE).unwrap();
    for &ts in times {
        w.write(t, ts, &js(ts, ts as f64)).unwrap();
    }
    w.finish().unwrap()
}

fn stamps(bag: &Bag) -> Vec<i64> {
    bag.read_all(None)
        .unwrap()
        .iter()
        .map(|m| {
            let j = JointState::decode(&m.data).unwrap();
            assert_eq!(j.header.stamp.to_nanos(), m.timestamp);
            assert_eq!(j.position, vec![m.timestamp as f64]);
            m.timestamp
        })
        .collect()
}

#[test]
fn out_of_order_storage_is_read_in_timestamp_order() {
    let d = tempfile::tempdir().unwrap();
    let times = [5_000, 1_000, 3_000, 2_000, 4_000, 4_000];
    for s in [Storage::Mcap, Storage::Sqlite3] {
        let p = d.path().join(s.identifier());
        let m = write(&p, s, &times);
        assert_eq!(m.starting_time_ns, 1_000);
        assert_eq!(m.duration_ns, 4_000);
        assert_eq!(m.message_count, 6);
        let bag = Bag::open(&p).unwrap();
        assert_eq!(
            stamps(&bag),
            vec![1_000, 2_000, 3_000, 4_000, 4_000, 5_000],
            "{s:?}"
        );
    }
}

#[test]
fn split_bags_are_read_file_after_file() {
    let d = tempfile::tempdir().unwrap();
    for s in [Storage::Mcap, Storage::Sqlite3] {
        let a = d.path().join(format!("a_{}", s.identifier()));
        let b = d.path().join(format!("b_{}", s.identifier()));
        let ma = write(&a, s, &[1_000, 2_000]);
        let mb = write(&b, s, &[3_000, 4_000, 5_000]);
        // One bag folder holding both files, as rosbag2 writes a split recording.
        let split = d.path().join(format!("split_{}", s.identifier()));
        std::fs::create_dir(&split).unwrap();
        let fa = ma.relative_file_paths[0].clone();
        let fb = mb.relative_file_paths[0].clone();
        std::fs::rename(a.join(&fa), split.join(&fa)).unwrap();
        std::fs::rename(b.join(&fb), split.join(&fb)).unwrap();
        let mut m = ma.clone();
        m.relative_file_paths = vec![fa.clone(), fb.clone()];
        m.files = vec![ma.files[0].clone(), mb.files[0].clone()];
        m.message_count = 5;
        m.duration_ns = 4_000;
        m.topics[0].message_count = 5;
        std::fs::write(split.join("metadata.yaml"), m.to_yaml()).unwrap();
        let bag = Bag::open(&split).unwrap();
        assert_eq!(bag.files.len(), 2);
        assert_eq!(
            stamps(&bag),
            vec![1_000, 2_000, 3_000, 4_000, 5_000],
            "{s:?}"
        );
        assert_eq!(bag.count_messages().unwrap()["/joint_states"], 5);
        // Old rosbag2 versions wrote "<bag>/<file>" paths: found by file name.
        let mut old = m.clone();
        old.relative_file_paths = vec![format!("split/{fa}"), format!("split/{fb}")];
        std::fs::write(split.join("metadata.yaml"), old.to_yaml()).unwrap();
        assert_eq!(Bag::open(&split).unwrap().files.len(), 2);
    }
}

#[test]
fn writes_are_deterministic_and_refusals_are_clear() {
    let d = tempfile::tempdir().unwrap();
    for s in [Storage::Mcap, Storage::Sqlite3] {
        let x = d.path().join("x").join("bag");
        let y = d.path().join("y").join("bag");
        write(&x, s, &[1_000, 2_000, 3_000]);
        write(&y, s, &[1_000, 2_000, 3_000]);
        for f in std::fs::read_dir(&x).unwrap() {
            let f = f.unwrap().file_name();
            assert_eq!(
                std::fs::read(x.join(&f)).unwrap(),
                std::fs::read(y.join(&f)).unwrap(),
                "{f:?} ({s:?})"
            );
        }
        std::fs::remove_dir_all(d.path().join("x")).unwrap();
        std::fs::remove_dir_all(d.path().join("y")).unwrap();
    }

    let p = d.path().join("b");
    write(&p, Storage::Mcap, &[1]);
    let err = |r: Result<BagWriter, pi0_mps::Error>| r.err().expect("should fail").to_string();
    let e = err(BagWriter::create(&p, WriterOptions::default()));
    assert!(
        e.contains("output bag already exists (remove it or pass --overwrite)"),
        "{e}"
    );
    let e = err(BagWriter::create(
        d.path().join("v7"),
        WriterOptions {
            version: 7,
            ..Default::default()
        },
    ));
    assert!(
        e.contains("can write metadata versions 5 and 9, not 7"),
        "{e}"
    );
    // --overwrite replaces a bag but never a folder that is not one.
    let other = d.path().join("notabag");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.txt"), b"keep").unwrap();
    let e = err(BagWriter::create(
        &other,
        WriterOptions {
            overwrite: true,
            ..Default::default()
        },
    ));
    assert!(
        e.contains("refusing to overwrite a non-empty folder that is not a bag"),
        "{e}"
    );
    assert!(other.join("precious.txt").is_file());
    let mut w = BagWriter::create(
        &p,
        WriterOptions {
            overwrite: true,
            ..Default::default()
        },
    )
    .unwrap();
    let t = w.add_topic("/x", msgs::JOINT_STATE).unwrap();
    let e = w
        .add_topic("/x", msgs::JOINT_STATE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("topic `/x` added twice"), "{e}");
    let e = w.write(t + 1, 1, &[]).unwrap_err().to_string();
    assert!(e.contains("unknown topic id"), "{e}");
    let e = w.write(t, -5, &js(0, 0.0)).unwrap_err().to_string();
    assert!(e.contains("negative timestamp -5"), "{e}");
    w.write(t, 7, &js(7, 7.0)).unwrap();
    let m = w.finish().unwrap();
    assert_eq!(m.message_count, 1);
    assert_eq!(stamps(&Bag::open(&p).unwrap()), vec![7]);
}
