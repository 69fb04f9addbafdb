"""Tables of finished accuracy runs: per-seed errors, mean +- std, ratio to the best AdamW.

The accuracy studies in ``benchmarks/results/accuracy_*`` each train a few
variants of the FNO example (``python -m benchmarks.accuracy``, one run
directory per seed) and tabulate them with `collect`, from their
``metrics.json``; runs that have not finished are skipped.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from benchmarks import accuracy, common
from examples.fno import plots
from examples.fno.tables import markdown_table


def _label(name: str, setting: str) -> str:
  return f"{name} | {setting}"


def load(groups: Sequence[tuple[str, str, str]], task: str, seeds=range(3)) -> list[dict]:
  """One record per finished run of ``groups``: ``(optimizer, setting, run directory prefix)``.

  A group's run of seed ``s`` is the directory ``prefix + str(s)``.
  """
  runs = []
  for name, setting, prefix in groups:
    for seed in seeds:
      path = pathlib.Path(f"{prefix}{seed}") / "metrics.json"
      if not path.is_file():
        continue
      metrics = json.loads(path.read_text())
      runs.append(
        {
          "task": task,
          "optimizer": _label(name, setting),
          "seed": seed,
          "lr": metrics["config"]["lr"],
          "config": metrics["config"],
          "test_rel_l2": metrics["test_rel_l2"],
          "train_rel_l2": metrics["train_rel_l2"],
          "optimizer_state_bytes": metrics["optimizer_state_bytes"],
          "adamw_state_bytes": metrics["adamw_state_bytes"],
          "test_rel_l2_per_epoch": [h["test_rel_l2"] for h in metrics["history"]],
        }
      )
  return runs


def collect(
  groups: Sequence[tuple[str, str, str]],
  *,
  task: str,
  setting: str,
  out: pathlib.Path,
  seeds: Sequence[int] = range(3),
  figure: pathlib.Path | None = None,
) -> str:
  """Writes ``table.md`` and ``runs.json`` into ``out`` and returns the table.

  Args:
    groups: ``(optimizer, setting, run directory prefix)`` per row.
    task: The task the runs trained on (``"ns64"``, ``"darcy64"``).
    setting: The header of the column that tells the rows of one optimizer apart.
    out: The directory to write into.
    seeds: The seeds to look for.
    figure: Where to write the rows' learning curves (mean test error per
      epoch over the seeds), if anywhere.

  Returns:
    The markdown table; ratios are to the AdamW row with the lowest mean
    among those with the most seeds.
  """
  runs = load(groups, task, seeds)
  rows = accuracy.summarise(runs)
  for row in rows:
    row["seeds"] = [r["seed"] for r in runs if r["optimizer"] == row["optimizer"]]
  adamw = [r for r in rows if r["optimizer"].startswith("adamw |")]
  # A row of fewer seeds is not a fair reference: one lucky seed would set every ratio.
  most = max((len(r["seeds"]) for r in adamw), default=0)
  best_adamw = min((r["mean"] for r in adamw if len(r["seeds"]) == most), default=None)
  for row in rows:
    row["ratio"] = row["mean"] / best_adamw if best_adamw else None
  columns = (
    ("optimizer", lambda s: s["optimizer"].split(" | ")[0]),
    (setting, lambda s: s["optimizer"].split(" | ")[1]),
    ("seeds", lambda s: ", ".join(str(seed) for seed in s["seeds"])),
    ("test rel L2 per seed", lambda s: ", ".join(f"{e:.4f}" for e in s["errors"])),
    ("mean +- std", lambda s: f"{s['mean']:.4f} +- {s['stdev']:.4f}"),
    ("x best AdamW", lambda s: "-" if s["ratio"] is None else f"{s['ratio']:.2f}"),
    ("state x AdamW", lambda s: f"{s['state_ratio']:.3f}"),
  )
  table = markdown_table(rows, columns)
  out.mkdir(parents=True, exist_ok=True)
  (out / "table.md").write_text(table + "\n")
  summary = {"machine": common.machine(), "task": task, "runs": runs, "summary": rows}
  (out / "runs.json").write_text(json.dumps(summary, indent=2))
  if figure is not None:
    curves: dict[str, list] = {}
    for run in runs:
      label = run["optimizer"].replace(" | ", ", ")
      curves.setdefault(label, []).append(run["test_rel_l2_per_epoch"])
    plots.plot_learning_curves(curves, figure)
  return table
