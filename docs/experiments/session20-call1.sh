#!/usr/bin/env bash
# Session 20 call 1: what the 50-50 frame's state follows. (A) re-made splits, each with its
# graphs recaptured three times; (B) stage-delay sweeps both orders; (C) the forward's encoder /
# decoder with its graphs recaptured (no-op lt-sweep).
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id,clocks.sm --format=csv,noheader
for r in 1 2; do
t0=$SECONDS
timeout 150 $B/pi0-bench-partition --engine pi0 --iterations 60 --graph-candidates 4 > $O/gc$r.log 2>&1
echo "== D$r graph candidates $((SECONDS-t0)) s"; grep -E "^graph candidates|^acceptance" $O/gc$r.log
grep -E "^\| (forward|partitioned)" $O/gc$r.log | awk -F'|' '{print $2"|"$7"|"$8"|"$11"|"$12"|"$13}'
done
t0=$SECONDS
PI0_SWEEP_RECAPTURES=3 timeout 170 $B/pi0-bench-partition --engine pi0 --iterations 30 --lt-sweep 1,1,1 --lt-candidates 5 > $O/noop.log 2>&1
echo "== A $((SECONDS-t0)) s"; grep -E "^\| (default|1,1,1)" $O/noop.log | awk -F'|' '{print $2"|"$3"|"$4"|"$5"|"$6"|"$7}'
D=0,25,50,100,200,400,800,1600
t0=$SECONDS
timeout 120 $B/pi0-bench-partition --engine pi0 --iterations 40 --delay-sweep $D > $O/d1.log 2>&1
echo "== B dec first $((SECONDS-t0)) s"; grep -E "^\| [0-9]" $O/d1.log | awk -F'|' '{printf "%s:%s ", $2, $3} END {print ""}'
t0=$SECONDS
PI0_FWD_ENCODER_FIRST=1 timeout 120 $B/pi0-bench-partition --engine pi0 --iterations 40 --delay-sweep $D > $O/d2.log 2>&1
echo "== B enc first $((SECONDS-t0)) s"; grep -E "^\| [0-9]" $O/d2.log | awk -F'|' '{printf "%s:%s ", $2, $3} END {print ""}'
t0=$SECONDS
timeout 120 $B/pi0-bench --iterations 30 --lt-sweep 1,1,1 --lt-candidates 6 > $O/fwd.log 2>&1
echo "== C $((SECONDS-t0)) s"; grep -E "^\| 1,1,1|forward|median" $O/fwd.log | head -12
tail -2 $O/d1.log
