#!/usr/bin/env bash
# The GPU check: memory and speed of the NS-128 FNO step, real peak memory without
# and with the memory recipe, the widest FNO that fits per optimizer, and a quick subset of the
# tests (SVD/eigh differ on GPU). Runs from a checkout (the benchmarks run as modules from its
# root) with jax for the GPU and the packages of the `examples` and `test` extras; budget: under
# 6 minutes on an H100/H200.
#   bash benchmarks/gpu.sh      # results under $OUT, or benchmarks/results/gpu
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
run() { local limit=$1; shift; echo "== $*"; timeout "$limit" "$@" 2>&1 | tee -a "$out/log.txt"; }
run 60  python -m pytest -q -x -p no:cacheprovider tests/test_refresh.py tests/test_tucker.py \
        "tests/test_transform.py::test_full_rank_with_sgd_base_equals_sgd" \
        "tests/test_transform.py::test_low_rank_map_is_an_orthogonal_projection"
run 60  python -m benchmarks.memory --config ns128 --ranks 0.25 --recipes none,remat+scan+chunk --out "$out/memory_ns128.json"
run 60  python -m benchmarks.speed --config ns128 --repeats 5 --out "$out/speed_ns128.json"
run 60  python -m benchmarks.gpu peak --config ns128 --out "$out/peak_ns128.json"
run 100 python -m benchmarks.gpu width --config ns128 --widths 128,1024,64 --out "$out/width_ns128.json"
echo "done; results in $out"
