#!/usr/bin/env bash
# Session 22 call 1: the fused gate|up + GELU·up kernel (kernels/gateup.cu, PI0_LLM_MLP=fused)
# on its first GPU: its f64 unit test, the three paths timed side by side at the real shape
# (`pi0-bench --gate-up-study`), the golden tests with it on, the forward's encoder with and
# without it, then the six-way's 50-50 frame alternated (default, fused, fused in clusters of
# 2, twice).
# Binaries in .carry/: pi0_mps (the lib's unit tests), gpu_golden, pi0-bench,
# pi0-bench-partition. Stop at the first failure: a wrong kernel has nothing to time.
set -uo pipefail
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
# Logs stay on the device (/tmp/l): only the printed lines come back.
B=.carry; O=/tmp/l; mkdir -p $O
nvidia-smi --query-gpu=name,pci.bus_id,driver_version --format=csv,noheader
t0=$SECONDS
timeout 120 $B/pi0_mps gpu_fused_gate_up --nocapture --test-threads=1 > $O/unit.log 2>&1; rc=$?
echo "== unit rc=$rc $((SECONDS-t0)) s"; grep -E "rel L2|test result|panicked|skipping" $O/unit.log
[ $rc = 0 ] || { tail -30 $O/unit.log; exit 1; }
t0=$SECONDS
# Every path side by side at the real shape (532 x 2048 -> 16384, every MLP layer's
# weights in turn): µs per layer, and h against cuBLASLt's (the unfused path also rounds gate
# and up to bf16: a few 1e-3 expected).
timeout 120 $B/pi0-bench --iterations 20 --gate-up-study 20 --configs 2x20x50,1x20x50 > $O/study.log 2>&1
echo "== gate-up study rc=$? $((SECONDS-t0)) s"; grep -E "^\| [0-9]x|rror" $O/study.log
t0=$SECONDS
PI0_LLM_MLP=fused timeout 120 $B/gpu_golden --nocapture --test-threads=1 > $O/golden.log 2>&1; rc=$?
echo "== golden (fused) rc=$rc $((SECONDS-t0)) s"; grep -E "rel|test result|panicked" $O/golden.log | tail -8
[ $rc = 0 ] || { tail -30 $O/golden.log; exit 1; }
# fused: the CTA shape that pads 532 rows least (192 x 64; the study above times the others).
for v in cublaslt fused cublaslt fused; do
  PI0_LLM_MLP=$v timeout 90 $B/pi0-bench --iterations 150 > $O/fw_$v.log 2>&1
  echo "== forward $v rc=$?"; grep -E "^\| 2 \| 20 \| 50 " $O/fw_$v.log | head -2
done
# fused_c2: the 192 x 64 shape in clusters of 2 sharing X by multicast.
for v in cublaslt fused fused_c2 cublaslt fused fused_c2; do
  env PI0_LLM_MLP=${v%_c2} $([ $v = fused_c2 ] && echo PI0_GATEUP_CLUSTER=2) \
    timeout 120 $B/pi0-bench-partition --engine pi0 --iterations 60 > $O/p_$v.log 2>&1
  echo "== six-way $v rc=$?"; grep -E "^acceptance|^streaming" $O/p_$v.log
  grep -E "^\| (forward sequential|partitioned concurrent 50-50)" $O/p_$v.log | awk -F'|' '{print $2"|"$7"|"$8"|"$11"|"$12"|"$13"|"$14}'
done
