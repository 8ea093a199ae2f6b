#!/usr/bin/env bash
# Session 18 call 1: partition_gpu + gpu_golden (first GPU run of ff0aa1b), then the halves
# study (session18-halves.sh) plus groups-high at 48-52 with the left-over SMs on the decoder
# (decoder groups 0-6 + 12 = 68 SMs, encoder groups 7-14 = 64): is the decoder's loss on
# 7 groups + 12 the second half's, not the left-over SMs'? Alternated with the new upload
# stream (observations copied off the encoder's stream) against PI0_UPLOAD_STREAM=off. Then the
# acceptance run.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
timeout 60 $B/partition_gpu --test-threads 1 2>&1 | grep -E "test result|FAILED|panicked" | head -5
timeout 120 $B/gpu_golden --test-threads 1 2>&1 | grep -E "test result|FAILED|panicked" | head -5
echo "tests $((SECONDS-t0)) s"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 60 env RUST_LOG=info "$@" $B/pi0-bench-partition --engine pi0 --iterations 40 --splits 48-52 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7}')
  local f48=$(grep -E "^\| sweep 48-52" $O/$label.log | awk -F'|' '{print $5"/"$6" fr"$8" es"$11" ds"$12" dl"$13}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $5"/"$6" fr"$8" es"$11" ds"$12" dl"$13" so"$14}')
  echo "$label | fw $fw | 48-52 $f48 | 50-50 $f50 | $((SECONDS-t0)) s"
}
run defaults X=1 | tee -a $O/sum.txt
run upload-off PI0_UPLOAD_STREAM=off | tee -a $O/sum.txt
run first-half PI0_GREEN_PAIR=groups-high,remainder-idle | tee -a $O/sum.txt
run high PI0_GREEN_PAIR=groups-high | tee -a $O/sum.txt
run defaults2 X=1 | tee -a $O/sum.txt
run upload-off2 PI0_UPLOAD_STREAM=off | tee -a $O/sum.txt
run high2 PI0_GREEN_PAIR=groups-high | tee -a $O/sum.txt
t0=$SECONDS
timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 60 --equivalence 200 --reconfig 30 > $O/accept.log 2>&1
grep -E "^acceptance|^streaming|^equivalence|^reconfig|^\| partitioned concurrent 50-50|^\| forward sequential \|" $O/accept.log | tail -8
echo "acceptance $((SECONDS-t0)) s"
echo; cat $O/sum.txt
# Call 2 (same machine, still warm), as run:
#   B=.carry; O=$OUT; timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 60 \
#     --equivalence 200 --reconfig 30 > $O/accept2.log 2>&1
#   for v in on off on off; do [ $v = off ] && E=PI0_UPLOAD_STREAM=off || E=X=1
#     env $E $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/ab-$v.log 2>&1; done
