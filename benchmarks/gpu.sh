#!/usr/bin/env bash
# The GPU proof in one offline command (the GPU machine reaches no package registry):
#   bash benchmarks/gpu.sh OUT               on a machine with an NVIDIA GPU: tests, grid, job -> OUT (6 files)
#   bash benchmarks/gpu.sh OUT --rehearse    on a CPU, the same steps that need no GPU, the same way
# Missing pure-Python packages travel as wheels in .whl/ (benchmarks/gpu-wheels.txt says how to fetch them) and
# are installed from there only (--no-index); the project runs from this tree (PYTHONPATH), not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu.sh OUT [--rehearse]}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lstm_jax_site \
    .whl/*.whl || { echo "gpu.sh: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/lstm_jax_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_run.py --out "$out" "$@"
