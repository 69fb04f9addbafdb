#!/usr/bin/env bash
# An accuracy study on one GPU: its runs in parallel processes, one per task and seed, each in
# its own copy of the checkout (the accuracy tool writes its study's data after every run), then
# their data merged into $OUT/STUDY.json, to be copied to benchmarks/results/accuracy/. The data
# sets are generated once, before. While the runs train, a quick subset of the tests runs too
# (SVD and eigh differ on GPU). Runs from a checkout with jax for the GPU and the packages of
# the `examples` and `test` extras.
#   STUDY=layers LIMIT=400 OUT=/tmp/gpu bash benchmarks/gpu_accuracy.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
export TENSOR_GALORE_DATA="${TENSOR_GALORE_DATA:-/tmp/tensor_galore_data}"
study="${STUDY:-layers}"
limit="${LIMIT:-400}"
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
tasks=$(python -c "from benchmarks.accuracy import STUDIES; print(' '.join(STUDIES['$study'].tasks))")
seeds=$(python -c "from benchmarks.accuracy import STUDIES; print(' '.join(map(str, STUDIES['$study'].seeds)))")
start=$(date +%s)
for task in $tasks; do  # the data sets, once (every process would generate its own otherwise)
  timeout 200 python -c "
from benchmarks.accuracy import TASKS
from benchmarks import configs, train
config = configs.Config(**{**TASKS['$task'], 'progress': False})
train.load_data(config)
" &
done
wait
echo "data: $(( $(date +%s) - start )) s"
copies=()
for task in $tasks; do
  for seed in $seeds; do
    copy="/tmp/accuracy_${task}_${seed}"
    rm -rf "$copy" && mkdir -p "$copy"
    tar --exclude=.git --exclude=.venv --exclude=runs -cf - . | tar -xf - -C "$copy"
    copies+=("$copy")
    (cd "$copy" && timeout "$limit" python -m benchmarks.accuracy --study "$study" \
        --tasks "$task" --seeds "$seed" --runs "$copy/runs" >"$out/${task}_${seed}.log" 2>&1) &
  done
done
timeout 200 python -m pytest -q -x -n 4 -p no:cacheprovider tests/test_refresh.py \
  tests/test_tucker.py tests/test_contracts.py >"$out/tests.log" 2>&1
echo "tests: rc $? ($(tail -1 "$out/tests.log"))"
wait
echo "runs: $(( $(date +%s) - start )) s"
python - "$study" "$out" "${copies[@]}" <<'EOF'
import json, pathlib, sys
study, out, copies = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
documents = []
for copy in copies:
  path = pathlib.Path(copy) / "benchmarks/results/accuracy" / f"{study}.json"
  if path.is_file():
    documents.append(json.loads(path.read_text()))
merged = {**documents[0], "runs": [run for d in documents for run in d["runs"]]} if documents else {}
(out / f"{study}.json").write_text(json.dumps(merged, indent=1) + "\n")
print(f"{len(merged.get('runs', []))} runs in {out / (study + '.json')}")
EOF
