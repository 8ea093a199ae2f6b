#!/usr/bin/env python3
"""Reads a rosbag2 bag with an independent reader (PyPI `rosbags`) and prints a JSON summary,
for tests/bag_rosbags.rs to check bags that pi0-replay wrote.

Usage: read_bag.py BAG

Output: {"version", "storage", "topics": {name: {"type", "count"}}, "messages": [...]} where each
message is {"topic", "t", "stamp", ...} with the decoded fields the test checks (images: width,
height, encoding, step, data sum and length; joint states: names, positions; trajectories:
joint names, positions per point, time_from_start per point). float64 values are given as
their IEEE-754 bits (integers), so the comparison is exact.
"""

import json
import struct
import sys
from pathlib import Path

from ruamel.yaml import YAML
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore


def bits(x):
    """IEEE-754 bits of a float64, so that JSON carries values exactly."""
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def main():
    ts = get_typestore(Stores.ROS2_JAZZY)
    out = {"topics": {}, "messages": []}
    path = Path(sys.argv[1])
    meta = YAML(typ="safe").load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    out["version"] = meta["version"]
    out["storage"] = meta["storage_identifier"]
    with Reader(path) as r:
        out["message_count"] = r.message_count
        for c in r.connections:
            out["topics"][c.topic] = {"type": c.msgtype, "count": c.msgcount}
        for conn, t, raw in r.messages():
            m = ts.deserialize_cdr(raw, conn.msgtype)
            d = {"topic": conn.topic, "t": t,
                 "stamp": m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec,
                 "frame_id": m.header.frame_id}
            if conn.msgtype == "sensor_msgs/msg/Image":
                d.update(width=int(m.width), height=int(m.height), encoding=m.encoding,
                         step=int(m.step), len=len(m.data), sum=int(m.data.astype("int64").sum()))
            elif conn.msgtype == "sensor_msgs/msg/JointState":
                d.update(name=list(m.name), position=[bits(x) for x in m.position])
            elif conn.msgtype == "trajectory_msgs/msg/JointTrajectory":
                d.update(joint_names=list(m.joint_names),
                         positions=[[bits(x) for x in p.positions] for p in m.points],
                         time_from_start=[p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec
                                          for p in m.points])
            out["messages"].append(d)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
