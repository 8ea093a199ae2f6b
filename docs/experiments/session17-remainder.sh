#!/usr/bin/env bash
# Session 17 call 1: where the 12 left-over SMs go (PI0_GREEN_PAIR=remainder-*), on the 50-50
# and 48-52 pairs, one process per variant, defaults interleaved; partition_gpu first.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS; timeout 120 $B/partition_gpu --test-threads 1 2>&1 | grep -E "^test |test result" ; echo "partition_gpu $((SECONDS-t0)) s"
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 80 env RUST_LOG=info "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 --splits 48-52 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13}')
  local f48=$(grep -E "^\| sweep 48-52" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13}')
  local sms=$(grep -oE "partition green (50-50|48-52): encoder [0-9]+ SMs, decoder [0-9]+ SMs" $O/$label.log | sort -u | sed -E 's/partition green //; s/ SMs//g; s/encoder //; s/decoder //' | tr '\n' ' ')
  echo "$label | fw $fw | 50-50 $f50 | 48-52 $f48 | $sms| $((SECONDS-t0)) s"
}
run def1 X=1 | tee -a $O/sum.txt
run idle1 PI0_GREEN_PAIR=remainder-idle | tee -a $O/sum.txt
run both1 PI0_GREEN_PAIR=remainder-both | tee -a $O/sum.txt
run small1 PI0_GREEN_PAIR=remainder-smaller | tee -a $O/sum.txt
run def2 X=1 | tee -a $O/sum.txt
run grid56 PI0_LT_CLUSTER_SMS=68:56 PI0_WGEMM_SMS_PART=56 | tee -a $O/sum.txt
run idle2 PI0_GREEN_PAIR=remainder-idle | tee -a $O/sum.txt
run both2 PI0_GREEN_PAIR=remainder-both | tee -a $O/sum.txt
run small2 PI0_GREEN_PAIR=remainder-smaller | tee -a $O/sum.txt
run def3 X=1 | tee -a $O/sum.txt
echo; cat $O/sum.txt
cp $O/def1.log $O/idle1.log $O/both1.log ${OUT:-/tmp}/ 2>/dev/null
