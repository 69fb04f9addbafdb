"""Accuracy: the example's optimizers on Navier-Stokes and Darcy, several seeds each.

Trains the FNO example once per (task, optimizer, seed), everything else equal
(data, model, schedule, epochs), and reports the test relative L2 per run, its
mean and spread per optimizer and task, the ratio to AdamW's mean, and the
optimizer state against AdamW's. ``galore`` is matrix GaLore at the int rank
whose state matches Tensor-GaLore's bytes at ``--tensor-rank``. A figure of the
means (with the spread) is written beside the table.

Usage, from the repository root::

  python -m benchmarks.accuracy --tasks ns64,darcy64 --seeds 0,1,2 \\
      --optimizers adamw,galore,tensor_galore,tensor_galore_factored \\
      --out benchmarks/results/accuracy.json

``--collect`` tabulates the runs already finished beside ``--out`` without
training. ``--lr adamw=3e-3,tensor_galore=6e-3`` sets a learning rate per optimizer (the
others keep the example's); ``--epochs`` sets the budget of every run.
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys

from benchmarks import common
from examples.fno import configs, optimizers, plots
from examples.fno.tables import markdown_table

TASKS = {
  # The example's defaults: vorticity at t = 0 to t = 1, 64 x 64, small FNO.
  "ns64": {},
  # Generated Darcy flow at 64 x 64 with the Darcy model preset.
  "darcy64": {"pde": "darcy", "preset": "darcy", "resolution": 64},
}

COLUMNS = (
  ("task", lambda s: s["task"]),
  ("optimizer", lambda s: s["optimizer"]),
  ("lr", lambda s: f"{s['lr']:g}"),
  ("test rel L2 per seed", lambda s: ", ".join(f"{e:.4f}" for e in s["errors"])),
  ("mean +- std", lambda s: f"{s['mean']:.4f} +- {s['stdev']:.4f}"),
  ("x AdamW", lambda s: f"{s['ratio']:.2f}" if s["ratio"] else "-"),
  ("state x AdamW", lambda s: f"{s['state_ratio']:.3f}"),
)


def _pairs(text: str) -> dict[str, float]:
  pairs = dict(item.split("=", 1) for item in text.split(",") if item)
  return {name: float(value) for name, value in pairs.items()}


def _settings(text: str) -> dict:
  """``FIELD=VALUE,...`` as `configs.Config` fields, each value of its default's type."""
  defaults = configs.Config()
  settings = {}
  for item in filter(None, text.split(",")):
    name, value = item.split("=", 1)
    if not hasattr(defaults, name):
      raise ValueError(f"no setting {name!r}")
    settings[name] = _parse(value, getattr(defaults, name))
  return settings


def _parse(value: str, default):
  """``value`` as the type of ``default``; a number if it reads as one where that is None."""
  if isinstance(default, bool):
    return value.lower() in ("1", "true", "yes")
  if default is not None:
    return type(default)(value)
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def summarise(runs: list[dict]) -> list[dict]:
  """Mean and spread of the test error per (task, optimizer), and the ratio to AdamW."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for run in runs:
    groups.setdefault((run["task"], run["optimizer"]), []).append(run)
  rows = []
  for (task, name), group in groups.items():
    errors = [r["test_rel_l2"] for r in group]
    rows.append(
      {
        "task": task,
        "optimizer": name,
        "lr": group[0]["lr"],
        "errors": errors,
        "mean": statistics.mean(errors),
        "stdev": statistics.stdev(errors) if len(errors) > 1 else 0.0,
        "state_bytes": group[0]["optimizer_state_bytes"],
        "state_ratio": group[0]["optimizer_state_bytes"] / group[0]["adamw_state_bytes"],
      }
    )
  for row in rows:
    adamw = [r["mean"] for r in rows if r["task"] == row["task"] and r["optimizer"] == "adamw"]
    row["ratio"] = row["mean"] / adamw[0] if adamw else None
  return rows


def _finished(plan) -> list[tuple]:
  """``(config, metrics)`` per run of ``plan``, ``metrics`` ``None`` where it has not finished."""
  results = []
  for config in plan:
    path = pathlib.Path(config.out) / "metrics.json"
    results.append((config, json.loads(path.read_text()) if path.is_file() else None))
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--optimizers", default="adamw,galore,tensor_galore,tensor_galore_factored")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=configs.Config().epochs)
  parser.add_argument("--tensor-rank", type=float, default=configs.Config().tensor_rank)
  parser.add_argument(
    "--set", default="", help="other settings of every run, FIELD=VALUE,... (see configs.Config)"
  )
  parser.add_argument("--lr", default="", help="per-optimizer learning rates, NAME=LR,...")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/accuracy.json"))
  replace = parser.add_mutually_exclusive_group()
  replace.add_argument(
    "--overwrite", action="store_true", help="replace the runs already beside --out"
  )
  replace.add_argument(
    "--collect",
    action="store_true",
    help="train nothing: tabulate the finished runs beside --out (their metrics.json), "
    "skipping those that are missing",
  )
  replace.add_argument(
    "--resume",
    action="store_true",
    help="continue the runs already beside --out from their last checkpoint (a finished run "
    "is only evaluated again)",
  )
  args = parser.parse_args(argv)
  tasks, names = args.tasks.split(","), args.optimizers.split(",")
  unknown = [t for t in tasks if t not in TASKS] + [
    n for n in names if n not in optimizers.OPTIMIZERS
  ]
  if unknown:
    parser.error(
      f"unknown task or optimizer {unknown}; tasks {tuple(TASKS)}, optimizers "
      f"{tuple(optimizers.OPTIMIZERS)}"
    )
  lrs = _pairs(args.lr)
  try:
    overrides = _settings(args.set)
  except (TypeError, ValueError) as e:
    parser.error(f"--set: {e}")
  plan = [
    dataclasses.replace(
      configs.Config(),
      **TASKS[task],
      optimizer=name,
      tensor_rank=args.tensor_rank,
      lr=lrs.get(name, configs.Config().lr),
      epochs=args.epochs,
      **overrides,
      seed=int(seed),
      out=str(args.out.parent / f"accuracy_{task}_{name}_{seed}"),
      overwrite=args.overwrite,
      resume=args.resume,
      progress=False,
    )
    for task in tasks
    for name in names
    for seed in args.seeds.split(",")
  ]
  runs = []
  task_of = [t for t in tasks for _ in names for _ in args.seeds.split(",")]
  results = _finished(plan) if args.collect else common.train_all(parser, plan)
  for task, (config, metrics) in zip(task_of, results):
    if metrics is None:
      print(f"{task} {config.optimizer} seed {config.seed}: not run (no {config.out}/metrics.json)")
      continue
    runs.append(
      {
        "task": task,
        "optimizer": config.optimizer,
        "seed": config.seed,
        "lr": config.lr,
        "test_rel_l2": metrics["test_rel_l2"],
        "train_rel_l2": metrics["train_rel_l2"],
        "optimizer_state_bytes": metrics["optimizer_state_bytes"],
        "adamw_state_bytes": metrics["adamw_state_bytes"],
        "history": metrics["history"],
      }
    )
    print(f"{task} {config.optimizer} seed {config.seed}: {metrics['test_rel_l2']:.4f}", flush=True)
  rows = summarise(runs)
  table = markdown_table(rows, COLUMNS)
  settings = vars(args) | {"out": str(args.out)}
  common.report({"settings": settings, "runs": runs, "summary": rows}, table, args.out)
  for task in tasks:
    means = [
      {
        "optimizer": r["optimizer"],
        "rank": None,
        "optimizer_state_bytes": r["state_bytes"],
        "test_rel_l2": r["mean"],
      }
      for r in rows
      if r["task"] == task
    ]
    plots.plot_compare(means, args.out.with_name(f"{args.out.stem}_{task}.png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
