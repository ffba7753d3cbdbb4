#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite with the deterministic hypothesis profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
.venv/bin/python -m ruff check lisa diagnostics lisa_apps tests examples bench scripts
.venv/bin/python -m pytest -q "$@"
