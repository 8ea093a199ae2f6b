#!/usr/bin/env python3
"""Writes rosbag2 test bags with an independent writer (PyPI `rosbags`), for tests/bag_rosbags.rs.

Usage: write_bags.py OUT_DIR

Bags written (each a folder under OUT_DIR):
  mcap_v9     rosbags Writer, MCAP storage, metadata v9 (Jazzy)
  sqlite3_v9  rosbags Writer, sqlite3 storage, metadata v9 (Jazzy)
  mcap_v5     rosbags Writer (v8), metadata.yaml rewritten in the Humble v5 layout
  sqlite3_v5  a Humble-era .db3 (schema version 3: no type_description_hash column, no
              message_definitions table) written with Python's sqlite3, CDR from rosbags, and a
              v5 metadata.yaml (offered_qos_profiles as a YAML string)

Every message's fields follow the formulas below, which the Rust test recomputes:
  /cam/image        Image k (k < N_IMG): height 4+k, width 6, rgb8, step 18,
                    data[i] = (7*i + k) % 256, stamp (100+k, 1000*k), frame_id "cam{k}";
                    plus one 640x480 rgb8 image (k = N_IMG) with the same data formula
  /cam/compressed   CompressedImage k: format "png" if k even else "jpeg", data = bytes(range(k+3)),
                    stamp (200+k, 0), frame_id "c"
  /joint_states     JointState k: name j0..jk, position[i] = 0.5*i + k, velocity[i] = -i,
                    effort [] ; stamp (300+k, 7), frame_id ""
  /actions          JointTrajectory k: joint_names [a, b], k+1 points,
                    positions [k, 0.25*i], velocities [], accelerations [], effort [1.5] if i == 0
                    else [], time_from_start (i, 5); stamp (400+k, 9), frame_id "base"
Bag timestamps: 1e9 + 1e7*k + topic offset (image 0, compressed 1000, joints 2000, actions 3000);
the big image's timestamp is 1e9 + 1e7*N_IMG.
"""

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

N_IMG, N_COMP, N_JS, N_ACT = 4, 3, 5, 3

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
Image = T["sensor_msgs/msg/Image"]
CompressedImage = T["sensor_msgs/msg/CompressedImage"]
JointState = T["sensor_msgs/msg/JointState"]
JointTrajectory = T["trajectory_msgs/msg/JointTrajectory"]
JointTrajectoryPoint = T["trajectory_msgs/msg/JointTrajectoryPoint"]
Header = T["std_msgs/msg/Header"]
Time = T["builtin_interfaces/msg/Time"]
Duration = T["builtin_interfaces/msg/Duration"]

F64 = np.float64


def image(k, h, w):
    data = ((7 * np.arange(h * w * 3, dtype=np.int64) + k) % 256).astype(np.uint8)
    return Image(
        header=Header(stamp=Time(sec=100 + k, nanosec=1000 * k), frame_id=f"cam{k}"),
        height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=data)


def messages():
    """(topic, type, bag timestamp, message) in timestamp order."""
    out = []
    for k in range(N_IMG):
        out.append(("/cam/image", Image, 1_000_000_000 + 10_000_000 * k, image(k, 4 + k, 6)))
    out.append(("/cam/image", Image, 1_000_000_000 + 10_000_000 * N_IMG, image(N_IMG, 480, 640)))
    for k in range(N_COMP):
        out.append(("/cam/compressed", CompressedImage, 1_000_000_000 + 10_000_000 * k + 1000,
                    CompressedImage(header=Header(stamp=Time(sec=200 + k, nanosec=0), frame_id="c"),
                                    format="png" if k % 2 == 0 else "jpeg",
                                    data=np.arange(k + 3, dtype=np.uint8))))
    for k in range(N_JS):
        n = k + 1
        out.append(("/joint_states", JointState, 1_000_000_000 + 10_000_000 * k + 2000,
                    JointState(header=Header(stamp=Time(sec=300 + k, nanosec=7), frame_id=""),
                               name=[f"j{i}" for i in range(n)],
                               position=np.array([0.5 * i + k for i in range(n)], dtype=F64),
                               velocity=np.array([-float(i) for i in range(n)], dtype=F64),
                               effort=np.array([], dtype=F64))))
    for k in range(N_ACT):
        pts = [JointTrajectoryPoint(positions=np.array([float(k), 0.25 * i], dtype=F64),
                                    velocities=np.array([], dtype=F64),
                                    accelerations=np.array([], dtype=F64),
                                    effort=np.array([1.5] if i == 0 else [], dtype=F64),
                                    time_from_start=Duration(sec=i, nanosec=5))
               for i in range(k + 1)]
        out.append(("/actions", JointTrajectory, 1_000_000_000 + 10_000_000 * k + 3000,
                    JointTrajectory(header=Header(stamp=Time(sec=400 + k, nanosec=9), frame_id="base"),
                                    joint_names=["a", "b"], points=pts)))
    out.sort(key=lambda m: m[2])
    return out


TOPICS = [("/cam/image", Image), ("/cam/compressed", CompressedImage),
          ("/joint_states", JointState), ("/actions", JointTrajectory)]


def write_rosbags(path, storage, version):
    with Writer(path, version=version, storage_plugin=storage) as w:
        conns = {t: w.add_connection(t, ty.__msgtype__, typestore=TS) for t, ty in TOPICS}
        for topic, ty, t, msg in messages():
            w.write(conns[topic], t, TS.serialize_cdr(msg, ty.__msgtype__))


HUMBLE_QOS = ("- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n"
              "    sec: 2147483647\n    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n"
              "    nsec: 4294967295\n  liveliness: 1\n  liveliness_lease_duration:\n"
              "    sec: 2147483647\n    nsec: 4294967295\n  avoid_ros_namespace_conventions: false")


def v5_metadata(storage_id, fname, counts, start, end):
    topics = "".join(
        f"    - topic_metadata:\n        name: {t}\n        type: {ty.__msgtype__}\n"
        f"        serialization_format: cdr\n        offered_qos_profiles: {json.dumps(HUMBLE_QOS)}\n"
        f"      message_count: {counts[t]}\n" for t, ty in TOPICS)
    total = sum(counts.values())
    return (
        "rosbag2_bagfile_information:\n  version: 5\n"
        f"  storage_identifier: {storage_id}\n"
        f"  duration:\n    nanoseconds: {end - start}\n"
        f"  starting_time:\n    nanoseconds_since_epoch: {start}\n"
        f"  message_count: {total}\n  topics_with_message_count:\n{topics}"
        "  compression_format: \"\"\n  compression_mode: \"\"\n"
        f"  relative_file_paths:\n    - {fname}\n"
        f"  files:\n    - path: {fname}\n      starting_time:\n        nanoseconds_since_epoch: {start}\n"
        f"      duration:\n        nanoseconds: {end - start}\n      message_count: {total}\n")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    msgs = messages()
    counts = {t: sum(1 for m in msgs if m[0] == t) for t, _ in TOPICS}
    start, end = msgs[0][2], msgs[-1][2]

    write_rosbags(out / "mcap_v9", StoragePlugin.MCAP, 9)
    write_rosbags(out / "sqlite3_v9", StoragePlugin.SQLITE3, 9)

    write_rosbags(out / "mcap_v5", StoragePlugin.MCAP, 8)
    (out / "mcap_v5" / "metadata.yaml").write_text(
        v5_metadata("mcap", "mcap_v5.mcap", counts, start, end))

    d = out / "sqlite3_v5"
    d.mkdir()
    db = sqlite3.connect(d / "sqlite3_v5_0.db3")
    db.executescript(
        "CREATE TABLE schema(schema_version INTEGER PRIMARY KEY,ros_distro TEXT NOT NULL);"
        "CREATE TABLE metadata(id INTEGER PRIMARY KEY,metadata_version INTEGER NOT NULL,metadata TEXT NOT NULL);"
        "CREATE TABLE topics(id INTEGER PRIMARY KEY,name TEXT NOT NULL,type TEXT NOT NULL,"
        "serialization_format TEXT NOT NULL,offered_qos_profiles TEXT NOT NULL);"
        "CREATE TABLE messages(id INTEGER PRIMARY KEY,topic_id INTEGER NOT NULL,"
        "timestamp INTEGER NOT NULL, data BLOB NOT NULL);"
        "CREATE INDEX timestamp_idx ON messages (timestamp ASC);")
    db.execute("INSERT INTO schema VALUES (3, 'humble')")
    ids = {}
    # Topic ids deliberately not in TOPICS order, and messages inserted in reverse time order:
    # the reader must map ids and sort by timestamp.
    for i, (t, ty) in enumerate(reversed(TOPICS)):
        ids[t] = 10 + i
        db.execute("INSERT INTO topics VALUES (?,?,?,?,?)", (10 + i, t, ty.__msgtype__, "cdr", HUMBLE_QOS))
    for topic, ty, t, msg in reversed(msgs):
        db.execute("INSERT INTO messages(topic_id, timestamp, data) VALUES (?,?,?)",
                   (ids[topic], t, bytes(TS.serialize_cdr(msg, ty.__msgtype__))))
    meta = v5_metadata("sqlite3", "sqlite3_v5_0.db3", counts, start, end)
    db.execute("INSERT INTO metadata(metadata_version, metadata) VALUES (5, ?)", (meta,))
    db.commit()
    db.close()
    (d / "metadata.yaml").write_text(meta)
    print(json.dumps({"counts": counts, "start": start, "end": end}))


if __name__ == "__main__":
    main()
