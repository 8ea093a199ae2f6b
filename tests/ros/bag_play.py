#!/usr/bin/env python3
"""Online bag replay for machines without `ros2 bag play`: publishes a rosbag2 bag's topics into
the ROS graph at the recorded pace, and can record the pi0 node's action chunks into a bag.

Reads bags with the PyPI `rosbags` package (MCAP or sqlite3, metadata v5-v9) and publishes the
recorded CDR bytes unchanged through rclpy (`Publisher.publish(bytes)` = rcl's publish of a
serialized message), so the node receives exactly what was recorded.

    bag_play.py BAG [--rate 1.0] [--loop N] [--remap FROM:=TO ...] [--topics T ...]
                    [--record TOPIC --record-out DIR [--expect N]]
                    [--step-topic T [--step-timeout S] [--settle-ms MS]]

--rate           playback speed factor (2 = twice as fast); 0 = as fast as possible.
--loop N         play the bag N times (timestamps continue; default 1).
--remap A:=B     publish bag topic A on topic B (repeatable).
--topics         only these bag topics (default: all).
--qos            reliable (default) or best_effort publishers, keep-last depth 100.
--restamp        shift every header.stamp by (now at start - the bag's first timestamp), plus
                 the loop offset, so that a node that drops stale data (max_age_s) accepts a
                 recorded bag; relative timing between messages is kept. Messages without a
                 header are published unchanged.
--wait-s         how long to wait for each published topic to have a subscriber (default 60 s).
--record T       subscribe to T (trajectory_msgs/JointTrajectory, raw bytes) and write what
                 arrives to --record-out (MCAP, metadata v9), stamped with the receive time.
--expect N       after playing, wait until N messages were recorded (or --record-timeout).
--step-topic T   lockstep: after each message published on (bag topic) T, wait until one more
                 message was recorded, so a slow node answers every observation; and before each
                 such message wait --settle-ms (default 50) so that messages of other topics
                 published just before it are delivered first (DDS orders only per topic).
Exit code: 0, or 1 when fewer than --expect messages were recorded / a step timed out,
2 on bad arguments or an unreadable bag.
"""

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path


def msg_class(type_name):
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bag")
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--loop", type=int, default=1)
    ap.add_argument("--remap", action="append", default=[])
    ap.add_argument("--topics", nargs="*")
    ap.add_argument("--qos", choices=["reliable", "best_effort"], default="reliable")
    ap.add_argument("--wait-s", type=float, default=60.0)
    ap.add_argument("--restamp", action="store_true")
    ap.add_argument("--record")
    ap.add_argument("--record-out")
    ap.add_argument("--expect", type=int)
    ap.add_argument("--record-timeout", type=float, default=120.0)
    ap.add_argument("--step-topic")
    ap.add_argument("--step-timeout", type=float, default=120.0)
    ap.add_argument("--settle-ms", type=float, default=50.0)
    a = ap.parse_args()

    if a.rate < 0 or a.loop < 1:
        print("bag_play: --rate must be >= 0 and --loop >= 1", file=sys.stderr)
        return 2
    if bool(a.record) != bool(a.record_out):
        print("bag_play: --record and --record-out go together", file=sys.stderr)
        return 2
    if (a.expect is not None or a.step_topic) and not a.record:
        print("bag_play: --expect and --step-topic need --record", file=sys.stderr)
        return 2
    remaps = {}
    for r in a.remap:
        if ":=" not in r:
            print(f"bag_play: --remap {r!r}: expected FROM:=TO", file=sys.stderr)
            return 2
        src, dst = r.split(":=", 1)
        remaps[src] = dst

    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(Path(a.bag))
        reader.open()
    except Exception as e:  # rosbags raises several types for bad bags
        print(f"bag_play: cannot read {a.bag}: {e}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    rclpy.init()
    node = Node("pi0_bag_play")
    qos = QoSProfile(depth=100)
    if a.qos == "best_effort":
        qos.reliability = ReliabilityPolicy.BEST_EFFORT
    conns = [c for c in reader.connections if not a.topics or c.topic in a.topics]
    if a.topics:
        missing = set(a.topics) - {c.topic for c in conns}
        if missing:
            print(f"bag_play: topics not in the bag: {sorted(missing)}", file=sys.stderr)
            return 2
    pubs = {}
    classes = {}
    for c in conns:
        if c.topic not in pubs:
            classes[c.topic] = msg_class(c.msgtype)
            pubs[c.topic] = node.create_publisher(classes[c.topic], remaps.get(c.topic, c.topic), qos)

    lock = threading.Lock()
    recorded = []
    if a.record:
        from trajectory_msgs.msg import JointTrajectory

        def on_msg(raw):
            with lock:
                recorded.append((node.get_clock().now().nanoseconds, bytes(raw)))

        sub = node.create_subscription(JointTrajectory, a.record, on_msg, QoSProfile(depth=1000), raw=True)

    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def count():
        with lock:
            return len(recorded)

    def wait_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.01)
        return pred()

    # Discovery: every publisher has a subscriber, the recorder a publisher.
    for topic, p in pubs.items():
        if not wait_until(lambda: p.get_subscription_count() > 0, a.wait_s):
            print(f"bag_play: warning: no subscriber on {remaps.get(topic, topic)} after {a.wait_s} s",
                  file=sys.stderr)
    if a.record and not wait_until(lambda: sub.get_publisher_count() > 0, a.wait_s):
        print(f"bag_play: warning: nobody publishes {a.record} after {a.wait_s} s", file=sys.stderr)
    time.sleep(0.3)

    rc = 0
    published = 0
    names = {c.topic for c in conns}
    start_wall = time.monotonic()
    first = None
    offset = 0
    span = 0
    shift = None
    if a.restamp:
        from rclpy.serialization import deserialize_message, serialize_message
    for _ in range(a.loop):
        for conn, t, raw in reader.messages(connections=[c for c in reader.connections if c.topic in names]):
            if first is None:
                first = t
                shift = node.get_clock().now().nanoseconds - t
            rel = t - first + offset
            span = max(span, t - first)
            if a.rate > 0:
                delay = start_wall + rel / 1e9 / a.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            step = a.step_topic is not None and conn.topic == a.step_topic
            if step:
                time.sleep(a.settle_ms / 1000.0)
                before = count()
            data = bytes(raw)
            if a.restamp:
                msg = deserialize_message(data, classes[conn.topic])
                if hasattr(msg, "header"):
                    ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec + shift + offset
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                    data = serialize_message(msg)
            pubs[conn.topic].publish(data)
            published += 1
            if step:
                if not wait_until(lambda: count() > before, a.step_timeout):
                    print(f"bag_play: no answer on {a.record} within {a.step_timeout} s after the "
                          f"message at {t} ns on {conn.topic}", file=sys.stderr)
                    rc = 1
                if a.rate > 0:
                    # Keep the recorded pace from here on.
                    start_wall = time.monotonic() - rel / 1e9 / a.rate
                if a.restamp:
                    # ... and stamps that are fresh at publish time.
                    shift = node.get_clock().now().nanoseconds - (t + offset)
        offset += span + 1
    if a.expect is not None and not wait_until(lambda: count() >= a.expect, a.record_timeout):
        rc = 1
    time.sleep(0.2)
    n = count()
    print(f"bag_play: published {published} messages from {a.bag}"
          + (f"; recorded {n} on {a.record}" if a.record else ""))
    if a.expect is not None and n < a.expect:
        print(f"bag_play: expected {a.expect} messages on {a.record}, got {n}", file=sys.stderr)

    if a.record:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        ts = get_typestore(Stores.ROS2_JAZZY)
        with lock:
            msgs = list(recorded)
        with Writer(Path(a.record_out), version=9, storage_plugin=StoragePlugin.MCAP) as w:
            c = w.add_connection(a.record, "trajectory_msgs/msg/JointTrajectory", typestore=ts)
            for t, raw in msgs:
                w.write(c, t, raw)
    # Stop spinning before tearing down (a daemon thread still inside rcl at interpreter exit
    # aborts the process).
    ex.shutdown()
    spin.join(timeout=10)
    node.destroy_node()
    rclpy.try_shutdown()
    reader.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
