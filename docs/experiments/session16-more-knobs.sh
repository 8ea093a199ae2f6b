#!/usr/bin/env bash
# Session 16 call 2: cheap knobs on the 50-50 pair (placement, decoder L2 hint, PDL trigger) and
# the vision / LLM attention-side GEMM picks, one process per variant, defaults interleaved.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() { # label, env...
  local label=$1; shift
  local t0=$SECONDS
  timeout 80 env "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 ${SPL:-} > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7"/"$8" enc"$11}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" encsolo"$11" decsolo"$12" decload"$13}')
  local f48=$(grep -E "^\| sweep 48-52" $O/$label.log | awk -F'|' '{print " | 48-52 "$6"/"$7" "$8" encsolo"$11" decsolo"$12" decload"$13}')
  local force=$(grep -E "lt force|lt cluster" $O/$label.log | sort -u | sed 's/lt force //' | tr '\n' ' ')
  echo "$label | fw $fw | 50-50 $f50 $f48 | $((SECONDS-t0)) s | $force"
}
VQ="512,3456,1152"; VO="512,1152,1152"; V1="512,4304,1152"; V2="512,1152,4304"; LQ="532,2560,2048"; LO="532,2048,2048"; G="532,32768,2048"; D="532,2048,16384"
GL="PI0_GREEN_PAIR=groups-low"
V20="PI0_LT_PART=v20"
P="PI0_LT_PART=off PI0_LT_PICK=$G:1"
SPL="--splits 48-52" run def1 X=1 | tee -a $O/sum.txt
SPL="--splits 48-52" run cs56a PI0_LT_CLUSTER_SMS=68:56 | tee -a $O/sum.txt
SPL="--splits 48-52" run sms64a PI0_WGEMM_SMS_PART=64 | tee -a $O/sum.txt
SPL="--splits 48-52" run def2 X=1 | tee -a $O/sum.txt
SPL="--splits 48-52" run cs56b PI0_LT_CLUSTER_SMS=68:56 | tee -a $O/sum.txt
SPL="--splits 48-52" run cs64 PI0_LT_CLUSTER_SMS=68:64 | tee -a $O/sum.txt
SPL="--splits 48-52" run sms64b PI0_WGEMM_SMS_PART=64 | tee -a $O/sum.txt
run d499 $P PI0_LT_FORCE="$G:cluster=3;$D:tile=499,cluster=5" | tee -a $O/sum.txt
SPL="--splits 48-52" run def3 X=1 | tee -a $O/sum.txt
echo; cat $O/sum.txt
cp $O/def1.log $O/cs56a.log ${OUT:-/tmp}/ 2>/dev/null
