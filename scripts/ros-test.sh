#!/usr/bin/env bash
# ROS 2 integration tests of the pi0 node, on a machine without ROS or GPU:
#   1. scripts/ros-env.sh: the PyPI Jazzy venv (.ros/), libclang, the link quirks;
#   2. cargo build --features ros: the node (`pi0`) and the reference (`pi0-offline`);
#   3. pytest tests/ros/ with rclpy as the peer, inside a private network namespace with only
#      loopback (multicast on lo), so no DDS packet leaves the machine. Where `unshare -n` is
#      not permitted, DDS is limited to this host with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
# Extra arguments go to pytest (e.g. -k params).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=ros-env.sh
source scripts/ros-env.sh
echo "ros-test: building the node (target dir $CARGO_TARGET_DIR)"
t0=$(date +%s)
cargo build --features ros --bin pi0 --bin pi0-offline --bin pi0-replay
echo "ros-test: build took $(( $(date +%s) - t0 )) s"
export PI0_NODE_BIN="$CARGO_TARGET_DIR/debug/pi0"
export PI0_OFFLINE_BIN="$CARGO_TARGET_DIR/debug/pi0-offline"
export PI0_REPLAY_BIN="$CARGO_TARGET_DIR/debug/pi0-replay"
PI0_TEST_CACHE="$(mktemp -d /tmp/pi0-ros-test.XXXXXX)"
export PI0_TEST_CACHE
export ROS_LOG_DIR="$PI0_TEST_CACHE/ros-log"
trap 'rm -rf "$PI0_TEST_CACHE"' EXIT

run_tests() {
    cd "$root/tests/ros" && "$PI0_ROS_PYTHON" -m pytest -v -p no:cacheprovider "$@"
}
export -f run_tests
export root

if unshare -n true 2>/dev/null; then
    echo "ros-test: running in a private network namespace (loopback only)"
    unshare -n bash -c '
        set -e
        ip link set lo up
        ip link set lo multicast on
        ip route add 224.0.0.0/4 dev lo
        run_tests "$@"' ros-test "$@"
else
    echo "ros-test: unshare -n is not permitted here: falling back to" \
         "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (DDS limited to this host, no namespace)"
    export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
    ROS_DOMAIN_ID=$(( (RANDOM % 100) + 1 ))
    export ROS_DOMAIN_ID
    run_tests "$@"
fi
