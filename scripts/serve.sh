#!/usr/bin/env bash
# The README's first command: installs, builds and serves the embedded default model named by
# configs/default.yaml (CPU when no GPU is found, the GPU otherwise). Extra arguments go to `troupe serve`
# (e.g. --port 9000). Ctrl-C drains and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
exec "${BUILD_DIR:-build}"/cli/troupe serve --config configs/default.yaml "$@"
