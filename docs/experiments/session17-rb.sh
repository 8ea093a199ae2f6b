#!/usr/bin/env bash
# Session 17 call 2: remainderbench.cu (are the left-over SMs slower?), then the
# PI0_LT_CLUSTER_SMS targets on the 50-50 pair, one process per variant, defaults interleaved.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
export PATH="$PATH:/usr/local/cuda/bin"
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/rb docs/experiments/remainderbench.cu -lcuda 2>&1 | tail -5
timeout 120 /tmp/rb 2>&1 | tee ${OUT:-/tmp}/rb.txt
echo "remainderbench $((SECONDS-t0)) s"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 80 env "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13" so"$14}')
  echo "$label | fw $fw | 50-50 $f50 | $((SECONDS-t0)) s"
}
run def1 X=1 | tee -a $O/sum.txt
run cs56a PI0_LT_CLUSTER_SMS=68:56 | tee -a $O/sum.txt
run cs48a PI0_LT_CLUSTER_SMS=68:48 | tee -a $O/sum.txt
run def2 X=1 | tee -a $O/sum.txt
run cs56b PI0_LT_CLUSTER_SMS=68:56 | tee -a $O/sum.txt
run cs48b PI0_LT_CLUSTER_SMS=68:48 | tee -a $O/sum.txt
run def3 X=1 | tee -a $O/sum.txt
echo; cat $O/sum.txt
