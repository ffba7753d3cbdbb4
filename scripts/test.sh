#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite with the deterministic hypothesis profile,
# then the numerics tests (pytest -m numerics: floats compared between two code paths) again under
# each other CPU kernel set torch can dispatch to here (ATEN_CPU_CAPABILITY), since each runs its
# sums in its own order. Arguments go to the first, whole-suite run. Exits non-zero if any run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
.venv/bin/python -m ruff check lisa diagnostics lisa_apps tests examples bench scripts
status=0
# Two workers (pytest-xdist), whole files per worker so module fixtures run once: the tests pin
# torch to one thread, so two cores run two files at once. LISA_TEST_WORKERS=0 runs serially.
.venv/bin/python -m pytest -q -n "${LISA_TEST_WORKERS:-2}" --dist loadfile "$@" || status=$?

# The kernel set the whole-suite run used: the caller's ATEN_CPU_CAPABILITY, else torch's pick.
used=$(.venv/bin/python -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
capabilities=(default avx2)
if grep -qw avx512f /proc/cpuinfo; then
  capabilities+=(avx512)
fi
# Only the files that hold numerics tests: collecting the whole suite costs most of a minute.
mapfile -t numerics_files < <(grep -rlE "pytest\.mark\.numerics" tests)
for capability in "${capabilities[@]}"; do
  if [ "$capability" = "$used" ]; then
    echo "numerics tests under ATEN_CPU_CAPABILITY=$capability: run above (the whole suite)"
    continue
  fi
  echo "numerics tests under ATEN_CPU_CAPABILITY=$capability"
  ATEN_CPU_CAPABILITY=$capability .venv/bin/python -m pytest -q -m numerics \
    -n "${LISA_TEST_WORKERS:-2}" --dist loadfile "${numerics_files[@]}" || status=$?
done
exit "$status"
