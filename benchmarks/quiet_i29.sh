#!/usr/bin/env bash
# Issue 29's "Must show", measured in one go on a quiet machine (nothing else running: pause
# any study first). About 30 minutes on the 2-core development machine. In order:
#
#   1. cli.txt        bench_cli.py: paper code vs the enface CLI side by side (training step
#                     and predict, plain / fast float32 / fast bf16, peak RSS)       ~10 min
#   2. speed.txt      bench_speed.py --models fpn lachinov: plain vs fast, training step and
#                     inference, FLOPs and GFLOP/s per row, the machine's peaks     ~6 min
#   3. cohort.txt     bench_cohort.py: scans per hour with 1 worker (without and with overlap)
#                     and 2 workers, and the share of each stage, on .vol exports ~10 min
#   4. precision-*.txt bench_precision.py: the bf16 agreement table (Dice, |dp|, area) on the
#                     phantom's and the Spectralis-sized phantom's test scans        ~4 min
#
#   bash benchmarks/quiet_i29.sh OUTDIR
#
# Runs in the repository root (uses its .venv/bin/python). Reduced to fit ~30 minutes: bench_speed with
# 2 timed training steps and 1 timed forward after a warm-up (the defaults are 3 and 2), the
# cohort 24 scans (fewer undercount it: each setting pays its process start once; the
# exports take ~5 min to write the first time), the Spectralis-sized agreement on its test
# split (8 scans; the table in
# docs/speed.md has all 20 scans of that dataset). Optional environment:
#   REF_CODE   the paper code (default: exported from the local mirror of j-morano/multimodal-ssl-fpn)
#   PHANTOM_RUN, PHANTOM_DATA   run and dataset of the phantom agreement row
#   SPEC_RUN, SPEC_DATA         run and dataset of the Spectralis-sized agreement row
#   COHORT_EXPORTS              where the .vol exports are written once (default /tmp/enface-cohort-exports)
# A step whose inputs are missing is reported as skipped; the others still run.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/quiet_i29.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."  # the repository root
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
MIRROR=/work/.mirror/j-morano+multimodal-ssl-fpn/repo
PHANTOM_RUN=${PHANTOM_RUN:-/tmp/i29/runs/phantom-demo-ga/ga/fpn-w0.25/scratch/frac-100/seed-0}
PHANTOM_DATA=${PHANTOM_DATA:-/tmp/i29/phantom-study}
SPEC_RUN=${SPEC_RUN:-/tmp/i29/runs/phantom-spectralis-ga/ga/fpn-w0.25/scratch/frac-100/seed-0}
SPEC_DATA=${SPEC_DATA:-/tmp/i29/spec}
EXPORTS=${COHORT_EXPORTS:-/tmp/enface-cohort-exports}

if [[ -z "${REF_CODE:-}" && -d "$MIRROR" ]]; then
    REF_CODE="$OUT/paper-code"
    mkdir -p "$REF_CODE" && git -C "$MIRROR" archive HEAD | tar -x -C "$REF_CODE"
fi
export REF_CODE=${REF_CODE:-}

step() {  # step NAME FILE COMMAND...: run, log to OUT/FILE, time it
    local name=$1 file=$2
    shift 2
    echo "== $name: $*" | tee "$OUT/$file"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$file"
    echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$OUT/$file"
}

{
    date -u
    git log --oneline -1
    uptime
    "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import _machine as m; print(m.cpu_description())"
    echo "paper code: ${REF_CODE:-not found (set REF_CODE)}"
} 2>&1 | tee "$OUT/machine.txt"

step "paper code vs enface CLI" cli.txt "$PY" benchmarks/bench_cli.py --repeats 2

step "plain vs fast, FPN and LachinovNet" speed.txt \
    "$PY" benchmarks/bench_speed.py --models fpn lachinov --repeats 2 --infer-repeats 1 --timeout 600

step "a cohort end to end" cohort.txt \
    "$PY" benchmarks/bench_cohort.py --scans 24 --workers 2 --exports "$EXPORTS"

if [[ -d "$PHANTOM_RUN" && -d "$PHANTOM_DATA" ]]; then
    step "bf16 vs float32, phantom" precision-phantom.txt "$PY" benchmarks/bench_precision.py \
        "$PHANTOM_RUN" "$PHANTOM_DATA" --split test --top-k 3 --csv "$OUT/precision-phantom.csv"
else
    echo "skipped: bf16 agreement on the phantom (no $PHANTOM_RUN or $PHANTOM_DATA)" | tee "$OUT/precision-phantom.txt"
fi
if [[ -d "$SPEC_RUN" && -d "$SPEC_DATA" ]]; then
    step "bf16 vs float32, Spectralis-sized" precision-spectralis.txt "$PY" benchmarks/bench_precision.py \
        "$SPEC_RUN" "$SPEC_DATA" --split test --top-k 3 --csv "$OUT/precision-spectralis.csv"
else
    echo "skipped: bf16 agreement on Spectralis-sized scans (no $SPEC_RUN or $SPEC_DATA)" \
        | tee "$OUT/precision-spectralis.txt"
fi
echo "done: $OUT" | tee -a "$OUT/machine.txt"
