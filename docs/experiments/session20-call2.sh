#!/usr/bin/env bash
# Session 20 call 2: where the lockstep 50-50 frame's tail comes from (per-frame trace, even /
# odd slots, first / second half, streaming on the same split), two processes; then a six-way.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id --format=csv,noheader
for r in 1 2; do
  t0=$SECONDS
  timeout 100 $B/pi0-bench-partition --engine pi0 --frame-trace 160 > $O/tr$r.log 2>&1
  echo "== trace $r $((SECONDS-t0)) s"; grep -E "^period|^streaming|native forward" $O/tr$r.log
done
t0=$SECONDS
timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 100 > $O/sw.log 2>&1
echo "== six-way $((SECONDS-t0)) s"; grep -E "^acceptance|^streaming" $O/sw.log
grep -E "^\| (forward|partitioned)" $O/sw.log | awk -F'|' '{print $2"|"$7"|"$8"|"$11"|"$12"|"$13"|"$14}'
sed -n '/pass 0/,/^period/p' $O/tr1.log
