#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and driver: list the GPUs with `aiinfn gpus --json` (pynvml)
# and compare what NVML reports (model by PCI id, memory, MIG support, MIG profiles with their
# maximum instance counts and compute slices) with aiinfn/catalogue.py. Exit 0 when they agree,
# 1 on any mismatch or when no GPU can be read. Changes nothing on the GPU (MIG mode included).
#
#   scripts/gpu-check.sh            # from the repository root, with the venv active or not
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "(nvidia-smi not found; NVML is asked directly)"
if ! "$PY" -m aiinfn gpus --json >"$out/gpus.json" 2>"$out/err"; then
    cat "$out/err" >&2
    echo "gpu-check: FAILED: aiinfn gpus could not read the GPUs" >&2
    exit 1
fi
"$PY" -m aiinfn gpus                         # human-readable listing and the pool snippet
"$PY" -m tools.gpus "$out/gpus.json"        # the comparison: prints MISMATCH lines, exit 1 on any
echo "gpu-check: OK"
