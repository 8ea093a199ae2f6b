#!/usr/bin/env bash
# The main job in one command: sets up the ROS 2 environment (scripts/ros-env.sh), builds
# the node in release, and runs it. With no arguments it runs the built-in seeded random
# tiny pi0 on the CPU (or GPU) together with a small rclpy demo that publishes a camera and
# joint states and prints the action chunks it gets back; Ctrl-C stops both.
#
#   scripts/run-node.sh                       # node + demo publisher
#   scripts/run-node.sh --node-only [ROS ARGS]  # just the node, e.g.
#   scripts/run-node.sh --node-only --ros-args -p checkpoint:=/models/pi0 -p backend:=cuda
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=ros-env.sh
source scripts/ros-env.sh
cargo build --release --features ros --bin pi0
node="$CARGO_TARGET_DIR/release/pi0"
if [ "${1:-}" = "--node-only" ]; then
    shift
    exec "$node" "$@"
fi
"$node" --ros-args --params-file config/pi0.yaml "$@" &
node_pid=$!
"$PI0_ROS_PYTHON" scripts/demo_publisher.py &
demo_pid=$!
stop() {
    kill -INT "$demo_pid" 2>/dev/null || true
    kill -INT "$node_pid" 2>/dev/null || true
}
trap stop INT TERM
wait "$node_pid" || true
status=$?
kill -INT "$demo_pid" 2>/dev/null || true
wait "$demo_pid" 2>/dev/null || true
exit "$status"
