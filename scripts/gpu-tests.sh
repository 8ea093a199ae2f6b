#!/usr/bin/env bash
# Runs every GPU test, the quickstart and the benchmarks on a GPU machine in one go.
#   scripts/gpu-tests.sh            build with cargo, then run
#   BIN_DIR=.carry scripts/gpu-tests.sh   run prebuilt binaries (gpu_golden, gpu_fullsize,
#       partition_gpu, pipeline, quickstart, pi0-bench, pi0-bench-partition; with or without
#       cargo's -hash suffix)
# PI0_FULL=1 adds the full-size GPU-vs-CPU test (writes ~6.5 GB to $PI0_FULL_CKPT, default /tmp).
# PI0_ASYM_DIR points at the pi0-tiny-asym golden set when ../shared is not next to the checkout.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
cd "$(dirname "$0")/.."
rc=0
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bins --tests --examples || exit 1
  BIN_DIR=target/release/deps
  BENCH=target/release/pi0-bench
  BENCH_PARTITION=target/release/pi0-bench-partition
  QUICKSTART=target/release/examples/quickstart
else
  BENCH="$BIN_DIR/pi0-bench"
  BENCH_PARTITION="$BIN_DIR/pi0-bench-partition"
  QUICKSTART="$BIN_DIR/quickstart"
fi
# pi0_mps = the library's unit tests: its GPU ones (kernel checks) are named gpu_*.
for t in pi0_mps gpu_golden gpu_fullsize partition_gpu pipeline; do
  b="$BIN_DIR/$t"
  [ -x "$b" ] || b=$(ls -t "$BIN_DIR"/$t-* 2>/dev/null | grep -v '\.d$' | head -1)
  if [ -z "$b" ]; then echo "missing test binary $t"; rc=1; continue; fi
  filter=""
  [ "$t" = pi0_mps ] && filter="gpu_"
  echo "== $t"
  "$b" $filter --nocapture --test-threads=1 || rc=1
done
echo "== quickstart"
"$QUICKSTART" || rc=1
echo "== pi0-bench-partition (six configurations)"
"$BENCH_PARTITION" --engine pi0 --iterations "${BENCH_ITERS:-100}" || rc=1
echo "== pi0-bench"
"$BENCH" --configs "${BENCH_CONFIGS:-1x20x50,2x20x50,3x20x50,2x0x63}" --iterations "${BENCH_ITERS:-100}" || rc=1
exit $rc
