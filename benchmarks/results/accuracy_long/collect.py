"""Writes table.md and runs.json beside this file from the 60-epoch Darcy-64 runs.

Four times the 15 epochs of the other accuracy studies, seed 0, peak lr 2.4e-2: does the gap
between AdamW and Tensor-GaLore close with training? Run from the repository root, after the
commands in docs/benchmarks.md#a-four-times-longer-run-darcy-64-60-epochs-seed-0; runs that are
missing are skipped.
"""

import pathlib

from benchmarks import run_tables

# (optimizer, setting, run directory up to the seed)
GROUPS = [
  ("adamw", "60 epochs", "runs/darcy_long/accuracy_darcy64_adamw_"),
  (
    "tensor_galore_channels",
    "rank 0.25, channels only, 60 epochs",
    "runs/darcy_long/accuracy_darcy64_tensor_galore_channels_",
  ),
  (
    "tensor_galore_in_channels",
    "rank 0.25, input channels only, 60 epochs",
    "runs/darcy_long/accuracy_darcy64_tensor_galore_in_channels_",
  ),
]

print(
  run_tables.collect(
    GROUPS,
    task="darcy64",
    setting="setting",
    out=pathlib.Path(__file__).parent,
    seeds=[0],
    figure=pathlib.Path("docs/assets/accuracy_darcy64_long.png"),
  )
)
