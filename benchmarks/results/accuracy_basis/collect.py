"""Writes table.md and runs.json beside this file from the runs that locate the remaining gap.

NS-64, 15 epochs, peak lr 2.4e-2, seed 0; the spectral weights' step lengthened for every
optimizer (x2, or Tensor-GaLore's "matched"). Run from the repository root, after the commands in
docs/benchmarks.md#where-the-rest-comes-from-seed-0-lr-24e-2; runs that are missing are skipped.
"""

import pathlib

from benchmarks import run_tables

# (optimizer, what the row changes, run directory up to the seed)
GROUPS = [
  ("adamw", "spectral step x2", "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_adamw_"),
  (
    "tensor_galore",
    "rank 0.2, x2 (the step-length table's)",
    "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_tensor_galore_",
  ),
  (
    "tensor_galore",
    "rank 1.0 (nothing truncated), x2",
    "runs/rank1_scale2_lr2.4e-2/accuracy_ns64_tensor_galore_",
  ),
  (
    "tensor_galore",
    "rank 1.0, x2, basis frozen after step 0",
    "runs/rank1_frozen_scale2_lr2.4e-2/accuracy_ns64_tensor_galore_",
  ),
  (
    "tensor_galore_matched",
    'rank 0.2, refresh_method="averaged"',
    "runs/averaged_lr2.4e-2/accuracy_ns64_tensor_galore_matched_",
  ),
  (
    "tensor_galore_channels",
    "rank 0.25, channels only",
    "runs/channels_lr2.4e-2/accuracy_ns64_tensor_galore_channels_",
  ),
]

print(
  run_tables.collect(
    GROUPS, task="ns64", setting="run", out=pathlib.Path(__file__).parent, seeds=(0,)
  )
)
