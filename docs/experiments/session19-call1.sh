#!/usr/bin/env bash
# Session 19 call 1 (asked for an H200, ran on the H100 at PCI 00:06.0): partition_gpu and
# gpu_golden (first GPU run of 3b317b0), the acceptance run with nvidia-smi sampling clocks,
# power and throttle reasons, then two six-ways with PI0_BENCH_RECAPTURE=1 (defaults and
# CUDA_MODULE_LOADING=EAGER). Copy to .carry/ next to the release binaries and run there.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader
t0=$SECONDS
timeout 90 $B/partition_gpu --test-threads 1 2>&1 | grep -E "test result|FAILED|panicked" | head -5
timeout 120 $B/gpu_golden --test-threads 1 2>&1 | grep -E "test result|FAILED|panicked" | head -5
echo "tests $((SECONDS-t0)) s"
nvidia-smi -q -d POWER,CLOCK | grep -E "Power Limit|Max Clocks|SM  |Memory  " | head -12
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,temperature.memory,clocks_event_reasons.active --format=csv,noheader,nounits -lms 100 > $O/smi.csv 2>&1 &
SMI=$!
t0=$SECONDS
timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 60 --equivalence 200 --reconfig 30 > $O/accept.log 2>&1
grep -E "^acceptance|^streaming|^equivalence|^reconfig|^\| partitioned concurrent 50-50|^\| forward sequential \|" $O/accept.log | tail -8
echo "acceptance $((SECONDS-t0)) s"
kill $SMI
awk -F', ' '$4>250 {n++; c[$2]++; if($4>pm)pm=$4; if($5>tm)tm=$5; r[$7]++} END {print "busy samples",n,"max W",pm,"max C",tm; for(k in c) print " sm MHz",k,c[k]; for(k in r) print " reasons",k,r[k]}' $O/smi.csv
rc() { # label, env...
  local label=$1; shift; local t0=$SECONDS
  timeout 90 env PI0_BENCH_RECAPTURE=1 "$@" $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/rc-$label.log 2>&1
  local fw=$(grep -E "^\| forward sequential \|" $O/rc-$label.log | head -1 | awk -F'|' '{print $7}')
  echo "== recapture six-way $label $((SECONDS-t0)) s, forward p50 $fw"; grep -E "^recapture" $O/rc-$label.log
}
rc one X=1
rc eager CUDA_MODULE_LOADING=EAGER
# Follow-up calls on the same warm machine, as run (B=.carry, LD_LIBRARY_PATH as above):
#   for v in a b a b; do [ $v = b ] && E="PI0_GREEN_PAIR=groups-low PI0_WGEMM_SPLITS_PART=balanced" || E=X=1
#     env $E $B/pi0-bench-partition --engine pi0 --iterations 60 > $OUT/k-$v.log 2>&1; done
#   for v in a b; do [ $v = b ] && E=PI0_GREEN_PAIR=groups-low || E=X=1
#     env $E PI0_SWEEP_RECAPTURES=0 $B/pi0-bench-partition --engine pi0 --iterations 20 \
#       --lt-sweep 1,1,1 --lt-candidates 1 > $OUT/p-$v.log 2>&1; done
#   for v in b a b a; do [ $v = b ] && E=PI0_GREEN_PAIR=groups-low || E=X=1
#     env $E $B/pi0-bench-partition --engine pi0 --iterations 60 > $OUT/k-$v.log 2>&1; done
