# shellcheck shell=bash
# The NVRTC library without a CUDA install: the nvidia-cuda-nvrtc wheel from PyPI, unpacked at
# .nvrtc/, so that tests/kernels_compile.rs compiles every CUDA source on a CPU-only machine
# (NVRTC needs no GPU or driver). Pinned to CUDA 13.0, the device machine's toolkit.
#
#   source scripts/nvrtc-env.sh    # set up (idempotent) and put the library on LD_LIBRARY_PATH
#
# Needs python3 with pip and network to PyPI on the first run; without them it warns and the
# compile test skips with its reason.

_pi0_nvrtc_env() {
    local root dir want stamp lib
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    dir="$root/.nvrtc"
    want="nvidia-cuda-nvrtc==13.0.88"
    stamp="$dir/.pi0-nvrtc-env"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        rm -rf "$dir"
        if ! python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --target "$dir" "$want"; then
            echo "nvrtc-env: could not install $want; the kernel compile test will skip" >&2
            return 0
        fi
        echo "$want" > "$stamp"
    fi
    lib="$dir/nvidia/cu13/lib"
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
_pi0_nvrtc_env
unset -f _pi0_nvrtc_env
