"""Writes table.md and runs.json beside this file from the step-length runs.

NS-64, 15 epochs, peak lr 2.4e-2 (the best of the lr sweep for both AdamW and Tensor-GaLore),
seeds 0 to 2 where they ran. Run from the repository root, after the commands in
docs/benchmarks.md#the-steps-length-seeds-0-to-2-lr-24e-2; runs that are missing are skipped.
"""

import pathlib

from benchmarks import run_tables

# (optimizer, the spectral weights' step multiplier, run directory up to the seed)
GROUPS = [
  ("adamw", "1", "runs/accuracy_lr2.4e-2/accuracy_ns64_adamw_"),
  ("adamw", "2", "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_adamw_"),
  ("tensor_galore", "1", "runs/accuracy_lr2.4e-2/accuracy_ns64_tensor_galore_"),
  ("tensor_galore", "2", "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_tensor_galore_"),
  (
    "tensor_galore_matched",
    "matched (1.99)",
    "runs/accuracy_lr2.4e-2/accuracy_ns64_tensor_galore_matched_",
  ),
]

print(
  run_tables.collect(
    GROUPS, task="ns64", setting="spectral step x", out=pathlib.Path(__file__).parent
  )
)
