#!/usr/bin/env bash
# The evidence study of docs/results.md, in parts of at most ~2 h that resume each other.
#
#   scripts/evidence_study.sh 1    # first part: at most PART_HOURS (2) hours, then it stops
#   scripts/evidence_study.sh 2    # second part: the same studies, resumed where part 1 stopped
#
# What it runs: SmolLM2-135M, 3 seeds, 300 steps with the held-out loss every 50, cosine with a
# 10% warm-up, batch 1, at most 256 tokens, each variant at its rate tuned on the validation
# split at this length (0.5 and 1 times its method's base rate, on seed 0; seeds 1 and 2 at the
# chosen rate), on the maths problems and on the real-text set (--data pydoc): one
# `lisa study` per data set, the two side by side, one torch thread each (the machine has 2
# cores). A part is a time slice: it runs both studies until they finish or PART_HOURS pass,
# then interrupts them (Ctrl-C, so each removes its unfinished run); the next part runs the
# same commands, which keep every finished run and train the rest (docs/study.md, "Files and
# resumption"). Any part can be run again; a finished study trains nothing more.
#
# PLAN (docs/study.md, "Running the evidence study", has the measurements behind it):
#   A run (one torch thread, the two studies side by side, nothing else on the machine,
#   2026-12-02): 300 steps, the 6 curve points and the final and validation losses, 32 greedy
#   maths answers, loading the weights: LISA gamma 2 took 650 s on the maths problems
#   (1.97 s a step, the curve's scoring included) and 730 s on the Python docs (2.31 s).
#   4 runs per variant and data set, so a variant costs ~45 min of one core per data set, and
#   the kept grid of 3 variants (LISA gamma 2 with today's defaults, the reference of the
#   paired differences; LISA gamma 4; LoRA r8, the alternative) is 12 runs per study: about
#   2 h 10 min (maths) and 2 h 25 min (pydoc) on its core, so two parts.
#   Batch 1, not the earlier studies' 4: at batch 4 (4.9 s a step) the same 2 parts hold only
#   LISA and LoRA. Cut (about 45 min of each core each): FT, LoRA r32 (a second study: one
#   --lora-rank per study), LISA with per-group rates (--eh-lr-factors 1,0.25), badam and
#   owlore. A variant added later changes the study's settings, so it goes into a new --out.
#
# Environment:
#   EVIDENCE_OUT     where the studies go (default evidence/): OUT/math, OUT/pydoc, OUT/logs
#   PART_HOURS       the length of a part (default 2)
#   EVIDENCE_MODEL   the model (default smollm2-135m)
#   EVIDENCE_DRY=1   a check that `lisa study` takes every option here: 2 steps, 1 seed, one
#                    rate, a few examples, into OUT=/tmp/evidence-dry unless EVIDENCE_OUT is set
#                    (owlore needs a model of >= 5 blocks: SmolLM2 or a saved tiny one)
#   EVIDENCE_GRID    kept (default, PLAN: LISA gamma 2 and 4, LoRA r8), full (FT, LoRA r8,
#                    LISA, LISA per-group rates, gamma 4, badam, owlore) or ehlr (LISA with the
#                    embedding and head at 0.25 times the rate, into OUT/math-ehlr, OUT/pydoc-ehlr)
#   EVIDENCE_PRINT=1 print the two commands, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."

part="${1:-}"
if [[ "$part" != 1 && "$part" != 2 ]]; then
    echo "evidence_study.sh: give the part, 1 or 2 (each runs at most PART_HOURS=${PART_HOURS:-2} h; 2 resumes 1)" >&2
    exit 2
fi
lisa="${LISA:-.venv/bin/lisa}"
model="${EVIDENCE_MODEL:-smollm2-135m}"

# The grid (see PLAN): the variants kept within ~2 h 30 min on 2 cores, or EVIDENCE_GRID=full
# for every variant one study can hold (all but LoRA r32; about 6 h on 2 cores).
suffix=""
case "${EVIDENCE_GRID:-kept}" in
    kept) methods="lisa,lora"; gammas="2,4"; presets=""; eh_lr_factors=""
          lr_base="lisa=4e-4,lora=1e-3" ;;
    full) methods="ft,lora,lisa"; gammas="2,4"; presets="badam,owlore"; eh_lr_factors="1,0.25"
          lr_base="lisa=4e-4,lora=1e-3,ft=5e-5" ;;
    # One variant cut from the kept grid, run after it into OUT/DATA-ehlr: uniform LISA gamma 2
    # with the embedding and head at 0.25 times the blocks' rate. Its seeds see the same data
    # order, starting weights and block draws as the kept grid's, so the report pairs them.
    ehlr) methods="lisa"; gammas="2"; presets=""; eh_lr_factors="0.25"; suffix="-ehlr"
          lr_base="lisa=4e-4" ;;
    *) echo "evidence_study.sh: EVIDENCE_GRID=${EVIDENCE_GRID} is not kept, full or ehlr" >&2; exit 2 ;;
esac
# Every run: the schedule, the length, the curve, the rate sweep (tuned on seed 0). The sweep's
# base rates are the defaults the study was run at (LISA 4e-4 then; the study chose 2e-4, today's
# default), so these commands reproduce it and resume it rather than start another sweep.
common=(--model "$model" --methods "$methods" --gammas "$gammas"
        --lr-scheduler cosine --warmup-ratio 0.1 --batch-size 1 --max-length 256
        --tune-seeds 1 --threads 1 --lr-base "$lr_base")
if [[ ",$methods," == *,lora,* ]]; then
    common+=(--lora-rank 8)
fi
if [[ -n "$presets" ]]; then
    common+=(--presets "$presets")
fi
if [[ -n "$eh_lr_factors" ]]; then
    common+=(--eh-lr-factors "$eh_lr_factors")
fi
if [[ "${EVIDENCE_DRY:-0}" == 1 ]]; then
    out="${EVIDENCE_OUT:-/tmp/evidence-dry}"
    common+=(--seeds 1 --steps 2 --eval-every 1 --lr-factors 1 --train-examples 16
             --val-examples 4 --test-examples 4 --max-new-tokens 8)
    accuracy=2
else
    out="${EVIDENCE_OUT:-evidence}"
    common+=(--seeds 3 --steps 300 --eval-every 50 --lr-factors 0.5,1 --train-examples 1000
             --val-examples 16 --test-examples 32 --max-new-tokens 96)
    accuracy=32
fi
math=("$lisa" study "${common[@]}" --data math --accuracy-examples "$accuracy" --out "$out/math$suffix")
# The Python-docs pieces carry no answer to score: loss only.
pydoc=("$lisa" study "${common[@]}" --data pydoc --accuracy-examples 0 --out "$out/pydoc$suffix")

if [[ "${EVIDENCE_PRINT:-0}" == 1 ]]; then
    printf '%q ' "${math[@]}"; echo
    printf '%q ' "${pydoc[@]}"; echo
    exit 0
fi

mkdir -p "$out/logs"
seconds=$(python3 -c "print(int(float('${PART_HOURS:-2}') * 3600))")
# Job control: the background studies then keep SIGINT (a non-interactive shell would make them
# ignore it), so timeout's Ctrl-C reaches Python and each study removes its unfinished run.
set -m
echo "part $part: both studies for at most $seconds s; logs in $out/logs"
timeout --signal=INT --kill-after=300 "$seconds" "${math[@]}" >>"$out/logs/math$suffix.log" 2>&1 &
math_pid=$!
timeout --signal=INT --kill-after=300 "$seconds" "${pydoc[@]}" >>"$out/logs/pydoc$suffix.log" 2>&1 &
pydoc_pid=$!
trap 'kill -INT "$math_pid" "$pydoc_pid" 2>/dev/null || true' INT TERM
status=0
for name in math pydoc; do
    pid_var="${name}_pid"
    if wait "${!pid_var}"; then
        echo "$name: finished (summary in $out/$name$suffix/summary.csv)"
    else
        code=$?
        if [[ $code == 124 || $code == 130 ]]; then
            echo "$name: stopped after $seconds s; run the next part (or this one again) to resume"
        else
            echo "$name: failed with exit $code; see $out/logs/$name$suffix.log" >&2
            status=1
        fi
    fi
    tail -n 3 "$out/logs/$name$suffix.log"
done
exit $status
