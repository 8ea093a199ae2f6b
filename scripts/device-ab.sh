#!/usr/bin/env bash
# Same-call A/B of engine knobs on a GPU machine (prebuilt, stripped binaries in $BIN_DIR,
# default .carry): GPU correctness tests first, then `pi0-bench` once per variant, alternating
# baseline and candidate so that drift shows. Prints one table row per variant at the end.
#   scripts/device-ab.sh "base:PI0_PDL=decoder PI0_STAGE=serial" "new:" "base2:PI0_PDL=decoder PI0_STAGE=serial" ...
# Env: CONFIGS (default 2x20x50), ITERS (200), TESTS=0 skips the tests. Logs go to $OUT (or /tmp).
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B="${BIN_DIR:-.carry}"
O="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
if [ "${TESTS:-1}" != 0 ]; then
  echo "== pi0_mps gpu_"; "$B/pi0_mps" gpu_ --test-threads=1 > "$O/t_unit.log" 2>&1; grep "test result" "$O/t_unit.log"
  echo "== gpu_golden"; "$B/gpu_golden" --nocapture --test-threads=1 > "$O/t_golden.log" 2>&1; grep -E "rel|test result" "$O/t_golden.log" | tail -8
fi
rows=()
for spec in "$@"; do
  name="${spec%%:*}"; envs="${spec#*:}"
  env $envs "$B/pi0-bench" --configs "${CONFIGS:-2x20x50}" --iterations "${ITERS:-200}" > "$O/b_$name.log" 2>&1
  main=$(grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| ' "$O/b_$name.log" | head -1)
  part=$(grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$' "$O/b_$name.log" | head -1)
  extra=$(grep -oE "ready in [0-9.]+ s|lt study.*|[Ee]rror.*" "$O/b_$name.log" | head -3 | tr '\n' ' ')
  rows+=("$name | $main | parts $part | $extra")
  echo "$name | $main | parts $part | $extra"
done
echo; echo "variant | views | prompt | chunk | median | p90 | p99 | enc | dec | eager || parts: v p c upload enc dec down host"
for r in "${rows[@]}"; do echo "$r"; done
