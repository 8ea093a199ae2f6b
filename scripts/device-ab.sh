#!/usr/bin/env bash
# Same-call A/B of engine knobs on a GPU machine (prebuilt, stripped binaries in $BIN_DIR,
# default .carry): GPU correctness tests first, then one benchmark process per variant, in the
# order given, so that alternating baseline and candidate shows drift. Prints one row per
# variant as it lands and all rows again at the end (the device reply keeps the tail).
#   scripts/device-ab.sh "old:PI0_PDL_EARLY=0" "new:" "old2:PI0_PDL_EARLY=0" "new2:"
#   BENCH=partition scripts/device-ab.sh "chain:PI0_PDL=decoder" "all:"
# Env: BENCH = forward (pi0-bench, default) or partition (pi0-bench-partition --engine pi0);
# CONFIGS (forward; default 2x20x50), ITERS (200 forward / 100 partition), TESTS=0 skips the
# tests. Logs go to $OUT (or /tmp): at most 8 files come back from the device, so keep the
# variant count small or delete logs after reading them.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B="${BIN_DIR:-.carry}"
O="${OUT:-/tmp}"
BENCH="${BENCH:-forward}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
if [ "${TESTS:-1}" != 0 ]; then
  echo "== pi0_mps gpu_"; "$B/pi0_mps" gpu_ --test-threads=1 > "$O/t_unit.log" 2>&1; grep "test result" "$O/t_unit.log"
  echo "== gpu_golden"; "$B/gpu_golden" --nocapture --test-threads=1 > "$O/t_golden.log" 2>&1; grep -E "rel|test result" "$O/t_golden.log" | tail -8
fi
row() {  # the lines of one variant's log worth keeping
  local log=$1
  if [ "$BENCH" = partition ]; then
    grep -E "^\| (forward sequential \||forward concurrent|partitioned concurrent 50-50|sweep )|^acceptance" "$log" | tr '\n' ' '
  else
    local main part
    main=$(grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| ' "$log" | head -1)
    part=$(grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$' "$log" | head -1)
    printf '%s | parts %s | ' "$main" "$part"
  fi
  grep -oE "ready in [0-9.]+ s|lt study.*|[Ee]rror.*" "$log" | head -3 | tr '\n' ' '
}
rows=()
for spec in "$@"; do
  name="${spec%%:*}"; envs="${spec#*:}"
  log="$O/b_$name.log"
  if [ "$BENCH" = partition ]; then
    env $envs "$B/pi0-bench-partition" --engine pi0 --iterations "${ITERS:-100}" ${PARGS:-} > "$log" 2>&1
  else
    env $envs "$B/pi0-bench" --configs "${CONFIGS:-2x20x50}" --iterations "${ITERS:-200}" > "$log" 2>&1
  fi
  r="$name | $(row "$log")"
  rows+=("$r")
  echo "$r"
done
echo
if [ "$BENCH" = forward ]; then
  echo "variant | views | prompt | chunk | median | p90 | p99 | enc | dec | eager || parts: v p c upload enc dec down host"
fi
for r in "${rows[@]}"; do echo "$r"; done
