#!/usr/bin/env bash
# The GPU check: the CUDA tests and the benchmark rows of issue 16 (CUDA graphs, the
# per-row crossover, model sizes) on a CUDA device, in one run of at most about 7 minutes
# (each step has its own time limit; it usually takes much less); everything goes to
# stdout, and to OUT_DIR. CI has no GPU: run it by hand
# on a machine with one, with a Python that has a CUDA build of torch, pytest and
# hypothesis. It uses the source tree (PYTHONPATH=src), not an install, so it needs no
# network.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/stochdepth-gpu-check}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python=${PYTHON:-python3}
status=0

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

echo "== CUDA tests: CUDA graphs"
timeout 60 "$python" -m pytest -p no:cacheprovider -q -rs --tb=short tests/training/test_cuda_graphs.py \
    2>&1 | tee "$out/cuda-graph-tests.log" || status=1
echo "== CUDA tests: the others"
timeout 150 "$python" -m pytest -p no:cacheprovider -q -rs --tb=short \
    tests/test_cuda.py tests/test_repeats.py tests/test_compile.py \
    "tests/training/test_distributed_run.py::test_torchrun_with_nccl_trains_on_the_gpus" \
    2>&1 | tee "$out/cuda-tests.log" || status=1

# One run per section, each with its own time limit, so that a slow one cannot take
# the other's table with it (a killed run prints its finished rows on stderr only).
echo "== benchmark on CUDA: 6 CUDA graphs"
timeout 45 "$python" benchmarks/run.py --device cuda --sections 6 2>&1 \
    | tee "$out/benchmark-cuda-graphs.txt" || status=1
echo "== benchmark on CUDA: 9 per-row crossover"
timeout 60 "$python" benchmarks/run.py --device cuda --sections 9 2>&1 \
    | tee "$out/benchmark-cuda-per-row-crossover.txt" || status=1
echo "== benchmark on CUDA: 7 model sizes"
timeout 120 "$python" benchmarks/run.py --device cuda --sections 7 2>&1 \
    | tee "$out/benchmark-cuda-model-sizes.txt" || status=1
exit $status
