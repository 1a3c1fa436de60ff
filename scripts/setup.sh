#!/usr/bin/env bash
# Installs defkv's build dependencies (Debian 12 packages), configures and
# builds an optimised release into ./build. Safe to run again.
#   DEFKV_SKIP_APT=1  skip the apt-get step (dependencies already present)
#   DEFKV_BUILD_DIR   build directory (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  g++ meson ninja-build pkg-config
  libomp-dev libxsimd-dev libdnnl-dev catch2 libcli11-dev nlohmann-json3-dev
  gnuplot-nox
  g++-aarch64-linux-gnu qemu-user
)

if [[ "${DEFKV_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

BUILD_DIR="${DEFKV_BUILD_DIR:-build}"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  meson setup "$BUILD_DIR" --buildtype=release >/dev/null
fi
if ! ninja -C "$BUILD_DIR" >"$BUILD_DIR/setup-build.log" 2>&1; then
  tail -50 "$BUILD_DIR/setup-build.log" >&2
  echo "setup: build failed (full log: $BUILD_DIR/setup-build.log)" >&2
  exit 1
fi
echo "setup: built $BUILD_DIR/tools/defkv" >&2
