#!/usr/bin/env bash
# Session 21 call 1: partition_gpu (its keep-the-fastest-graphs test has not run on a GPU yet),
# the lockstep 50-50 frame per frame with the stages' GPU spans, the acceptance run, then the
# trace again on a pinned SCHED_FIFO host thread.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id,driver_version --format=csv,noheader
t0=$SECONDS
timeout 120 $B/partition_gpu --test-threads=1 > $O/pg.log 2>&1; echo "== partition_gpu rc=$? $((SECONDS-t0)) s"; grep -E "^test result|FAIL|panicked" $O/pg.log
t0=$SECONDS
timeout 100 $B/pi0-bench-partition --engine pi0 --frame-trace 160 > $O/tr1.log 2>&1
echo "== trace rc=$? $((SECONDS-t0)) s"; grep -E "^period|^streaming|native forward|^spans mean|rror" $O/tr1.log
t0=$SECONDS
timeout 200 $B/pi0-bench-partition --engine pi0 --iterations 60 --equivalence 200 --reconfig 30 > $O/acc.log 2>&1
echo "== acceptance rc=$? $((SECONDS-t0)) s"; grep -E "^acceptance|^streaming|equivalen|reconfig|switch" $O/acc.log | head -12
grep -E "^\| (forward|partitioned)" $O/acc.log | awk -F'|' '{print $2"|"$7"|"$8"|"$11"|"$12"|"$13"|"$14}'
t0=$SECONDS
timeout 100 taskset -c 4-7 chrt -f 20 $B/pi0-bench-partition --engine pi0 --frame-trace 160 > $O/tr2.log 2>&1
echo "== trace, taskset 4-7 + SCHED_FIFO rc=$? $((SECONDS-t0)) s"; grep -E "^period|^streaming|native forward|^spans mean|rror" $O/tr2.log
grep -A25 "^GPU spans" $O/tr1.log | tail -22
