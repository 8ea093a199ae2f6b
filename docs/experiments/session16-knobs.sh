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
  timeout 80 env "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/$label.log | head -1 | awk -F'|' '{print $7"/"$8" enc"$11}')
  local f50=$(grep -E "^\| partitioned concurrent 50-50" $O/$label.log | awk -F'|' '{print $8" encsolo"$11" decsolo"$12" decload"$13}')
  local force=$(grep -E "lt force" $O/$label.log | sort -u | sed 's/lt force //' | tr '\n' ' ')
  echo "$label | fw $fw | 50-50 $f50 | $((SECONDS-t0)) s | $force"
}
VQ="512,3456,1152"; VO="512,1152,1152"; V1="512,4304,1152"; V2="512,1152,4304"; LQ="532,2560,2048"; LO="532,2048,2048"; G="532,32768,2048"; D="532,2048,16384"
GL="PI0_GREEN_PAIR=groups-low"
V20="PI0_LT_PART=v20"
timeout 60 $B/pi0_mps_lib gpu_narrow --test-threads=1 --nocapture > $O/t_narrow.log 2>&1; grep -E "cuBLASLt|test result" $O/t_narrow.log
timeout 120 $B/partition_gpu --test-threads=1 > $O/t_part.log 2>&1; echo "partition_gpu: $(grep 'test result' $O/t_part.log)"
timeout 90 $B/gpu_golden --test-threads=1 > $O/t_gold.log 2>&1; echo "gpu_golden: $(grep 'test result' $O/t_gold.log)"
run def1 X=1 | tee -a $O/sum.txt
run v20a $V20 | tee -a $O/sum.txt
run def2 X=1 | tee -a $O/sum.txt
run v20b $V20 | tee -a $O/sum.txt
run gl1 $GL PI0_LT_PICK="$VQ:0;$VO:0;$V1:0;$V2:0;$LQ:0;$LO:0" | tee -a $O/sum.txt
run dT3 PI0_LT_PART=off PI0_LT_PICK="$G:1" PI0_LT_FORCE="$G:cluster=3;$D:tile=499,cluster=3" | tee -a $O/sum.txt
run vp1 PI0_LT_PICK="$V1:1;$V2:1" | tee -a $O/sum.txt
run vc5 PI0_LT_FORCE="$V1:cluster=5;$V2:cluster=5" | tee -a $O/sum.txt
run def3 X=1 | tee -a $O/sum.txt
run v20c $V20 | tee -a $O/sum.txt
t0=$SECONDS; timeout 200 $B/pi0-bench-partition --engine pi0 --iterations 60 --equivalence 200 --reconfig 30 > $O/acc.log 2>&1; echo "acceptance run $((SECONDS-t0)) s rc $?"
grep -iE "equivalen|bitwise|reconfig|switch|dropped|frame period|recommended|× sequential|decoder while" $O/acc.log | head -20
grep -h "lt study" $O/gl1.log $O/vp1.log | sort -u
echo; cat $O/sum.txt
cp $O/acc.log $O/def1.log $O/gl1.log $O/t_narrow.log ${OUT:-/tmp}/ 2>/dev/null
