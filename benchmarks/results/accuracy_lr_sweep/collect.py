"""Writes table.md and runs.json beside this file from the finished lr-sweep runs.

Run from the repository root, after the commands in docs/benchmarks.md#accuracy. The state
column is each run's own: these runs predate the real second moment of complex cores, which
makes Tensor-GaLore's state smaller now for the same updates.
"""

import json
import pathlib

runs = [
  ("adamw", 3e-3, "runs/accuracy/accuracy_ns64_adamw_0"),
  ("adamw", 6e-3, "runs/accuracy_lr6e-3/accuracy_ns64_adamw_0"),
  ("adamw", 1.2e-2, "runs/accuracy_lr1.2e-2/accuracy_ns64_adamw_0"),
  ("adamw", 2.4e-2, "runs/accuracy_lr2.4e-2/accuracy_ns64_adamw_0"),
  ("adamw", 4.8e-2, "runs/accuracy_lr4.8e-2/accuracy_ns64_adamw_0"),
  ("tensor_galore", 3e-3, "runs/accuracy/accuracy_ns64_tensor_galore_0"),
  ("tensor_galore", 6e-3, "runs/accuracy_lr6e-3/accuracy_ns64_tensor_galore_0"),
  ("tensor_galore", 1.2e-2, "runs/accuracy_lr1.2e-2/accuracy_ns64_tensor_galore_0"),
  ("tensor_galore", 2.4e-2, "runs/accuracy_lr2.4e-2/accuracy_ns64_tensor_galore_0"),
  ("tensor_galore", 4.8e-2, "runs/accuracy_lr4.8e-2/accuracy_ns64_tensor_galore_0"),
  ("tensor_galore_fira", 1.2e-2, "runs/accuracy_fira/accuracy_ns64_tensor_galore_fira_0"),
  ("tensor_galore_rms", 1.2e-2, "runs/accuracy_rms/accuracy_ns64_tensor_galore_rms_0"),
]
out = pathlib.Path("benchmarks/results/accuracy_lr_sweep")
out.mkdir(parents=True, exist_ok=True)
rows, found = [], []
for name, lr, d in runs:
  f = pathlib.Path(d) / "metrics.json"
  if not f.is_file():
    continue
  m = json.loads(f.read_text())
  found.append(
    {
      "optimizer": name,
      "lr": lr,
      "seed": 0,
      "test_rel_l2": m["test_rel_l2"],
      "train_rel_l2": m["train_rel_l2"],
      "optimizer_state_bytes": m["optimizer_state_bytes"],
      "adamw_state_bytes": m["adamw_state_bytes"],
      "test_rel_l2_per_epoch": [h["test_rel_l2"] for h in m["history"]],
    }
  )
best = {}
for r in found:
  if r["optimizer"] not in best or r["test_rel_l2"] < best[r["optimizer"]]["test_rel_l2"]:
    best[r["optimizer"]] = r
ref = best.get("adamw")
lines = [
  "| optimizer | peak lr | test rel L2 (seed 0) | x best AdamW | state x AdamW |",
  "|---|---|---|---|---|",
]
for r in found:
  ratio = f"{r['test_rel_l2'] / ref['test_rel_l2']:.2f}" if ref else "-"
  mark = " (best)" if best[r["optimizer"]] is r else ""
  lines.append(
    f"| {r['optimizer']} | {r['lr']:g}{mark} | {r['test_rel_l2']:.4f} | {ratio} | "
    f"{r['optimizer_state_bytes'] / r['adamw_state_bytes']:.3f} |"
  )
(out / "table.md").write_text("\n".join(lines) + "\n")
(out / "runs.json").write_text(
  json.dumps(
    {
      "machine": "x86_64 cpu (cpu), 1 device(s), jax 0.10.2",
      "task": "ns64",
      "epochs": 15,
      "runs": found,
    },
    indent=2,
  )
)
print("\n".join(lines))
