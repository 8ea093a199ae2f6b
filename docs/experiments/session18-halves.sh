#!/usr/bin/env bash
# Prepared in the seventeenth session, not yet run: is one half of the H100 (SMs 0-63, groups
# 0-7) faster for the decoder than the other (SMs 64-131)? partition-notes "Next measurements".
# At 48-52 the encoder is the smaller stage: groups-high puts it on the last groups, so the
# decoder gets groups 0-6; remainder-idle keeps the 12 left-over SMs out of both stages.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() { # label, env...
  local label=$1; shift
  timeout 60 env RUST_LOG=info "$@" $B/pi0-bench-partition --engine pi0 --iterations 40 --splits 48-52 > $O/$label.log 2>&1
  local f48=$(grep -E "^\| sweep 48-52" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" es"$11" ds"$12" dl"$13}')
  echo "$label | 48-52 $f48 | 50-50 $f50"
}
run second-half PI0_GREEN_PAIR=remainder-idle | tee -a $O/sum.txt
run first-half PI0_GREEN_PAIR=groups-high,remainder-idle | tee -a $O/sum.txt
run defaults X=1 | tee -a $O/sum.txt
run second-half2 PI0_GREEN_PAIR=remainder-idle | tee -a $O/sum.txt
run first-half2 PI0_GREEN_PAIR=groups-high,remainder-idle | tee -a $O/sum.txt
echo; cat $O/sum.txt
