"""Harness for the pi0 node's ROS integration tests (run by scripts/ros-test.sh).

An rclpy node publishes camera images and joint states, listens to the node's action chunks,
diagnostics and /parameter_events, and holds a parameter client (the code path of
`ros2 param set`). Expected actions come from the `pi0-offline` binary, which runs the node's
pipeline on the same inputs and noise seed.
"""

import json
import os
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterEvent
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, qos_profile_parameter_events, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

NODE_BIN = os.environ.get("PI0_NODE_BIN", "target/ros/debug/pi0")
OFFLINE_BIN = os.environ.get("PI0_OFFLINE_BIN", "target/ros/debug/pi0-offline")
JOINTS = [f"joint{i}" for i in range(1, 8)]
CACHE = os.environ.get("PI0_TEST_CACHE") or tempfile.mkdtemp(prefix="pi0-ros-test-")

# Parameters of the node under test (also given to pi0-offline).
SETTINGS = {
    "camera_topics": ["cam0/image_raw", "cam1/image_raw"],
    "camera_slots": [0, 1],
    "state_joints": JOINTS,
    "action_joints": JOINTS,
    "chunk": 10,
    "control_rate_hz": 20.0,
    "prompt": "pick up the cube",
    "model_cache": CACHE,
    "backend": "cpu",
    "max_age_s": 0.5,
    "sync_slop_s": 0.05,
}
SEED = 7


def write_params_file(path, settings):
    # JSON is YAML; "/**" matches the node whatever its name.
    with open(path, "w") as f:
        json.dump({"/**": {"ros__parameters": settings}}, f)


def start_node(log_path, settings=SETTINGS, extra=()):
    params = log_path + ".params.yaml"
    write_params_file(params, settings)
    cmd = [NODE_BIN, "--ros-args", "-r", "__node:=pi0", "--params-file", params,
           "-p", f"seed:={SEED}", *extra]
    log = open(log_path, "w")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), RUST_BACKTRACE="1")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def make_image(seed, width=64, height=48, encoding="rgb8"):
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 3)
    rng = np.random.RandomState(seed)
    data = rng.randint(0, 256, size=height * width * ch, dtype=np.uint8)
    return {"width": width, "height": height, "encoding": encoding, "step": width * ch,
            "data": data.tolist()}


def stamp_of(msg_stamp):
    return msg_stamp.sec * 1_000_000_000 + msg_stamp.nanosec


class Harness(Node):
    def __init__(self):
        super().__init__("pi0_test_harness")
        self.cams = [self.create_publisher(Image, t, qos_profile_sensor_data)
                     for t in SETTINGS["camera_topics"]]
        self.joints = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.trajectories = []
        self.diagnostics = []
        self.param_events = []
        self.create_subscription(JointTrajectory, "/pi0/actions",
                                 lambda m: self._add(self.trajectories, m), QoSProfile(depth=50))
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: self._add(self.diagnostics, m), QoSProfile(depth=50))
        self.create_subscription(ParameterEvent, "/parameter_events",
                                 lambda m: self._add(self.param_events, m),
                                 qos_profile_parameter_events)
        self.params = AsyncParameterClient(self, "pi0")

    def _add(self, lst, m):
        with self.lock:
            lst.append(m)

    def now_ns(self):
        return self.get_clock().now().nanoseconds

    def image_msg(self, img, stamp):
        m = Image()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        m.width, m.height, m.encoding, m.step = img["width"], img["height"], img["encoding"], img["step"]
        m.data = bytes(img["data"])
        return m

    def publish_joints(self, stamp, positions, names=JOINTS):
        m = JointState()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        m.name = list(names)
        m.position = [float(x) for x in positions]
        self.joints.publish(m)

    def publish_images(self, stamp, images):
        for pub, img in zip(self.cams, images):
            if img is not None:
                pub.publish(self.image_msg(img, stamp))

    def wait_for(self, pred, timeout=60.0, what="condition"):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                r = pred()
            if r:
                return r
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def trajectory_at(self, stamp, timeout=60.0):
        return self.wait_for(
            lambda: next((t for t in self.trajectories if stamp_of(t.header.stamp) == stamp), None),
            timeout, f"an action chunk stamped {stamp}")

    def diagnostic_at(self, stamp, timeout=10.0):
        def find():
            for d in self.diagnostics:
                for s in d.status:
                    kv = {v.key: v.value for v in s.values}
                    if kv.get("stamp_ns") == str(stamp):
                        return kv
            return None
        return self.wait_for(find, timeout, f"diagnostics stamped {stamp}")

    def call(self, future, timeout=20.0):
        end = time.time() + timeout
        while not future.done():
            if time.time() > end:
                raise AssertionError("service call timed out")
            time.sleep(0.01)
        return future.result()


def offline_expected(observations, settings=SETTINGS):
    """Runs pi0-offline on [{images, joint_names, positions, prompt, stamp_ns, index}]."""
    req = {"settings": dict(settings, seed=SEED), "observations": observations}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(req, f)
        path = f.name
    out = subprocess.run([OFFLINE_BIN, path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def ros():
    rclpy.init()
    h = Harness()
    ex = SingleThreadedExecutor()
    ex.add_node(h)
    t = threading.Thread(target=ex.spin, daemon=True)
    t.start()
    yield h
    ex.shutdown()
    h.destroy_node()
    rclpy.try_shutdown()


def wait_ready(h, proc, log_path, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}:\n" + open(log_path).read())
        if (h.params.services_are_ready()
                and all(p.get_subscription_count() > 0 for p in h.cams)
                and h.joints.get_subscription_count() > 0
                and "ready" in open(log_path).read()):
            time.sleep(0.3)
            return
        time.sleep(0.1)
    raise AssertionError("node not ready:\n" + open(log_path).read())


@pytest.fixture(scope="session")
def node(ros, tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("node") / "pi0.log")
    proc = start_node(log_path)
    wait_ready(ros, proc, log_path)
    proc.log_path = log_path
    yield proc
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
