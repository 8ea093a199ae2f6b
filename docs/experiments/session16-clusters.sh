#!/usr/bin/env bash
# Session 16 call 1: committed defaults checked (partition_gpu, gpu_golden), then the Gemma MLP
# GEMMs with larger thread-block clusters on partitions (less L2 operand traffic), one process each.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS; timeout 120 $B/partition_gpu --test-threads=1 > $O/t_part.log 2>&1; echo "partition_gpu: $(grep 'test result' $O/t_part.log) $((SECONDS-t0)) s"
t0=$SECONDS; timeout 90 $B/gpu_golden --test-threads=1 > $O/t_gold.log 2>&1; echo "gpu_golden: $(grep 'test result' $O/t_gold.log) $((SECONDS-t0)) s"
G="532,32768,2048"; D="532,2048,16384"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 80 env "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7"/"$8" enc"$11}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" encsolo"$11" decsolo"$12" decload"$13}')
  local acc=$(grep -oE "= [0-9.]+ × sequential" $O/$label.log | head -1)
  local force=$(grep -E "lt force" $O/$label.log | sort -u | sed 's/lt force //' | tr '\n' ' ')
  echo "$label | fw $fw | 50-50 $f50 | $acc | $((SECONDS-t0)) s | $force"
}
OFF="PI0_LT_PART=off"
run def1 X=1
run g22 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=6;$D:cluster=5"
run d22 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=3;$D:cluster=6"
run b22 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=6;$D:cluster=6"
run def2 X=1
run g42 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=7;$D:cluster=6"
run d24 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=6;$D:cluster=9"
run d42 $OFF PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=6;$D:cluster=7"
run g14 $OFF PI0_LT_FORCE="$G:cluster=8;$D:cluster=6"
run def3 X=1
grep -h "lt study" $O/g22.log | sort -u | head -12
grep -A12 "six-way" $O/def1.log | tail -11
cp $O/def1.log $O/b22.log $O/t_part.log $O/t_gold.log ${OUT:-/tmp}/ 2>/dev/null
