#!/usr/bin/env bash
# Session 19 call 2 (prepared, not run: no device time left): does the 50-50 frame depend on how the stages line up? One split per
# process, the encoder enqueued d µs after the decoder (PI0_STAGE_DELAY_US via --delay-sweep),
# up the list and back; three processes (each its own graph state), then one with the
# encoder enqueued first and the decoder delayed.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
B=.carry; O=${OUT:-/tmp/l}; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id --format=csv,noheader
D=0,20,50,100,200,400,800,1600
for r in 1 2; do
  t0=$SECONDS
  timeout 120 $B/pi0-bench-partition --engine pi0 --iterations 40 --delay-sweep $D > $O/d$r.log 2>&1
  echo "== run $r $((SECONDS-t0)) s"; grep -E "^\| [0-9]" $O/d$r.log | awk -F'|' '{printf "%s:%s ", $2, $3} END {print ""}'
done
timeout 120 env PI0_FWD_ENCODER_FIRST=1 $B/pi0-bench-partition --engine pi0 --iterations 40 --delay-sweep $D > $O/dfirst.log 2>&1
echo "== encoder first, decoder delayed"; grep -E "^\| [0-9]" $O/dfirst.log | awk -F'|' '{printf "%s:%s ", $2, $3} END {print ""}'
tail -3 $O/d1.log
