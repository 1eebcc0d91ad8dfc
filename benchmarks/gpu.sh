#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, one command: the whole test suite there (the real cuDNN kernel's parity
# tests run instead of skipping), then the accelerator benchmark grid. Writes into benchmarks/results/:
#   gpu-<device>-tests.txt   the pytest log
#   gpu-<device>.json / .md  the grid: every lstm_jax backend (auto, cudnn, fused, scan u1/u4/u16, bfloat16 for
#                            the scan paths), Flax nn.RNN and PyTorch nn.LSTM (cuDNN), train and infer, 3 shapes
# Needs: pip install -e ".[dev]" and a CUDA jax (pip install -U "jax[cuda12]"); for the PyTorch peer on the GPU, a
# CUDA build of torch (the dev extra pins the CPU wheel). Extra arguments go to the benchmark (e.g. --shapes seed).
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys, jax
from lstm_jax import cudnn
reason = cudnn.unavailable_reason()
if reason is not None:
    sys.exit(f"benchmarks/gpu.sh: the cuDNN backend cannot run here: {reason}")
PY
device=$(python -c 'import jax, re; print(re.sub(r"[^a-z0-9]+", "-", jax.devices()[0].device_kind.lower()).strip("-"))')
results=benchmarks/results
mkdir -p "$results"
python -m pytest -q 2>&1 | tee "$results/gpu-$device-tests.txt"
python -m lstm_jax.sentiment.bench --accelerator --tag "gpu-$device" --out "$results" "$@"
