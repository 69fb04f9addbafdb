"""Accuracy studies: optimizer variants trained side by side, several seeds each.

A study is a committed definition in `STUDIES`: its tasks, its rows (an
optimizer variant, `benchmarks.variants`, with its settings) and its seeds.
Every run of a study is a `benchmarks.train` run with the task's data and
model, the study's and the row's settings, and one seed; its result (test error per epoch, state
bytes, the full configuration) is committed data in
``benchmarks/results/accuracy/<study>.json``, from which the table
(``<study>.md`` beside it) and the learning-curve figure
(``docs/assets/accuracy_<study>.png``) are made.

Usage, from the repository root::

  python -m benchmarks.accuracy --study main               # train the missing runs, tabulate
  python -m benchmarks.accuracy --study main --seeds 0     # only seed 0 of every row
  python -m benchmarks.accuracy --study main --tasks ns64  # only the NS-64 rows
  python -m benchmarks.accuracy --collect                  # every study's table, from the data

Every ratio is to one AdamW reference per task and model: among the AdamW
rows, those with the most seeds, and of them the lowest mean (one lucky seed
does not set the ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
from typing import Any

import tensor_galore_optax
from benchmarks import common, configs, plots
from benchmarks.tables import markdown_table
from benchmarks.train import train_and_evaluate

RESULTS = pathlib.Path("benchmarks/results/accuracy")
FIGURES = pathlib.Path("docs/assets")

TASKS: dict[str, dict[str, Any]] = {
  # The example's defaults: vorticity at t = 0 to t = 1, 64 x 64, the small FNO.
  "ns64": {},
  # Generated Darcy flow at 64 x 64 with the Darcy model preset.
  "darcy64": {"pde": "darcy", "preset": "darcy", "resolution": 64},
  # Generated Darcy flow at 16 x 16, for the models other than the FNO (the row sets the preset).
  "darcy16": {"pde": "darcy", "resolution": 16},
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a study: an optimizer of the example with its settings.

  Attributes:
    label: The row's name in the table and the figure.
    settings: `configs.Config` fields of its runs (``optimizer`` at least).
  """

  label: str
  settings: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Study:
  """A committed accuracy study.

  Attributes:
    description: One line: what the study compares.
    tasks: Keys of `TASKS`.
    rows: The rows, in the table's order.
    seeds: The seeds every row trains with.
    settings: `configs.Config` fields shared by every row. Every setting the
      results depend on is named here or in the rows, not left to the
      example's defaults, so that a run reproduces the committed one.
  """

  description: str
  tasks: tuple[str, ...]
  rows: tuple[Row, ...]
  seeds: tuple[int, ...] = (0, 1, 2)
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)


# Layers other than spectral ones: the library's defaults (no spec) at rank 0.25.
_LAYER_SETTINGS = {
  "tensor_rank": 0.25,
  "scale": "matched",
  "epochs": 15,
  "update_proj_gap": 200,
  "projection": "fewest",
  "residual_scale": 4.0,
}


def _layer_row(preset: str, name: str, lr: float, label: str = "", **settings) -> Row:
  return Row(
    f"{preset}: {name}{label}, lr {lr:g}",
    {"preset": preset, "optimizer": name, "lr": lr, **settings},
  )


STUDIES: dict[str, Study] = {
  "main": Study(
    "AdamW, matrix GaLore, Tensor-GaLore and the input channels, at the tuned learning rate",
    tasks=("ns64", "darcy64"),
    rows=(
      Row("adamw", {"optimizer": "adamw"}),
      # The int rank whose state matches tensor_galore's bytes at rank 0.2.
      Row("galore, larger side (optax's), matched bytes", {"optimizer": "galore"}),
      Row("tensor_galore, every mode, rank 0.2", {"optimizer": "tensor_galore"}),
      Row(
        "tensor_galore_in_channels, rank 0.25 (GaLore's reference side)",
        {"optimizer": "tensor_galore_in_channels", "tensor_rank": 0.25},
      ),
    ),
    settings={
      "lr": 2.4e-2,
      "scale": "matched",
      "tensor_rank": 0.2,
      "epochs": 15,
      "update_proj_gap": 100,
      "residual_scale": 0.0,
    },
  ),
  "layers": Study(
    "AdamW, Tensor-GaLore's defaults and Adafactor on a conv net and an MLP (Darcy 16 x 16)",
    tasks=("darcy16",),
    rows=(
      # AdamW's best rate of 1e-3, 3e-3, 1e-2 and 3e-2 on each model, seed 0.
      _layer_row("cnn", "adamw", 1e-2),
      _layer_row("cnn", "tensor_galore_defaults", 1e-2),
      # Adafactor scales its step by the parameters' RMS: AdamW's rate and three times it.
      _layer_row("cnn", "adafactor", 1e-2),
      _layer_row("cnn", "adafactor", 3e-2),
      _layer_row("mlp", "adamw", 3e-3),
      _layer_row("mlp", "tensor_galore_defaults", 3e-3),
      # Without the gradient outside the subspace (GaLore's and the paper's update).
      _layer_row("mlp", "tensor_galore_defaults", 3e-3, ", no residual", residual_scale=0.0),
      _layer_row("mlp", "adafactor", 3e-3),
      _layer_row("mlp", "adafactor", 1e-2),
    ),
    settings=_LAYER_SETTINGS,
  ),
}


def _row_settings(study: Study, row: Row) -> dict[str, Any]:
  return {**study.settings, **row.settings}


def data_path(name: str) -> pathlib.Path:
  return RESULTS / f"{name}.json"


def load_runs(name: str) -> list[dict]:
  """The committed runs of study ``name`` (none if it has no data yet)."""
  path = data_path(name)
  return json.loads(path.read_text())["runs"] if path.is_file() else []


def _save_runs(name: str, runs: list[dict]) -> None:
  RESULTS.mkdir(parents=True, exist_ok=True)
  study = STUDIES[name]
  document = {"study": name, "description": study.description, "runs": runs}
  data_path(name).write_text(json.dumps(document, indent=1) + "\n")


def _matches(run: dict, study: Study, row: Row) -> bool:
  """Whether a committed run was trained with the row's settings (and its task's)."""
  wanted = {**TASKS[run["task"]], **_row_settings(study, row)}
  return all(run["config"].get(k) == v for k, v in wanted.items())


def _run_config(study: Study, row: Row, task: str, seed: int, args) -> configs.Config:
  slug = "".join(c if c.isalnum() else "_" for c in row.label).strip("_")
  return dataclasses.replace(
    configs.Config(),
    **TASKS[task],
    **_row_settings(study, row),
    seed=seed,
    out=str(args.runs / args.study / f"{task}_{slug}_{seed}"),
    overwrite=args.overwrite,
    progress=False,
  )


def _record(task: str, row: Row, config: configs.Config, metrics: dict) -> dict:
  """One run's committed data."""
  return {
    "task": task,
    "row": row.label,
    "seed": config.seed,
    "version": tensor_galore_optax.__version__,
    "machine": common.machine(),
    "test_rel_l2": metrics["test_rel_l2"],
    "train_rel_l2": metrics["train_rel_l2"],
    "optimizer_state_bytes": metrics["optimizer_state_bytes"],
    "adamw_state_bytes": metrics["adamw_state_bytes"],
    "test_rel_l2_per_epoch": [h["test_rel_l2"] for h in metrics["history"]],
    "wall_seconds": metrics["wall_seconds"],
    "config": {k: v for k, v in metrics["config"].items() if k not in ("out", "overwrite")},
  }


def summarise(study: Study, runs: list[dict]) -> list[dict]:
  """One row per (task, study row) with runs: errors per seed, mean, spread, ratios.

  Raises:
    ValueError: If a run's recorded settings are not its row's.
  """
  by_label = {row.label: row for row in study.rows}
  for run in runs:
    row = by_label.get(run["row"])
    if row is None or not _matches(run, study, row):
      raise ValueError(
        f"run {run['task']} / {run['row']!r} / seed {run['seed']} was not trained with the "
        "study's settings for that row: its data does not belong to this study"
      )
  table = []
  for task in study.tasks:
    for row in study.rows:
      group = sorted(
        (r for r in runs if r["task"] == task and r["row"] == row.label), key=lambda r: r["seed"]
      )
      if not group:
        continue
      errors = [r["test_rel_l2"] for r in group]
      table.append(
        {
          "task": task,
          "row": row.label,
          "adamw": row.settings["optimizer"] == "adamw",
          "preset": {**TASKS[task], **_row_settings(study, row)}.get("preset"),
          "seeds": [r["seed"] for r in group],
          "errors": errors,
          # Runs recorded without their per-epoch errors have no curve.
          "curves": [r["test_rel_l2_per_epoch"] for r in group if r["test_rel_l2_per_epoch"]],
          "mean": statistics.mean(errors),
          "stdev": statistics.stdev(errors) if len(errors) > 1 else 0.0,
          "state_ratio": group[0]["optimizer_state_bytes"] / group[0]["adamw_state_bytes"],
        }
      )
  for group in {(r["task"], r["preset"]) for r in table}:
    members = [r for r in table if (r["task"], r["preset"]) == group]
    reference = adamw_reference(members)
    for r in members:
      r["ratio"] = None if reference is None else r["mean"] / reference
  return table


def adamw_reference(rows: list[dict]) -> float | None:
  """The mean of the AdamW row with the most seeds (the lowest mean among equals)."""
  adamw = [r for r in rows if r["adamw"]]
  if not adamw:
    return None
  most = max(len(r["seeds"]) for r in adamw)
  return min(r["mean"] for r in adamw if len(r["seeds"]) == most)


COLUMNS = (
  ("task", lambda s: s["task"]),
  ("optimizer, setting", lambda s: s["row"]),
  ("seeds", lambda s: ", ".join(str(seed) for seed in s["seeds"])),
  ("test rel L2 per seed", lambda s: ", ".join(f"{e:.4f}" for e in s["errors"])),
  ("mean +- std", lambda s: f"{s['mean']:.4f} +- {s['stdev']:.4f}"),
  ("x AdamW", lambda s: "-" if s["ratio"] is None else f"{s['ratio']:.2f}"),
  ("state x AdamW", lambda s: f"{s['state_ratio']:.3f}"),
)


def collect(name: str) -> str:
  """Writes study ``name``'s table and figure from its committed data; returns the table."""
  study = STUDIES[name]
  rows = summarise(study, load_runs(name))
  if not rows:
    return f"{name}: no runs yet ({data_path(name)})"
  table = markdown_table(rows, COLUMNS)
  (RESULTS / f"{name}.md").write_text(table + "\n")
  panels = {
    task: {r["row"]: r["curves"] for r in rows if r["task"] == task and r["curves"]}
    for task in study.tasks
  }
  panels = {task: curves for task, curves in panels.items() if curves}
  if panels:
    FIGURES.mkdir(parents=True, exist_ok=True)
    plots.plot_learning_curves(panels, FIGURES / f"accuracy_{name}.png")
  return table


def train(args, parser) -> None:
  """Trains the runs of ``args.study`` that its data lacks (all with ``--overwrite``)."""
  study = STUDIES[args.study]
  seeds = study.seeds if args.seeds is None else args.seeds
  tasks = study.tasks if args.tasks is None else args.tasks
  unknown = sorted(set(tasks) - set(study.tasks))
  if unknown:
    parser.error(f"--tasks: study {args.study} has no task {', '.join(unknown)}")
  runs = [] if args.overwrite else load_runs(args.study)
  done = {(r["task"], r["row"], r["seed"]) for r in runs}
  plan = [
    (task, row, _run_config(study, row, task, seed, args))
    for task in tasks
    for row in study.rows
    for seed in seeds
    if (task, row.label, seed) not in done
  ]
  print(f"{args.study}: {len(plan)} runs to train, {len(runs)} in {data_path(args.study)}")
  # Every run's settings are checked before the first one trains.
  common.check_all(parser, [config for _, _, config in plan])
  for task, row, config in plan:
    metrics = train_and_evaluate(config)
    runs.append(_record(task, row, config, metrics))
    _save_runs(args.study, runs)  # after every run: an interrupted study keeps what it trained
    print(f"{task} | {row.label} | seed {config.seed}: {metrics['test_rel_l2']:.4f}", flush=True)


def _seeds(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid --seeds {text!r}: expected e.g. 0,1,2") from None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--study", choices=STUDIES, help="the study to train (with --collect: to tabulate)"
  )
  parser.add_argument("--seeds", type=_seeds, help="train these seeds only (default: the study's)")
  parser.add_argument(
    "--tasks",
    type=lambda text: tuple(text.split(",")),
    help="train these tasks only, e.g. ns64 (default: the study's)",
  )
  parser.add_argument(
    "--runs", type=pathlib.Path, default=pathlib.Path("runs/accuracy"), help="run directories"
  )
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument(
    "--collect",
    action="store_true",
    help="train nothing: re-make the tables and figures from the committed data "
    "(every study's unless --study)",
  )
  mode.add_argument(
    "--overwrite", action="store_true", help="train every run again, replacing the study's data"
  )
  args = parser.parse_args(argv)
  if args.collect:
    names = [args.study] if args.study else list(STUDIES)
  elif args.study is None:
    parser.error("name a --study to train, or pass --collect")
  else:
    train(args, parser)
    names = [args.study]
  for name in names:
    try:
      print(f"\n{name}: {STUDIES[name].description}\n\n{collect(name)}")
    except ValueError as e:
      parser.error(f"{data_path(name)}: {e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
