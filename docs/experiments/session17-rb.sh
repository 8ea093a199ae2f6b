#!/usr/bin/env bash
# Session 17 call 2: partition_gpu and gpu_golden; the encoder's whole-group cluster target
# (the new default) against PI0_LT_CLUSTER_GROUPS=off, one process per variant, interleaved;
# the acceptance run; remainderbench.cu (are the left-over SMs slower?) last.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
export PATH="$PATH:/usr/local/cuda/bin"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
timeout 60 $B/partition_gpu --test-threads 1 2>&1 | grep -E "test result"
timeout 120 $B/gpu_golden --test-threads 1 2>&1 | grep -E "test result"
echo "tests $((SECONDS-t0)) s"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 60 env RUST_LOG=pi0_mps::gpu::lt=debug "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13" so"$14}')
  local n=$(grep -c "lt cluster target" $O/$label.log)
  echo "$label | fw $fw | 50-50 $f50 | retargets $n | $((SECONDS-t0)) s"
}
run on1 X=1 | tee -a $O/sum.txt
run off1 PI0_LT_CLUSTER_GROUPS=off | tee -a $O/sum.txt
grep "lt cluster target" $O/on1.log | sed -E 's/.*lt cluster/lt cluster/' | sort | uniq -c
t0=$SECONDS
timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 60 --equivalence 200 --reconfig 30 > $O/accept.log 2>&1
grep -E "^acceptance|^streaming|^equivalence|^reconfig|^\| partitioned concurrent 50-50|^\| forward sequential \|" $O/accept.log | tail -8
echo "acceptance $((SECONDS-t0)) s"
run on2 X=1 | tee -a $O/sum.txt
run off2 PI0_LT_CLUSTER_GROUPS=off | tee -a $O/sum.txt
t0=$SECONDS
nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/rb docs/experiments/remainderbench.cu -lcuda 2>&1 | tail -5
timeout 60 /tmp/rb > $O/rb.txt 2>&1
echo "remainderbench $((SECONDS-t0)) s"
echo; cat $O/sum.txt; echo; tail -50 $O/rb.txt
