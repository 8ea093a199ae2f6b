#!/usr/bin/env bash
# The project's test command (README "Tests"; CI's .ci/run calls it on a fresh CPU machine).
# 1. Rust toolchain checks: rustfmt, clippy (-D warnings), rustdoc (-D warnings), cargo test
#    (unit, golden, bag, checkpoint, pipeline tests; GPU tests skip with a message when no GPU
#    is present), and
#    every CUDA source compiled by NVRTC for sm_80-sm_120 (tests/kernels_compile.rs; the
#    library comes from a PyPI wheel, scripts/nvrtc-env.sh: no GPU needed).
# 2. The ROS 2 node built against the ROS 2 Jazzy wheels from PyPI, and its integration tests
#    in a loopback-only network namespace (scripts/ros-test.sh).
# Set PI0_SKIP_ROS=1 to run only step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stage() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

stage "python venv with ROS 2 Jazzy wheels and rosbags (scripts/ros-env.sh)"
if [[ "${PI0_SKIP_ROS:-0}" != 1 ]]; then
    # shellcheck source=scripts/ros-env.sh
    source scripts/ros-env.sh
    export PI0_PYTHON="$PWD/.ros/bin/python"
fi

stage "NVRTC library for the kernel compile test (scripts/nvrtc-env.sh)"
# shellcheck source=scripts/nvrtc-env.sh
source scripts/nvrtc-env.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy (no features) -D warnings"
cargo clippy --all-targets -- -D warnings

stage "cargo doc (library API docs, -D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

stage "cargo test"
mkdir -p target
set +e
cargo test -- --nocapture > target/cargo-test.log 2>&1
rc=$?
set -e
# The summary lines plus what the tests print about golden figures and skips.
grep -E "^(test |running |test result)|skipping|golden|rel L2|kernels in" target/cargo-test.log || true
if [[ $rc -ne 0 ]]; then
    echo "cargo test FAILED (exit $rc); the end of target/cargo-test.log:"
    tail -100 target/cargo-test.log
    exit 1
fi

if [[ "${PI0_SKIP_ROS:-0}" != 1 ]]; then
    stage "ROS 2 node build + integration tests (scripts/ros-test.sh)"
    scripts/ros-test.sh
fi
stage "all tests passed"
