"""What fits: the widest FNO each optimizer and memory recipe trains in plain AdamW's memory.

The memory budget is the compiled NS-128 train step of plain AdamW (no memory
recipe) at the preset's width, as `benchmarks.memory` measures it
(``argument + output + temp - alias`` bytes of the donated step, compiled on
shapes only, nothing run). For every (optimizer, recipe), the width grows in
steps of ``--step`` from the preset's until the step no longer fits; modes,
layers, batch and resolution stay fixed, and Tensor-GaLore's rank stays the
same fraction. The table gives the widest width that fits and its ratio to
plain AdamW's; the figure the step's size against the width.

Usage, from the repository root::

  python -m benchmarks.what_fits --config ns128 --out benchmarks/results/what_fits_ns128.json
"""

import argparse
import dataclasses
import pathlib
import sys

import jax

from benchmarks import common
from benchmarks.steps import make_train_step
from benchmarks.tables import markdown_table
from examples.fno.model import count_params

PLANS = (
  ("adamw", "none"),
  ("tensor_galore", "none"),
  ("adamw", common.FULL_RECIPE),
  ("tensor_galore", common.FULL_RECIPE),
)


def step_bytes(config: common.BenchConfig, name: str, recipe: str, rank: float) -> dict:
  """The compiled step's bytes and the parameter count of one (optimizer, recipe)."""
  graphdef, params = jax.eval_shape(lambda: common.build_params(config, recipe=recipe))
  optimizer, _ = common.make_optimizer(name, rank, params)
  step = jax.jit(make_train_step(graphdef, optimizer), donate_argnums=(0, 1))
  state = jax.eval_shape(optimizer.init, params)
  memory = common.compiled_memory(step, params, state, *common.abstract_batch(config))
  return {"step_bytes": memory["step_bytes"], "n_params": count_params(params)}


def widest(config, name, recipe, rank, budget, step):
  """Every width tried, from the preset's up to the first that does not fit."""
  points, width = [], config.preset.width
  while True:
    wider = dataclasses.replace(config, preset=dataclasses.replace(config.preset, width=width))
    point = {"width": width, **step_bytes(wider, name, recipe, rank)}
    points.append(point)
    fits = point["step_bytes"] <= budget
    print(
      f"{name:14s} {recipe:18s} width {width:4d}: {point['step_bytes'] / 2**20:8.0f} MiB "
      f"({'fits' if fits else 'does not fit'})",
      flush=True,
    )
    if not fits:
      return points
    width += step


def plot(rows, budget, path: pathlib.Path) -> None:
  """Step size against width per (optimizer, recipe), with the budget, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for row in rows:
    widths = [p["width"] for p in row["points"]]
    ax.plot(widths, [p["step_bytes"] / 2**20 for p in row["points"]], "o-", label=row["label"])
  ax.axhline(budget / 2**20, color="black", linestyle="--", label="plain AdamW at the preset width")
  ax.set_xlabel("FNO width (channels)")
  ax.set_ylabel("compiled train step, MiB")
  ax.set_title("What fits in plain AdamW's memory")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


COLUMNS = (
  ("optimizer", lambda r: r["optimizer"]),
  ("recipe", lambda r: r["recipe"]),
  ("widest width that fits", lambda r: str(r["widest"])),
  ("x plain AdamW's", lambda r: f"{r['ratio']:.2f}"),
  ("parameters (M, real)", lambda r: f"{r['n_params'] / 1e6:.1f}"),
  ("step MiB at that width", lambda r: f"{r['step_bytes'] / 2**20:,.0f}"),
)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.what_fits", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="ns128")
  parser.add_argument("--rank", type=float, default=0.25, help="Tensor-GaLore's rank")
  parser.add_argument("--step", type=int, default=8, help="width increment")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  config = common.CONFIGS[args.config]
  budget = step_bytes(config, "adamw", "none", args.rank)["step_bytes"]
  rows = []
  for name, recipe in PLANS:
    points = widest(config, name, recipe, args.rank, budget, args.step)
    fitting = [p for p in points if p["step_bytes"] <= budget]
    best = fitting[-1]
    rows.append(
      {
        "optimizer": name,
        "recipe": recipe,
        "label": f"{name}, recipe {recipe}",
        "widest": best["width"],
        "n_params": best["n_params"],
        "step_bytes": best["step_bytes"],
        "points": points,
      }
    )
  for row in rows:
    row["ratio"] = row["widest"] / rows[0]["widest"]
  table = markdown_table(rows, COLUMNS)
  common.report({"budget_bytes": budget, "rows": rows}, table, args.out)
  if args.out:
    plot(rows, budget, args.out.with_suffix(".png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
