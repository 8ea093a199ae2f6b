# shellcheck shell=bash
# ROS 2 Jazzy without a ROS install: a Python venv at .ros/ holding the PyPI Jazzy wheels
# (rcl, rclpy, Fast DDS, the message packages) is a valid ament prefix that r2r builds against
# and that rclpy test peers run from. See docs/ros.md.
#
#   source scripts/ros-env.sh      # set up (idempotent) and export the environment
#   bash scripts/ros-env.sh        # set up and print the `export` lines
#
# Exports AMENT_PREFIX_PATH, ROS_DISTRO, IDL_PACKAGE_FILTER, LD_LIBRARY_PATH, RUSTFLAGS and
# PI0_ROS_PYTHON (the venv's python), CARGO_TARGET_DIR (target/ros). Three quirks of the wheel set are handled here:
#   1. r2r links -lrmw_implementation, the wheels ship only librmw_fastrtps_cpp.so: a symlink
#      shim .ros/shim/librmw_implementation.so -> librmw_fastrtps_cpp.so is put on the link path.
#   2. librcl.so needs librcl_interfaces__rosidl_generator_py.so, which needs libpython's data
#      symbols: the node links libpython3.11 (--no-as-needed).
#   3. Transitive libraries are found through LD_LIBRARY_PATH (build time too: r2r's build
#      scripts load the message libraries), as "sourcing ROS" would do.
# Needs: python3.11 with venv + pip, network to PyPI (first run only), libclang (apt-get
# install libclang-dev, done here when missing and running as root).

_pi0_ros_env() {
    local root venv py stamp want pylib soname libs
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.ros"
    py="${PI0_PYTHON:-python3}"
    # Bump when the package list changes: the venv is then topped up.
    want="v2 ros-jazzy-rclpy[fastrtps]==7.1.6 ros-jazzy-sensor-msgs==5.3.6 ros-jazzy-std-msgs==5.3.6 \
ros-jazzy-rcl-interfaces==2.0.3 ros-jazzy-builtin-interfaces==2.0.3 ros-jazzy-geometry-msgs==5.3.6 \
ros-jazzy-trajectory-msgs==5.3.6 ros-jazzy-diagnostic-msgs==5.3.6 rosbags==0.11.9 mcap-ros2-support \
numpy pytest"
    stamp="$venv/.pi0-ros-env"

    if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
        echo "ros-env: the PyPI Jazzy wheels are cp311: need python3.11 (set PI0_PYTHON)" >&2
        return 1
    fi

    # libclang for r2r's bindgen.
    if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 \
        && [ -z "${LIBCLANG_PATH:-}" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "ros-env: installing libclang-dev (bindgen needs libclang)" >&2
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev) >&2 \
                || { echo "ros-env: apt-get install libclang-dev failed" >&2; return 1; }
        else
            echo "ros-env: libclang not found: install libclang-dev (or set LIBCLANG_PATH)" >&2
            return 1
        fi
    fi

    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "ros-env: creating $venv with the ROS 2 Jazzy wheels (about 60 MB, first run only)" >&2
        if [ ! -x "$venv/bin/python" ] && ! "$py" -m venv "$venv" >&2; then
            # Debian's python3 needs python3-venv (ensurepip) for this.
            rm -rf "$venv"
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                echo "ros-env: installing python3-venv" >&2
                (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv) >&2 \
                    && "$py" -m venv "$venv" >&2 || return 1
            else
                echo "ros-env: '$py -m venv' failed (install python3-venv)" >&2
                return 1
            fi
        fi
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install -q --disable-pip-version-check ${want#v2 } >&2 || {
            echo "ros-env: pip install failed" >&2
            return 1
        }
        echo "$want" >"$stamp"
    fi
    if [ ! -f "$venv/lib/librcl.so" ] || [ ! -f "$venv/lib/librmw_fastrtps_cpp.so" ]; then
        echo "ros-env: $venv is not an ament prefix (no lib/librcl.so); remove it and retry" >&2
        return 1
    fi
    mkdir -p "$venv/shim"
    ln -sf "$venv/lib/librmw_fastrtps_cpp.so" "$venv/shim/librmw_implementation.so"

    # libpython: link by soname so that no -dev symlink is needed.
    pylib="$("$venv/bin/python" -c 'import sysconfig as s; print(s.get_config_var("LIBDIR"))')"
    soname="$("$venv/bin/python" -c 'import sysconfig as s; print(s.get_config_var("INSTSONAME") or "libpython3.11.so.1.0")')"
    if [ ! -e "$pylib/$soname" ]; then
        for d in /usr/lib/x86_64-linux-gnu /usr/lib /usr/local/lib; do
            if [ -e "$d/$soname" ]; then pylib="$d"; break; fi
        done
    fi
    if [ ! -e "$pylib/$soname" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "ros-env: installing libpython3.11 ($soname not found)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpython3.11) >&2 || true
        [ -e /usr/lib/x86_64-linux-gnu/$soname ] && pylib=/usr/lib/x86_64-linux-gnu
    fi
    if [ ! -e "$pylib/$soname" ]; then
        echo "ros-env: $soname not found (apt-get install libpython3.11)" >&2
        return 1
    fi
    libs="$(ls -d "$venv"/lib/python3.11/site-packages/ros_*.libs 2>/dev/null | paste -sd: - || true)"

    export AMENT_PREFIX_PATH="$venv"
    export ROS_DISTRO=jazzy
    export IDL_PACKAGE_FILTER="std_msgs;sensor_msgs;geometry_msgs;trajectory_msgs;diagnostic_msgs;builtin_interfaces;rcl_interfaces"
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$venv/lib:"*) ;;
        *) export LD_LIBRARY_PATH="$venv/lib${libs:+:$libs}:$pylib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    export RUSTFLAGS="-L $venv/shim -L $pylib -C link-arg=-Wl,--no-as-needed -C link-arg=-l:$soname"
    export PI0_ROS_PYTHON="$venv/bin/python"
    export PI0_ROS_VENV="$venv"
    # A target dir of its own: RUSTFLAGS differ from a plain build's, and sharing target/ would
    # make the two rebuild each other's dependencies.
    export CARGO_TARGET_DIR="${PI0_ROS_TARGET_DIR:-$root/target/ros}"
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _pi0_ros_env
    for v in AMENT_PREFIX_PATH ROS_DISTRO IDL_PACKAGE_FILTER LD_LIBRARY_PATH RUSTFLAGS PI0_ROS_PYTHON PI0_ROS_VENV CARGO_TARGET_DIR; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
else
    _pi0_ros_env
fi
