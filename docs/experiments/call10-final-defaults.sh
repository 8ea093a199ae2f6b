#!/usr/bin/env bash
# Final defaults (partition cuBLASLt picks + balanced splits on 60-72 SMs) vs the old defaults.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 100 $B/partition_gpu --test-threads=1 > $O/t_part.log 2>&1; echo "partition_gpu: $(grep 'test result' $O/t_part.log)"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 80 env "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7" / "$8" (enc"$11")"}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" | enc solo"$11" | dec solo"$12" | dec loaded"$13}')
  local acc=$(grep -oE "frame period [0-9.]+ ms = [0-9.]+ × sequential forward [0-9.]+ ms[^;]*; decoder[^:]*" $O/$label.log)
  echo "$label: forward $fw | 50-50 $f50 | $acc | $((SECONDS-t0)) s"
}
OLD="PI0_LT_PART=off PI0_WGEMM_SPLITS_PART=pow2"
run new1 X=1 | tee -a $O/sum.txt
run old1 $OLD | tee -a $O/sum.txt
run new2 X=1 | tee -a $O/sum.txt

run new3 X=1 | tee -a $O/sum.txt
grep -A12 "six-way" $O/new1.log | tail -11
echo; cat $O/sum.txt
cp $O/sum.txt $O/new1.log $O/new3.log $O/t_part.log ${OUT:-/tmp}/ 2>/dev/null
