"""Demo peer for scripts/run-node.sh: publishes a synthetic 640x480 camera at 10 Hz and joint
states at 50 Hz (joint1..joint7), and prints a line per action chunk and per timing report."""

import math

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

JOINTS = [f"joint{i}" for i in range(1, 8)]


class Demo(Node):
    def __init__(self):
        super().__init__("pi0_demo")
        self.cam = self.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        self.js = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.create_subscription(JointTrajectory, "/pi0/actions", self.on_actions, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.on_diag, 10)
        self.t = 0.0
        self.create_timer(0.1, self.pub_image)
        self.create_timer(0.02, self.pub_joints)

    def pub_image(self):
        h, w = 480, 640
        x = np.linspace(0, 255, w, dtype=np.float32)
        shift = int(self.t * 50) % w
        row = np.roll(x, shift).astype(np.uint8)
        img = np.stack([np.tile(row, (h, 1)), np.full((h, w), 80, np.uint8),
                        np.tile(np.linspace(0, 255, h, dtype=np.uint8)[:, None], (1, w))], -1)
        m = Image()
        m.header.stamp = self.get_clock().now().to_msg()
        m.height, m.width, m.encoding, m.step = h, w, "rgb8", w * 3
        m.data = img.tobytes()
        self.cam.publish(m)

    def pub_joints(self):
        self.t += 0.02
        m = JointState()
        m.header.stamp = self.get_clock().now().to_msg()
        m.name = JOINTS
        m.position = [0.3 * math.sin(self.t + i) for i in range(7)]
        self.js.publish(m)

    def on_actions(self, m):
        p = m.points[0].positions if m.points else []
        self.get_logger().info(
            f"action chunk: {len(m.points)} points x {len(m.joint_names)} joints, "
            f"first = [{', '.join(f'{x:+.3f}' for x in p)}]")

    def on_diag(self, m):
        for s in m.status:
            kv = {v.key: v.value for v in s.values}
            if "end_to_end_ms" in kv:
                self.get_logger().info(
                    f"timing: encoder {kv['encoder_ms']} ms, decoder {kv['decoder_ms']} ms, "
                    f"end-to-end {kv['end_to_end_ms']} ms")


def main():
    rclpy.init()
    n = Demo()
    try:
        rclpy.spin(n)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        n.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
