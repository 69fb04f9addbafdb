"""The results page's summary table, made from the committed results of the other benchmarks.

Per task, AdamW, the library's default (`tensor_galore_adamw` with its defaults) and the peer
with the least memory (Adafactor), each against AdamW: test error, optimizer state, the
compiled train step's time (amortised over the refresh gap) and its peak memory (XLA's
``memory_analysis``). The sources, each made by its own command (see ``docs/benchmarks.md``):

* the demo's task (NS-64): the runs of ``python -m examples.fno`` collected by ``--demo``
  into ``benchmarks/results/demo_ns64.json``; memory and speed of ``--config small``;
* the conv net and the MLP (Darcy 16 x 16): the accuracy study ``layers``; memory and speed
  of ``--config cnn16`` and ``mlp16``.

Usage, from the repository root::

  python -m benchmarks.summary --demo runs/ns64_adamw runs/ns64_tensor_galore  # record runs
  python -m benchmarks.summary        # writes benchmarks/results/summary.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import tensor_galore_optax
from benchmarks import accuracy
from benchmarks.tables import markdown_table

RESULTS = pathlib.Path("benchmarks/results")
DEMO = RESULTS / "demo_ns64.json"
# Task: (label, benchmark config of the memory and speed results, preset of the `layers` rows).
TASKS = {
  "ns64": ("FNO (the demo), Navier–Stokes 64x64", "small", None),
  "cnn": ("conv net, Darcy 16x16", "cnn16", "cnn"),
  "mlp": ("MLP, Darcy 16x16", "mlp16", "mlp"),
}
# Optimizer variant names of the memory and speed benchmarks, and of the demo.
NAMES = {"adamw": "adamw", "default": "tensor_galore_defaults", "peer": "adafactor"}
DEMO_NAMES = {"adamw": "adamw", "default": "tensor_galore", "peer": "adafactor"}
LABELS = {
  "adamw": "`optax.adamw`",
  "default": "`tensor_galore_adamw` (defaults)",
  "peer": "`optax.adafactor` (factored)",
}


def record_demo(directories: list[str]) -> None:
  """Adds the ``metrics.json`` of demo runs to `DEMO`, one entry per optimizer and rate."""
  runs = json.loads(DEMO.read_text())["runs"] if DEMO.is_file() else {}
  for directory in directories:
    metrics = json.loads((pathlib.Path(directory) / "metrics.json").read_text())
    key = f"{metrics['optimizer']} {metrics['lr']:g}"
    runs[key] = {k: v for k, v in metrics.items() if k != "history"} | {
      "test_rel_l2_per_epoch": [h["test_rel_l2"] for h in metrics["history"]],
      "version": tensor_galore_optax.__version__,
    }
  DEMO.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


def _rows(path: pathlib.Path, name: str) -> dict | None:
  """The row of optimizer variant ``name`` (recipe ``none``) in a memory or speed result."""
  if not path.is_file():
    return None
  rows = json.loads(path.read_text())["rows"]
  return next(
    (r for r in rows if r["optimizer"] == name and r.get("recipe", "none") == "none"), None
  )


def _best_demo_run(name: str) -> dict | None:
  """The recorded demo run of optimizer ``name`` with the lowest test error (its best rate)."""
  runs = [r for r in json.loads(DEMO.read_text())["runs"].values() if r["optimizer"] == name]
  return min(runs, key=lambda r: r["test_rel_l2"], default=None)


def _accuracy(task: str, preset: str | None) -> dict[str, tuple[float, float] | None]:
  """(error ratio, state ratio) per role; the peer at its best rate."""
  if preset is None:
    if not DEMO.is_file():
      return {}
    adamw = _best_demo_run("adamw")
    result = {}
    for role, name in DEMO_NAMES.items():
      run = _best_demo_run(name)
      if run and adamw:
        result[role] = (
          run["test_rel_l2"] / adamw["test_rel_l2"],
          run["optimizer_state_bytes"] / run["adamw_state_bytes"],
        )
    return result
  study = accuracy.STUDIES["layers"]
  rows = accuracy.summarise(study, accuracy.load_runs("layers"))
  result = {}
  for role, name in NAMES.items():
    # The rows of the library's default setting and of each peer's rates (not the variants).
    mine = [r for r in rows if r["row"].startswith(f"{preset}: {name}, lr ")]
    if mine:
      best = min(mine, key=lambda r: r["mean"])
      result[role] = (best["ratio"], best["state_ratio"])
  return result


def table() -> str:
  """The summary table, one line per task and optimizer."""
  lines = []
  for task, (label, config, preset) in TASKS.items():
    errors = _accuracy(task, preset)
    memory = {role: _rows(RESULTS / f"memory_{config}.json", n) for role, n in NAMES.items()}
    speed = {role: _rows(RESULTS / f"speed_{config}.json", n) for role, n in NAMES.items()}
    for role in NAMES:
      error = errors.get(role)
      state = error[1] if error else memory[role] and memory[role]["state_vs_adamw"]
      step = speed[role] and speed[role]["amortised_vs_adamw"]
      peak = memory[role] and memory[role]["step_vs_adamw"]
      text = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
      lines.append(
        {
          "task": label,
          "optimizer": LABELS[role],
          "error": text(error and error[0], 2),
          "state": text(state, 3),
          "time": text(step, 2),
          "memory": text(peak, 3),
        }
      )
  columns = (
    ("task", lambda r: r["task"]),
    ("optimizer", lambda r: r["optimizer"]),
    ("test error x AdamW", lambda r: r["error"]),
    ("state x AdamW", lambda r: r["state"]),
    ("step time x AdamW", lambda r: r["time"]),
    ("compiled step memory x AdamW", lambda r: r["memory"]),
  )
  return markdown_table(lines, columns)


def demo_table() -> str:
  """The demo's runs: one line per optimizer, with its command."""
  runs = sorted(json.loads(DEMO.read_text())["runs"].values(), key=lambda r: r["optimizer"])
  adamw = _best_demo_run("adamw")
  columns = (
    (
      "command",
      lambda r: f"`python -m examples.fno --optimizer {r['optimizer']} --lr {r['lr']:g}`",
    ),
    ("test rel L2", lambda r: f"{r['test_rel_l2']:.4f}"),
    ("x AdamW", lambda r: f"{r['test_rel_l2'] / adamw['test_rel_l2']:.2f}" if adamw else "-"),
    ("state x AdamW", lambda r: f"{r['optimizer_state_bytes'] / r['adamw_state_bytes']:.3f}"),
  )
  return markdown_table(runs, columns)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.summary", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--demo", nargs="+", metavar="DIR", help="record these demo runs first")
  args = parser.parse_args(argv)
  if args.demo:
    record_demo(args.demo)
  text = table()
  (RESULTS / "summary.md").write_text(text + "\n")
  if DEMO.is_file():
    (RESULTS / "demo_ns64.md").write_text(demo_table() + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
