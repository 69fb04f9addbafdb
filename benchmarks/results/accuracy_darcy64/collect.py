"""Writes table.md and runs.json beside this file from the Darcy-64 runs.

Generated Darcy flow at 64x64 (the Darcy preset), 15 epochs, peak lr 2.4e-2 (tuned on NS-64,
not on Darcy). Run from the repository root, after the commands in
docs/benchmarks.md#darcy-64-lr-24e-2; runs that are missing are skipped.
"""

import pathlib

from benchmarks import run_tables

# (optimizer, setting, run directory up to the seed)
GROUPS = [
  ("adamw", "spectral step x1", "runs/darcy_lr2.4e-2/accuracy_darcy64_adamw_"),
  ("adamw", "spectral step x2", "runs/darcy_adamw_x2/accuracy_darcy64_adamw_"),
  (
    "tensor_galore_matched",
    "rank 0.2",
    "runs/darcy_lr2.4e-2/accuracy_darcy64_tensor_galore_matched_",
  ),
  (
    "galore_matched",
    'matched bytes, larger side, "matched"',
    "runs/galore_matched/accuracy_darcy64_galore_matched_",
  ),
  (
    "tensor_galore_channels",
    "rank 0.25, channels only",
    "runs/darcy_channels_lr2.4e-2/accuracy_darcy64_tensor_galore_channels_",
  ),
  (
    "tensor_galore_in_channels",
    "rank 0.25, input channels only (= matrix GaLore, reference side)",
    "runs/darcy_in_channels/accuracy_darcy64_tensor_galore_in_channels_",
  ),
  (
    "tensor_galore_in_channels",
    "rank 0.25, input channels only, step x2",
    "runs/darcy_in_channels_x2/accuracy_darcy64_tensor_galore_in_channels_",
  ),
  (
    "tensor_galore_in_channels",
    "rank 0.33 (8 of 24), input channels only, step x2",
    "runs/darcy_in_channels_r033_x2/accuracy_darcy64_tensor_galore_in_channels_",
  ),
]

print(
  run_tables.collect(
    GROUPS,
    task="darcy64",
    setting="setting",
    out=pathlib.Path(__file__).parent,
    figure=pathlib.Path("docs/assets/accuracy_darcy64.png"),
  )
)
