#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lisa demo "$@"
