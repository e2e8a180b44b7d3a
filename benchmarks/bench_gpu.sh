#!/usr/bin/env bash
# The GPU measurement of docs/speed.md ("On a GPU"), in one go, for a machine with an NVIDIA GPU:
# paper code vs enface (plain, fast float32, fast bf16), a training step and whole-volume
# inference, FPN and LachinovNet; then bf16 vs float32 masks of a trained run, if one is given.
#
#   bash benchmarks/bench_gpu.sh OUTDIR
#
# From the repository root, with the python that holds torch (PYTHON, default python3); enface
# is taken from src/ (no install). Optional:
#   REF_CODE=<export of github.com/j-morano/multimodal-ssl-fpn>   the paper code's FPN column
#   RUN=<segmentation run folder> DATA=<its dataset folder>       bf16 vs float32 agreement
# Everything it prints is also written to OUTDIR (gpu.txt, bench_speed.txt, bench_precision.txt).
# About 6 minutes on an H100; nothing is downloaded.
set -euo pipefail
OUT=${1:-gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), \
'bf16', torch.cuda.is_bf16_supported())"
    # what enface needs that this python lacks (carry them as wheels if anything is listed)
    "$PY" -c "import importlib.util as u; print('missing:', [m for m in ('lightning', 'scipy', 'yaml', 'tqdm', \
'PIL', 'matplotlib', 'skimage') if u.find_spec(m) is None] or 'nothing')"
} 2>&1 | tee "$OUT/gpu.txt"

"$PY" benchmarks/bench_speed.py --device cuda --models fpn lachinov --repeats 10 --infer-repeats 5 \
    --fast32 --timeout 300 2>&1 | tee "$OUT/bench_speed.txt"

if [[ -n "${RUN:-}" && -n "${DATA:-}" ]]; then
    "$PY" benchmarks/bench_precision.py "$RUN" "$DATA" --split test --device cuda \
        --csv "$OUT/bench_precision.csv" 2>&1 | tee "$OUT/bench_precision.txt"
fi
