"""Writes table.md and runs.json beside this file: each optimizer at its best, every seed run.

NS-64, 15 epochs, peak lr 2.4e-2 for all (the best of the lr sweep for AdamW and Tensor-GaLore),
the spectral weights' step lengthened where that is better (x2 for AdamW; x2 or "matched" for
Tensor-GaLore). Run from the repository root, after the commands in
docs/benchmarks.md#the-issues-table-so-far; runs that are missing are skipped.
"""

import pathlib

from benchmarks import run_tables

# (optimizer, setting, run directory up to the seed); rows with the same optimizer and setting
# are one row.
GROUPS = [
  ("adamw", "spectral step x1", "runs/accuracy_lr2.4e-2/accuracy_ns64_adamw_"),
  ("adamw", "spectral step x2", "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_adamw_"),
  (
    "tensor_galore",
    "rank 0.2, step x1 (the paper's)",
    "runs/accuracy_lr2.4e-2/accuracy_ns64_tensor_galore_",
  ),
  (
    "tensor_galore",
    'rank 0.2, step x2 (seed 0) or "matched" (1.99)',
    "runs/accuracy_scale2_lr2.4e-2/accuracy_ns64_tensor_galore_",
  ),
  (
    "tensor_galore",
    'rank 0.2, step x2 (seed 0) or "matched" (1.99)',
    "runs/accuracy_lr2.4e-2/accuracy_ns64_tensor_galore_matched_",
  ),
  (
    "galore_matched",
    'matched bytes, larger side, "matched", lr 4.8e-2',
    "runs/galore_matched_lr4.8e-2/accuracy_ns64_galore_matched_",
  ),
  (
    "galore_matched",
    'matched bytes, larger side, "matched"',
    "runs/galore_matched/accuracy_ns64_galore_matched_",
  ),
  (
    "tensor_galore_channels",
    'rank 0.25, channels only, "matched"',
    "runs/channels_lr2.4e-2/accuracy_ns64_tensor_galore_channels_",
  ),
  (
    "tensor_galore_in_channels",
    'rank 0.25, input channels only (= matrix GaLore, reference side), "matched"',
    "runs/in_channels_lr2.4e-2/accuracy_ns64_tensor_galore_in_channels_",
  ),
  (
    "tensor_galore_in_channels",
    'rank 0.33 (11 of 32), input channels only, "matched" x2',
    "runs/in_channels_r033_x2/accuracy_ns64_tensor_galore_in_channels_",
  ),
]

print(
  run_tables.collect(
    GROUPS,
    task="ns64",
    setting="setting",
    out=pathlib.Path(__file__).parent,
    figure=pathlib.Path("docs/assets/accuracy_ns64.png"),
  )
)
