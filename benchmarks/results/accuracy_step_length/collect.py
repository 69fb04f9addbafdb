"""Writes table.md and runs.json beside this file from the step-length runs.

NS-64, 15 epochs, peak lr 2.4e-2 (the best of the lr sweep for both AdamW and Tensor-GaLore),
seeds 0 to 2 where they ran. Run from the repository root, after the commands in
docs/benchmarks.md#the-steps-length-seeds-0-to-2-lr-24e-2; runs that are missing are skipped.
"""

import json
import pathlib

from benchmarks import accuracy, common
from examples.fno.tables import markdown_table

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
COLUMNS = (
  ("optimizer", lambda s: s["optimizer"].split(" x")[0]),
  ("spectral step x", lambda s: s["optimizer"].split(" x")[1]),
  ("seeds", lambda s: ", ".join(str(seed) for seed in s["seeds"])),
  ("test rel L2 per seed", lambda s: ", ".join(f"{e:.4f}" for e in s["errors"])),
  ("mean +- std", lambda s: f"{s['mean']:.4f} +- {s['stdev']:.4f}"),
  ("x best AdamW", lambda s: f"{s['ratio']:.2f}"),
  ("state x AdamW", lambda s: f"{s['state_ratio']:.3f}"),
)

runs = []
for name, scale, prefix in GROUPS:
  for seed in range(3):
    path = pathlib.Path(f"{prefix}{seed}") / "metrics.json"
    if not path.is_file():
      continue
    metrics = json.loads(path.read_text())
    runs.append(
      {
        "task": "ns64",
        "optimizer": f"{name} x{scale}",
        "seed": seed,
        "lr": metrics["config"]["lr"],
        "scale": metrics["config"]["scale"],
        "test_rel_l2": metrics["test_rel_l2"],
        "train_rel_l2": metrics["train_rel_l2"],
        "optimizer_state_bytes": metrics["optimizer_state_bytes"],
        "adamw_state_bytes": metrics["adamw_state_bytes"],
        "test_rel_l2_per_epoch": [h["test_rel_l2"] for h in metrics["history"]],
      }
    )
rows = accuracy.summarise(runs)
best_adamw = min(r["mean"] for r in rows if r["optimizer"].startswith("adamw "))
for row in rows:
  row["seeds"] = [r["seed"] for r in runs if r["optimizer"] == row["optimizer"]]
  row["ratio"] = row["mean"] / best_adamw
table = markdown_table(rows, COLUMNS)
out = pathlib.Path(__file__).parent
(out / "table.md").write_text(table + "\n")
(out / "runs.json").write_text(
  json.dumps({"machine": common.machine(), "epochs": 15, "runs": runs, "summary": rows}, indent=2)
)
print(table)
