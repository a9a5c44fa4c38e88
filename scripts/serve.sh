#!/usr/bin/env bash
# The README's first command: installs, builds and runs the embedded default model named by
# configs/default.yaml. Until the HTTP gateway lands this runs one generation on it (CPU engine).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
CONFIG="${1:-configs/default.yaml}"
MODEL=$(sed -n 's/^model:[[:space:]]*//p' "$CONFIG" | head -n1 | tr -d '"')
PROMPT="${PROMPT:-Once upon a time}"
echo "troupe: model $MODEL (from $CONFIG), prompt: $PROMPT" >&2
exec "${BUILD_DIR:-build}"/cli/troupe generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 32 --temperature 0
