#!/usr/bin/env bash
# Configures and builds troupe into build/ (Release). CUDA parts are built when nvcc is found
# (override with TROUPE_CUDA=ON|OFF|AUTO in the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DTROUPE_CUDA="${TROUPE_CUDA:-AUTO}" \
    -DTROUPE_WERROR=ON
fi
cmake --build "$BUILD_DIR" -j"$(nproc)"
