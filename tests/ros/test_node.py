"""Integration tests of the pi0 node over real rcl / Fast DDS (PyPI Jazzy wheels), on loopback."""

import math
import signal
import time

import numpy as np
import pytest
from rclpy.parameter import get_parameter_value
from rcl_interfaces.msg import Parameter as ParameterMsg

from conftest import JOINTS, SETTINGS, make_image, offline_expected, start_node, wait_ready


def settle():
    # Older frames / joint states age out (max_age_s = 0.5) so each test starts clean.
    time.sleep(0.7)


def run_observation(h, images, positions, stamp=None, joints_first=True):
    stamp = stamp or h.now_ns()
    if joints_first:
        h.publish_joints(stamp, positions)
        time.sleep(0.2)
    h.publish_images(stamp, images)
    return stamp


def assert_matches_offline(h, traj, stamp, images, positions, prompt=None):
    diag = h.diagnostic_at(stamp)
    index = int(diag["index"])
    exp = offline_expected([{
        "images": images, "joint_names": JOINTS, "positions": positions,
        "prompt": prompt or SETTINGS["prompt"], "stamp_ns": stamp, "index": index,
    }])[0]
    got = np.array([p.positions for p in traj.points])
    want = np.array(exp["points"])
    assert got.shape == want.shape == (SETTINGS["chunk"], len(JOINTS))
    assert np.all(np.isfinite(got))
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)
    assert err < 1e-5, f"node vs engine rel L2 {err}; diagnostics {diag}; offline {exp['masked_slots']}"
    assert int(diag["noise_seed"]) == 7 + index
    return diag


def test_actions_equal_engine_output(ros, node):
    h = ros
    settle()
    images = [make_image(1), make_image(2, width=80, height=60, encoding="bgr8")]
    positions = [0.1 * i for i in range(7)]
    stamp = run_observation(h, images, positions)
    traj = h.trajectory_at(stamp)
    assert list(traj.joint_names) == JOINTS
    assert len(traj.points) == SETTINGS["chunk"]
    dt = 1.0 / SETTINGS["control_rate_hz"]
    for k, p in enumerate(traj.points):
        t = p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
        assert math.isclose(t, (k + 1) * dt, abs_tol=1e-6)
    diag = assert_matches_offline(h, traj, stamp, images, positions)
    for key in ("encoder_ms", "decoder_ms", "end_to_end_ms"):
        assert float(diag[key]) > 0, diag
    assert diag["masked_slots"] == "[]"

    # A second observation gets the next index and different noise.
    settle()
    images2 = [make_image(3, encoding="rgba8"), make_image(4, encoding="mono8")]
    positions2 = [-0.2] * 7
    stamp2 = run_observation(h, images2, positions2)
    traj2 = h.trajectory_at(stamp2)
    d2 = assert_matches_offline(h, traj2, stamp2, images2, positions2)
    assert int(d2["index"]) > int(diag["index"])


def set_param(h, name, text):
    msg = ParameterMsg(name=name, value=get_parameter_value(text))
    return h.call(h.params.set_parameters([msg])).results[0]


def get_param(h, name):
    return h.call(h.params.get_parameters([name])).values[0]


def test_parameters_live_and_refused(ros, node):
    h = ros
    r = set_param(h, "encoder_pct", "70")
    assert r.successful, r.reason
    assert get_param(h, "encoder_pct").integer_value == 70
    h.wait_for(lambda: any(
        p.name == "encoder_pct" and p.value.integer_value == 70
        for e in h.param_events if e.node == "/pi0" for p in e.changed_parameters),
        10, "a /parameter_events change for encoder_pct")
    for bad in ("0", "150", "abc"):
        r = set_param(h, "encoder_pct", bad)
        assert not r.successful, bad
        assert "encoder_pct" in r.reason and r.reason.strip(), r.reason
        assert get_param(h, "encoder_pct").integer_value == 70
    r = set_param(h, "checkpoint", "/nonexistent")
    assert not r.successful and "read-only" in r.reason, r.reason
    desc = h.call(h.params.describe_parameters(["encoder_pct"])).descriptors[0]
    assert "SM" in desc.description
    names = h.call(h.params.list_parameters()).result.names
    for n in ("encoder_pct", "decoder_pct", "concurrent", "partition", "prompt",
              "checkpoint", "norm_stats", "camera_topics", "state_joints", "backend"):
        assert n in names

    # The node keeps serving, with the new split and a new prompt.
    r = set_param(h, "prompt", "open the drawer")
    assert r.successful, r.reason
    settle()
    images = [make_image(5), make_image(6)]
    positions = [0.3] * 7
    stamp = run_observation(h, images, positions)
    traj = h.trajectory_at(stamp)
    diag = assert_matches_offline(h, traj, stamp, images, positions, prompt="open the drawer")
    assert diag["encoder_pct"] == "70"
    assert diag["prompt"] == "open the drawer"
    assert set_param(h, "prompt", SETTINGS["prompt"]).successful
    assert node.poll() is None


def log_text(node):
    return open(node.log_path).read()


def test_bad_input_is_skipped_or_masked(ros, node):
    h = ros
    positions = [0.05] * 7
    # Wrong encoding on camera 1: the frame is refused, the view is masked.
    settle()
    stamp = h.now_ns()
    h.publish_joints(stamp, positions)
    time.sleep(0.2)
    h.publish_images(stamp, [make_image(7), make_image(8, encoding="yuv422")])
    traj = h.trajectory_at(stamp)
    diag = assert_matches_offline(h, traj, stamp, [make_image(7), None], positions)
    assert diag["masked_slots"] == "[1]"
    h.wait_for(lambda: "unsupported encoding" in log_text(node), 5, "encoding warning")

    # Wrong data length on camera 0: refused; camera 1 paces the observation alone.
    settle()
    short = make_image(9)
    short["data"] = short["data"][:-10]
    stamp = h.now_ns()
    h.publish_joints(stamp, positions)
    time.sleep(0.2)
    h.publish_images(stamp, [short, make_image(10)])
    traj = h.trajectory_at(stamp)
    diag = assert_matches_offline(h, traj, stamp, [None, make_image(10)], positions)
    assert diag["masked_slots"] == "[0]"
    h.wait_for(lambda: "bytes" in log_text(node) and "needed" in log_text(node), 5,
               "data length warning")

    # NaN joint state: skipped; the last good one (fresh) is used.
    settle()
    stamp = h.now_ns()
    h.publish_joints(stamp - 100_000_000, positions)
    time.sleep(0.1)
    h.publish_joints(stamp, [float("nan")] * 7)
    time.sleep(0.2)
    images = [make_image(11), make_image(12)]
    h.publish_images(stamp, images)
    traj = h.trajectory_at(stamp)
    assert_matches_offline(h, traj, stamp, images, positions)
    h.wait_for(lambda: "NaN" in log_text(node), 5, "NaN warning")

    # Missing camera 1 (mask policy): masked after the sync slop.
    settle()
    positions = [0.2] * 7
    stamp = run_observation(h, [make_image(13), None], positions)
    traj = h.trajectory_at(stamp)
    diag = assert_matches_offline(h, traj, stamp, [make_image(13), None], positions)
    assert diag["masked_slots"] == "[1]"

    # Still serving good input.
    settle()
    images = [make_image(14), make_image(15)]
    stamp = run_observation(h, images, positions)
    assert_matches_offline(h, h.trajectory_at(stamp), stamp, images, positions)
    assert node.poll() is None
    assert "panicked" not in log_text(node)


def test_concurrent_mode_live(ros, node):
    h = ros
    assert set_param(h, "concurrent", "true").successful
    assert set_param(h, "prompt", "pick up the cube").successful
    settle()
    images = [make_image(21), make_image(22)]
    stamp_img = h.now_ns()
    h.publish_images(stamp_img, images)
    time.sleep(2.0)  # the encoder runs at camera rate; its prefix waits for a joint state
    positions = [0.4] * 7
    stamp_js = h.now_ns()
    h.publish_joints(stamp_js, positions)
    traj = h.trajectory_at(stamp_js)
    diag = assert_matches_offline(h, traj, stamp_js, images, positions)
    assert diag["concurrent"] == "true"
    assert diag["image_stamp_ns"] == str(stamp_img)
    # Control rate: each new joint state is decoded against the same prefix.
    stamp_js2 = h.now_ns()  # fresh (max_age_s = 0.5): the offline check above took a while
    h.publish_joints(stamp_js2, [0.5] * 7)
    traj2 = h.trajectory_at(stamp_js2)
    assert_matches_offline(h, traj2, stamp_js2, images, [0.5] * 7)
    assert set_param(h, "concurrent", "false").successful


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_inference_exits_zero(ros, node, tmp_path, sig):
    h = ros
    # A second node in its own namespace listening to the same inputs; it gets the signal
    # while it infers (the session node keeps serving).
    ns = "/sig%d" % int(sig)
    settings = dict(SETTINGS, camera_topics=["/" + t for t in SETTINGS["camera_topics"]],
                    joint_states_topic="/joint_states")
    log_path = str(tmp_path / "side.log")
    proc = start_node(log_path, settings=settings, extra=["-r", f"__ns:={ns}"])
    try:
        end = time.time() + 120
        while "ready" not in open(log_path).read():
            assert proc.poll() is None, open(log_path).read()
            assert time.time() < end, open(log_path).read()
            time.sleep(0.1)
        h.wait_for(lambda: all(p.get_subscription_count() >= 2 for p in h.cams), 20,
                   "the second node's subscriptions")
        settle()
        stamp = run_observation(h, [make_image(31), make_image(32)], [0.0] * 7)
        time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(30)
        h.trajectory_at(stamp)  # the session node answered as usual
    finally:
        if proc.poll() is None:
            proc.kill()
    log = open(log_path).read()
    assert rc == 0, log
    assert "panicked" not in log, log
    assert "shutting down" in log, log


def test_invalid_launch_parameter_is_refused_at_start(tmp_path):
    # A bad value in the params file / -p stops the node with the reason (exit code 2).
    log_path = str(tmp_path / "bad.log")
    proc = start_node(log_path, extra=["-p", "encoder_pct:=150", "-r", "__ns:=/bad"])
    try:
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = open(log_path).read()
    assert rc == 2, log
    assert "encoder_pct must be in 1..100" in log, log
