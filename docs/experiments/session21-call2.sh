#!/usr/bin/env bash
# Session 21, last call with little device time left: partition_gpu, then the traced frame.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id,driver_version --format=csv,noheader
t0=$SECONDS
timeout 90 $B/partition_gpu --test-threads=1 > $O/pg.log 2>&1; echo "== partition_gpu rc=$? $((SECONDS-t0)) s"; grep -E "^test result|FAIL|panicked" $O/pg.log
t0=$SECONDS
timeout 80 $B/pi0-bench-partition --engine pi0 --frame-trace 120 > $O/tr1.log 2>&1
echo "== trace rc=$? $((SECONDS-t0)) s"; grep -E "^period|^streaming|native forward|^spans mean|rror" $O/tr1.log
grep -A25 "^GPU spans" $O/tr1.log | tail -22
