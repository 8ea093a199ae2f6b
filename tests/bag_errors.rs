//! Bad bags and bad replay inputs: every case is a clear error (library and `pi0-replay`,
//! exit code 2, message on stderr), never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pi0_mps::bag::generate::{generate_bag, GenerateOptions};
use pi0_mps::bag::msgs::{self, CompressedImage, Header};
use pi0_mps::bag::{Bag, BagWriter, Storage, WriterOptions};

fn replay_bin(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pi0-replay"))
        .args(args)
        .output()
        .expect("run pi0-replay")
}

/// Runs `pi0-replay info BAG`; asserts exit code 2, no panic, and returns stderr.
fn info_fails(bag: &Path) -> String {
    let o = replay_bin(&["info".as_ref(), bag.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("pi0-replay: error: "), "{err}");
    err
}

/// Opens and reads every message; returns the error text.
fn read_error(bag: &Path) -> String {
    match Bag::open(bag) {
        Err(e) => e.to_string(),
        Ok(b) => b
            .count_messages()
            .expect_err("reading should fail")
            .to_string(),
    }
}

fn small_bag(dir: &Path, name: &str, storage: Storage) -> PathBuf {
    let p = dir.join(name);
    generate_bag(
        &p,
        &GenerateOptions {
            writer: WriterOptions {
                storage,
                mcap_compression: false,
                ..Default::default()
            },
            frames: 4,
            width: 64,
            height: 48,
            ..Default::default()
        },
    )
    .unwrap();
    p
}

fn storage_file(bag: &Path) -> PathBuf {
    std::fs::read_dir(bag)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "mcap" || e == "db3"))
        .unwrap()
}

fn truncate(file: &Path, keep: f64) {
    let b = std::fs::read(file).unwrap();
    std::fs::write(file, &b[..(b.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn truncated_mcap() {
    let d = tempfile::tempdir().unwrap();
    let bag = small_bag(d.path(), "t", Storage::Mcap);
    truncate(&storage_file(&bag), 0.6);
    let e = read_error(&bag);
    assert!(e.contains("corrupt MCAP file"), "{e}");
    assert!(e.contains("truncated"), "{e}");
    assert!(e.contains("t_0.mcap"), "{e}");
    let e = info_fails(&bag);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn truncated_sqlite3() {
    let d = tempfile::tempdir().unwrap();
    let bag = small_bag(d.path(), "t", Storage::Sqlite3);
    truncate(&storage_file(&bag), 0.5);
    let e = read_error(&bag);
    assert!(e.contains("corrupt or unreadable sqlite3 bag"), "{e}");
    assert!(e.contains("malformed"), "{e}");
    let e = info_fails(&bag);
    assert!(e.contains("t_0.db3"), "{e}");
}

#[test]
fn corrupt_storage_files() {
    let d = tempfile::tempdir().unwrap();
    // Garbage where the MCAP should be.
    let bag = small_bag(d.path(), "m", Storage::Mcap);
    std::fs::write(
        storage_file(&bag),
        b"this is not an mcap file at all, just text",
    )
    .unwrap();
    let e = read_error(&bag);
    assert!(e.contains("not an MCAP file"), "{e}");
    info_fails(&bag);
    // Garbage where the sqlite3 file should be.
    let bag = small_bag(d.path(), "s", Storage::Sqlite3);
    std::fs::write(storage_file(&bag), vec![0x5au8; 8192]).unwrap();
    let e = read_error(&bag);
    assert!(e.contains("file is not a database"), "{e}");
    info_fails(&bag);
    // A valid sqlite file that is not a bag.
    let bag = small_bag(d.path(), "n", Storage::Sqlite3);
    let f = storage_file(&bag);
    std::fs::remove_file(&f).unwrap();
    rusqlite_create_table(&f);
    let e = read_error(&bag);
    assert!(e.contains("not a rosbag2 sqlite3 file"), "{e}");
    // Flipped bytes inside an MCAP message payload region (CRC or record structure breaks).
    let bag = small_bag(d.path(), "f", Storage::Mcap);
    let f = storage_file(&bag);
    let mut b = std::fs::read(&f).unwrap();
    let mid = b.len() / 2;
    for x in &mut b[mid..mid + 64] {
        *x = 0xff;
    }
    std::fs::write(&f, &b).unwrap();
    let e = read_error(&bag);
    assert!(e.contains("corrupt MCAP file"), "{e}");
    info_fails(&bag);
}

fn rusqlite_create_table(path: &Path) {
    // A plain sqlite file with an unrelated table.
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE other(x INTEGER); INSERT INTO other VALUES (1);")
        .unwrap();
}

#[test]
fn unknown_storage_and_bad_metadata() {
    let d = tempfile::tempdir().unwrap();
    let bag = small_bag(d.path(), "u", Storage::Mcap);
    let meta = bag.join("metadata.yaml");
    let orig = std::fs::read_to_string(&meta).unwrap();

    std::fs::write(
        &meta,
        orig.replace("storage_identifier: mcap", "storage_identifier: rosbag_v1"),
    )
    .unwrap();
    let e = read_error(&bag);
    assert!(
        e.contains("unknown storage_identifier `rosbag_v1` (supported: mcap, sqlite3)"),
        "{e}"
    );
    assert!(e.contains("metadata.yaml"), "{e}");
    let e = info_fails(&bag);
    assert!(e.contains("rosbag_v1"), "{e}");

    std::fs::write(&meta, orig.replace("version: 9", "version: 12")).unwrap();
    let e = read_error(&bag);
    assert!(e.contains("metadata version 12 is not supported"), "{e}");

    std::fs::write(&meta, "rosbag2_bagfile_information: [1, 2\n").unwrap();
    let e = read_error(&bag);
    assert!(e.contains("not a rosbag2 metadata file"), "{e}");

    std::fs::write(
        &meta,
        orig.replace("compression_format: \"\"", "compression_format: zstd")
            .replace("compression_mode: \"\"", "compression_mode: FILE"),
    )
    .unwrap();
    let e = read_error(&bag);
    assert!(e.contains("compressed bags (compression_format `zstd`, compression_mode `FILE`) are not supported"), "{e}");

    std::fs::write(&meta, orig.replace("- u_0.mcap", "- u_7.mcap")).unwrap();
    let e = read_error(&bag);
    assert!(
        e.contains("storage file `u_7.mcap` listed in metadata.yaml does not exist"),
        "{e}"
    );

    std::fs::remove_file(&meta).unwrap();
    let e = read_error(&bag);
    assert!(
        e.contains("not a rosbag2 bag folder: cannot read metadata.yaml"),
        "{e}"
    );
    info_fails(&bag);

    let other = d.path().join("bag.bag");
    std::fs::write(&other, b"#ROSBAG V2.0").unwrap();
    let e = read_error(&other);
    assert!(
        e.contains(
            "unknown storage: expected a bag folder with metadata.yaml, a .mcap or a .db3 file"
        ),
        "{e}"
    );
    let e = info_fails(&d.path().join("does-not-exist"));
    assert!(e.contains("does-not-exist"), "{e}");
}

#[test]
fn single_storage_files_open_without_metadata() {
    let d = tempfile::tempdir().unwrap();
    for s in [Storage::Mcap, Storage::Sqlite3] {
        let bag = small_bag(d.path(), s.identifier(), s);
        let f = storage_file(&bag);
        let b = Bag::open(&f).unwrap();
        assert!(b.metadata.is_none());
        let counts = b.count_messages().unwrap();
        assert_eq!(counts["/camera/image_raw"], 4);
        assert_eq!(
            b.topics[b.topic_index("/camera/image_raw").unwrap()].type_name,
            msgs::IMAGE
        );
    }
}

fn offline_fails(input: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "offline".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "-p".as_ref(),
        "backend:=cpu".as_ref(),
        "--checkpoint".as_ref(),
    ];
    let ck = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pi0-tiny");
    args.push(ck.as_os_str());
    for e in extra {
        args.push(e.as_ref());
    }
    let o = replay_bin(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{err}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_replay_inputs() {
    let d = tempfile::tempdir().unwrap();
    let good = small_bag(d.path(), "good", Storage::Mcap);

    // A camera topic the bag lacks, with the list of what it has and how to remap.
    let e = offline_fails(
        &good,
        &d.path().join("o1"),
        &["-p", "camera_topics:=[front]"],
    );
    assert!(e.contains("camera topic `/front` is not in the bag"), "{e}");
    assert!(
        e.contains("/camera/image_raw [sensor_msgs/msg/Image]"),
        "{e}"
    );
    assert!(e.contains("--remap /front:="), "{e}");
    // ... which --remap fixes (and a bad remap is refused).
    let ok = replay_bin(&[
        "offline".as_ref(),
        good.as_os_str(),
        "-o".as_ref(),
        d.path().join("o2").as_os_str(),
        "-p".as_ref(),
        "camera_topics:=[front]".as_ref(),
        "-p".as_ref(),
        "chunk:=4".as_ref(),
        "--remap".as_ref(),
        "/front:=/camera/image_raw".as_ref(),
        "--checkpoint".as_ref(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pi0-tiny")
            .as_os_str(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let e = offline_fails(&good, &d.path().join("o3"), &["--remap", "/front"]);
    assert!(e.contains("--remap `/front`: expected FROM:=TO"), "{e}");

    // The output exists already.
    let e = offline_fails(&good, &d.path().join("o2"), &[]);
    assert!(
        e.contains("output bag already exists (remove it or pass --overwrite)"),
        "{e}"
    );

    // A joint-state topic of the wrong type.
    let e = offline_fails(
        &good,
        &d.path().join("o4"),
        &["-p", "joint_states_topic:=/camera/image_raw"],
    );
    assert!(
        e.contains("joint-state topic `/camera/image_raw` has type sensor_msgs/msg/Image"),
        "{e}"
    );

    // Joint names the node is configured for are missing from the messages.
    let e = offline_fails(
        &good,
        &d.path().join("o5"),
        &["-p", "state_joints:=[elbow]"],
    );
    assert!(e.contains("on `/joint_states`"), "{e}");
    assert!(e.contains("joint \"elbow\" is missing"), "{e}");

    // A bad parameter.
    let e = offline_fails(&good, &d.path().join("o6"), &["-p", "encoder_pct:=150"]);
    assert!(e.contains("encoder_pct"), "{e}");

    // A corrupt CDR payload in the middle of the bag: the message is named.
    let bad = d.path().join("badcdr");
    let src = Bag::open(&good).unwrap();
    let mut w = BagWriter::create(&bad, WriterOptions::default()).unwrap();
    let ids: Vec<usize> = src
        .topics
        .iter()
        .map(|t| w.add_topic(&t.name, &t.type_name).unwrap())
        .collect();
    let mut n = 0;
    src.for_each(None, |m| {
        n += 1;
        let data = if n == 7 {
            m.data[..20].to_vec()
        } else {
            m.data.clone()
        };
        w.write(ids[m.topic], m.timestamp, &data)
    })
    .unwrap();
    w.finish().unwrap();
    let e = offline_fails(&bad, &d.path().join("o7"), &[]);
    assert!(
        e.contains("message 7 on `/camera/image_raw`")
            || e.contains("message 7 on `/joint_states`"),
        "{e}"
    );
    assert!(
        e.contains("payload truncated") || e.contains("claims"),
        "{e}"
    );
    // --skip-bad carries on and reports it.
    let o = replay_bin(&[
        "offline".as_ref(),
        bad.as_os_str(),
        "-o".as_ref(),
        d.path().join("o8").as_os_str(),
        "--skip-bad".as_ref(),
        "-p".as_ref(),
        "chunk:=4".as_ref(),
        "--checkpoint".as_ref(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pi0-tiny")
            .as_os_str(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("1 messages skipped") && out.contains("skipped: message 7"),
        "{out}"
    );

    // An unsupported image encoding.
    let enc = d.path().join("enc");
    let src = Bag::open(&good).unwrap();
    let mut w = BagWriter::create(&enc, WriterOptions::default()).unwrap();
    let ids: Vec<usize> = src
        .topics
        .iter()
        .map(|t| w.add_topic(&t.name, &t.type_name).unwrap())
        .collect();
    src.for_each(None, |m| {
        let data = if src.topic(&m).type_name == msgs::IMAGE {
            let mut img = msgs::Image::decode(&m.data)?;
            img.encoding = "yuv422".into();
            img.encode()
        } else {
            m.data.clone()
        };
        w.write(ids[m.topic], m.timestamp, &data)
    })
    .unwrap();
    w.finish().unwrap();
    let e = offline_fails(&enc, &d.path().join("o9"), &[]);
    assert!(e.contains("on `/camera/image_raw`"), "{e}");
    assert!(e.contains("yuv422"), "{e}");

    // A CompressedImage whose data is not the PNG it claims to be.
    let ci = d.path().join("ci");
    let mut w = BagWriter::create(&ci, WriterOptions::default()).unwrap();
    let cam = w
        .add_topic("/camera/image_raw", msgs::COMPRESSED_IMAGE)
        .unwrap();
    let js = w.add_topic("/joint_states", msgs::JOINT_STATE).unwrap();
    let c = CompressedImage {
        header: Header::default(),
        format: "png".into(),
        data: vec![0x89, b'P', b'N', b'G'],
    };
    let state = msgs::JointState {
        name: (1..=7).map(|i| format!("joint{i}")).collect(),
        position: vec![0.0; 7],
        ..Default::default()
    };
    w.write(js, 1_000_000_000, &state.encode()).unwrap();
    w.write(cam, 1_000_000_001, &c.encode()).unwrap();
    w.finish().unwrap();
    let e = offline_fails(&ci, &d.path().join("o10"), &[]);
    assert!(e.contains("message 2 on `/camera/image_raw`"), "{e}");
    assert!(
        e.contains("sensor_msgs/CompressedImage format `png`: corrupt PNG data"),
        "{e}"
    );
}

#[test]
fn info_flags_counts_that_disagree_with_metadata() {
    let d = tempfile::tempdir().unwrap();
    let bag = small_bag(d.path(), "c", Storage::Mcap);
    let meta = bag.join("metadata.yaml");
    let text = std::fs::read_to_string(&meta).unwrap();
    // The camera topic's count (4 frames) claimed as 9.
    std::fs::write(
        &meta,
        text.replacen("message_count: 4\n", "message_count: 9\n", 1),
    )
    .unwrap();
    let o = replay_bin(&["info".as_ref(), bag.as_os_str()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(
            "/camera/image_raw [sensor_msgs/msg/Image] 4 messages (metadata says 9: MISMATCH)"
        ),
        "{out}"
    );
    assert!(
        out.contains("/joint_states [sensor_msgs/msg/JointState] 17 messages (metadata: 17)"),
        "{out}"
    );
}
