"""Online bag replay into the running node: tests/ros/bag_play.py publishes
tests/data/bags/input into the ROS graph and records the node's action chunks; the recording
must hold one chunk per observation and match the offline replay (the stored
tests/data/bags/expected_actions, which tests/bag_replay.rs checks against `pi0-replay offline`).

Runs in its own ROS domain, so that the session node of test_node.py (also named /pi0) does
not see these messages.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = os.environ.get("PI0_NODE_BIN", str(ROOT / "target/ros/debug/pi0"))
INPUT = ROOT / "tests/data/bags/input"
EXPECTED = ROOT / "tests/data/bags/expected_actions"
PARAMS = ROOT / "tests/data/bags/replay_params.yaml"
CHECKPOINT = ROOT / "tests/data/pi0-tiny"


def replay_bin():
    cands = [os.environ.get("PI0_REPLAY_BIN", "")]
    for d in (os.environ.get("CARGO_TARGET_DIR", ""), str(ROOT / "target/ros"), str(ROOT / "target")):
        if d:
            cands.append(os.path.join(d, "debug", "pi0-replay"))
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def chunks(bag):
    ts = get_typestore(Stores.ROS2_JAZZY)
    out = []
    with Reader(bag) as r:
        for conn, _, raw in r.messages():
            m = ts.deserialize_cdr(raw, conn.msgtype)
            out.append((m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec,
                        list(m.joint_names),
                        np.array([p.positions for p in m.points]),
                        [p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec for p in m.points]))
    return out


def test_online_bag_replay_matches_offline(tmp_path):
    domain = (int(os.environ.get("ROS_DOMAIN_ID", "0")) + 37) % 100 + 1
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    log_path = tmp_path / "node.log"
    log = open(log_path, "w")
    node = subprocess.Popen(
        [NODE_BIN, "--ros-args", "-r", "__node:=pi0", "--params-file", str(PARAMS),
         "-p", f"checkpoint:={CHECKPOINT}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        end = time.time() + 120
        while "ready" not in log_path.read_text():
            assert node.poll() is None, f"node exited {node.returncode}:\n{log_path.read_text()}"
            assert time.time() < end, "node not ready:\n" + log_path.read_text()
            time.sleep(0.1)
        out = tmp_path / "online"
        p = subprocess.run(
            [sys.executable, str(ROOT / "tests/ros/bag_play.py"), str(INPUT),
             "--record", "/pi0/actions", "--record-out", str(out), "--expect", "3",
             "--step-topic", "/camera/image_raw"],
            env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr + "\nnode log:\n" + log_path.read_text()
        assert "published 15 messages" in p.stdout, p.stdout
        assert "recorded 3 on /pi0/actions" in p.stdout, p.stdout
    finally:
        node.send_signal(2)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()

    got, want = chunks(out), chunks(EXPECTED)
    # The node answered every observation (3 frames), with the offline replay's chunks.
    assert [c[0] for c in got] == [c[0] for c in want]
    for g, w in zip(got, want):
        assert g[1] == w[1]
        assert g[3] == w[3]
        assert g[2].shape == w[2].shape == (10, 7)
        assert np.all(np.isfinite(g[2]))
        assert np.max(np.abs(g[2] - w[2])) <= 1e-4 + 1e-4 * np.max(np.abs(w[2]))

    # The same through the tool, when it is built.
    rb = replay_bin()
    if rb:
        r = subprocess.run([rb, "compare", str(out), str(EXPECTED), "--atol", "1e-4", "--rtol", "1e-4"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "chunks: 3 actual, 3 expected, 3 compared" in r.stdout
        # And a fresh offline replay agrees with the live node too.
        off = tmp_path / "offline"
        r = subprocess.run([rb, "offline", str(INPUT), "-o", str(off), "--params-file", str(PARAMS),
                            "--checkpoint", str(CHECKPOINT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([rb, "compare", str(out), str(off), "--atol", "1e-5", "--rtol", "1e-5"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(out, ignore_errors=True)


def test_bag_play_rejects_bad_input(tmp_path):
    bad = tmp_path / "nobag"
    bad.mkdir()
    p = subprocess.run([sys.executable, str(ROOT / "tests/ros/bag_play.py"), str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "cannot read" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "tests/ros/bag_play.py"), str(INPUT), "--remap", "x"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "expected FROM:=TO" in p.stderr


def test_restamped_replay_feeds_a_node_that_drops_stale_data(tmp_path):
    """With the node's default age limit (max_age_s 0.5) a 2023 bag is all stale; --restamp
    shifts the header stamps to now, so the node answers every frame, with the same actions
    as the offline replay (only the stamps differ)."""
    domain = (int(os.environ.get("ROS_DOMAIN_ID", "0")) + 53) % 100 + 1
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    log_path = tmp_path / "node.log"
    node = subprocess.Popen(
        [NODE_BIN, "--ros-args", "-r", "__node:=pi0", "--params-file", str(PARAMS),
         "-p", f"checkpoint:={CHECKPOINT}", "-p", "max_age_s:=0.5"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        end = time.time() + 120
        while "ready" not in log_path.read_text():
            assert node.poll() is None, f"node exited {node.returncode}:\n{log_path.read_text()}"
            assert time.time() < end, "node not ready:\n" + log_path.read_text()
            time.sleep(0.1)
        out = tmp_path / "online"
        p = subprocess.run(
            [sys.executable, str(ROOT / "tests/ros/bag_play.py"), str(INPUT), "--restamp",
             "--record", "/pi0/actions", "--record-out", str(out), "--expect", "3",
             "--step-topic", "/camera/image_raw"],
            env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr + "\nnode log:\n" + log_path.read_text()
    finally:
        node.send_signal(2)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
    got, want = chunks(out), chunks(EXPECTED)
    assert len(got) == 3
    # Fresh stamps, 100 ms apart or more (lockstep waits add to the gaps).
    assert all(g[0] > 1_750_000_000_000_000_000 for g in got)
    assert all(b[0] - a[0] >= 100_000_000 for a, b in zip(got, got[1:]))
    for g, w in zip(got, want):
        assert np.max(np.abs(g[2] - w[2])) <= 1e-4 + 1e-4 * np.max(np.abs(w[2]))


def test_rust_player_pi0_replay_play(tmp_path):
    """`pi0-replay play` (r2r, the `ros` feature) does what bag_play.py does."""
    import pytest

    rb = replay_bin()
    if not rb:
        pytest.skip("pi0-replay is not built")
    probe = subprocess.run([rb, "play", str(INPUT), "--topics", "/no/such/topic"],
                           capture_output=True, text=True, timeout=60)
    if "without the `ros` feature" in probe.stderr:
        pytest.skip("pi0-replay was built without the `ros` feature "
                    "(scripts/ros-test.sh builds it with --features ros)")
    assert probe.returncode == 2 and "topic `/no/such/topic` is not in the bag" in probe.stderr, probe.stderr
    domain = (int(os.environ.get("ROS_DOMAIN_ID", "0")) + 71) % 100 + 1
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    log_path = tmp_path / "node.log"
    node = subprocess.Popen(
        [NODE_BIN, "--ros-args", "-r", "__node:=pi0", "--params-file", str(PARAMS),
         "-p", f"checkpoint:={CHECKPOINT}", "-p", "max_age_s:=0.5"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        end = time.time() + 120
        while "ready" not in log_path.read_text():
            assert node.poll() is None, f"node exited {node.returncode}:\n{log_path.read_text()}"
            assert time.time() < end, "node not ready:\n" + log_path.read_text()
            time.sleep(0.1)
        out = tmp_path / "online"
        p = subprocess.run(
            [rb, "play", str(INPUT), "--restamp", "--record", "/pi0/actions", "--record-out", str(out),
             "--expect", "3", "--step-topic", "/camera/image_raw"],
            env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr + "\nnode log:\n" + log_path.read_text()
        assert "published 15 messages" in p.stdout and "recorded 3 on /pi0/actions" in p.stdout, p.stdout
    finally:
        node.send_signal(2)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
    r = subprocess.run([rb, "compare", str(out), str(EXPECTED), "--atol", "1e-4", "--rtol", "1e-4",
                        "--ignore-stamps"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    got = chunks(out)
    assert all(g[0] > 1_750_000_000_000_000_000 for g in got), "stamps were not refreshed"
