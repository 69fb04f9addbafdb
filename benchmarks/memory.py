"""Memory of a real FNO train step: AdamW, Adafactor, matrix GaLore and Tensor-GaLore.

For every memory recipe (`common.RECIPES`: rematerialisation, scanned stacked
blocks, chunked pointwise MLPs, bfloat16 pointwise layers), optimizer and rank,
the whole train step (forward, backward, optimizer update, ``apply_updates``)
is jitted with params and optimizer state donated, lowered on abstract shapes
and compiled *without running it*. Per row:

* ``optimizer_state_bytes``: the summed bytes of every array in the optimizer
  state (moments in optax's default dtype, factors, counters);
* ``params_bytes``: the summed bytes of the parameters;
* ``step_bytes``: the compiled step's peak estimate from XLA's
  ``memory_analysis()``: ``argument + output + temp - alias`` bytes. Arguments
  are params, state and the batch; donation lets outputs alias the donated
  arguments, so aliased bytes are counted once. Ratios are given to AdamW's
  step with the same recipe and to plain AdamW's (recipe ``none``);
* the breakdown of XLA's peak of live buffers by `common.PEAK_CATEGORIES`
  (parameters, optimizer state, forward values kept for the backward pass,
  the backward pass's own values, the optimizer's temporaries), read from the
  buffer analysis XLA dumps for the compilation. ``temp`` holds a heap, so the
  step's estimate is the peak plus fragmentation.

Usage, from the repository root::

  python -m benchmarks.memory --config ns128 --out benchmarks/results/memory_ns128.json
"""

import argparse
import pathlib
import sys

import jax

from benchmarks import common
from benchmarks.steps import make_train_step
from benchmarks.tables import markdown_table
from benchmarks.train import tree_bytes

RANKS = (0.25, 0.1, 0.05)
RECIPES = ("none", "remat", "remat+scan", common.FULL_RECIPE, "remat+scan+chunk+bf16")


def compiled_step_memory(config, optimizer, graphdef, params) -> dict:
  """The compiled step's memory analysis and peak breakdown, and the state and parameter bytes."""
  step = jax.jit(make_train_step(graphdef, optimizer), donate_argnums=(0, 1))
  abstract_params = jax.eval_shape(lambda: params)
  abstract_state = jax.eval_shape(optimizer.init, params)
  batch = common.abstract_batch(config)
  return {
    **common.compiled_memory(step, abstract_params, abstract_state, *batch, breakdown=True),
    "optimizer_state_bytes": tree_bytes(abstract_state),
    "params_bytes": tree_bytes(abstract_params),
  }


def rows_for(
  config_name: str, ranks=RANKS, recipes=RECIPES, projected=("galore", "tensor_galore")
) -> list[dict]:
  """One row per recipe, optimizer and rank (every rank with ``none``, the first otherwise).

  AdamW comes first in every recipe, then each optimizer of ``projected``.
  """
  config = common.CONFIGS[config_name]
  rows = []
  for recipe in recipes:
    graphdef, params = common.build_params(config, recipe=recipe)
    recipe_ranks = ranks if recipe == "none" else ranks[:1]
    # A variant without a rank (Adafactor) is compiled once.
    ranked = [n for n in projected if common.has_rank(n)]
    plan = [("adamw", None)] + [(n, None) for n in projected if n not in ranked]
    plan += [(n, r) for r in recipe_ranks for n in ranked]
    for name, rank in plan:
      optimizer, used_rank = common.make_optimizer(name, rank or ranks[0], params)
      row = {"config": config_name, "recipe": recipe, "optimizer": name, "rank": rank}
      if name == "galore":
        row["galore_int_rank"] = used_rank
      row.update(compiled_step_memory(config, optimizer, graphdef, params))
      rows.append(row)
      print(
        f"{recipe:22s} {name:14s} rank={rank!s:5s} "
        f"state={row['optimizer_state_bytes'] / 2**20:8.1f} MiB "
        f"step={row['step_bytes'] / 2**20:8.1f} MiB",
        flush=True,
      )
  plain = next((r for r in rows if r["optimizer"] == "adamw" and r["recipe"] == "none"), None)
  for row in rows:
    same = next(r for r in rows if r["optimizer"] == "adamw" and r["recipe"] == row["recipe"])
    row["state_vs_adamw"] = row["optimizer_state_bytes"] / same["optimizer_state_bytes"]
    row["step_vs_adamw"] = row["step_bytes"] / same["step_bytes"]
    row["step_vs_plain_adamw"] = row["step_bytes"] / plain["step_bytes"] if plain else None
  return rows


def _mib(key: str, ratio: str | None = None):
  """A cell of ``row[key]`` bytes in MiB, with ``row[ratio]`` after it."""
  return lambda r: f"{r[key] / 2**20:,.0f}" + (f" ({r[ratio]:.3f}x)" if ratio else "")


COLUMNS = (
  ("recipe", lambda r: r["recipe"]),
  ("optimizer", lambda r: r["optimizer"]),
  ("rank", common.rank_text),
  ("state MiB (x adamw)", _mib("optimizer_state_bytes", "state_vs_adamw")),
  ("step MiB (x adamw, same recipe)", _mib("step_bytes", "step_vs_adamw")),
  (
    "step x plain adamw",
    lambda r: "-" if r["step_vs_plain_adamw"] is None else f"{r['step_vs_plain_adamw']:.3f}",
  ),
)

BREAKDOWN_COLUMNS = (
  ("recipe", lambda r: r["recipe"]),
  ("optimizer", lambda r: r["optimizer"]),
  ("rank", common.rank_text),
  ("XLA peak MiB", _mib("peak_bytes")),
  *((key.replace("_", " "), _mib(f"peak_{key}_bytes")) for key in common.PEAK_CATEGORIES),
)


def bar_chart(rows, path: pathlib.Path) -> None:
  """The compiled step per recipe and optimizer (first rank), stacked by peak category, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  first_rank = next((r["rank"] for r in rows if r["rank"] is not None), None)
  rows = [r for r in rows if r["rank"] in (None, first_rank)]
  labels = [f"{r['recipe']}\n{r['optimizer']}" for r in rows]
  fig, ax = plt.subplots(figsize=(0.9 * len(rows) + 3, 5))
  bottoms = [0.0] * len(rows)
  for key in common.PEAK_CATEGORIES:
    heights = [r[f"peak_{key}_bytes"] / 2**20 for r in rows]
    ax.bar(range(len(rows)), heights, bottom=bottoms, label=key.replace("_", " "))
    bottoms = [b + h for b, h in zip(bottoms, heights)]
  ax.scatter(
    range(len(rows)),
    [r["step_bytes"] / 2**20 for r in rows],
    marker="_",
    s=400,
    color="black",
    label="compiled step (with fragmentation)",
  )
  ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=90)
  ax.set_ylabel("MiB")
  ax.set_title(f"{rows[0]['config']}: XLA's peak by category, per recipe and optimizer")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.memory", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="small")
  parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
  parser.add_argument(
    "--optimizers",
    default="galore,tensor_galore",
    help="optimizer variants (`benchmarks.variants`) beside adamw, comma-separated",
  )
  parser.add_argument(
    "--recipes",
    default=",".join(RECIPES),
    help=f"memory recipes, comma-separated, from {tuple(common.RECIPES)}",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="JSON file; a .md table and a .png chart are written beside it",
  )
  args = parser.parse_args(argv)
  ranks = tuple(float(r) for r in args.ranks.split(","))
  recipes = tuple(args.recipes.split(","))
  unknown = [r for r in recipes if r not in common.RECIPES]
  if unknown:
    parser.error(f"unknown recipe(s) {unknown}; choose from {tuple(common.RECIPES)}")
  rows = rows_for(args.config, ranks, recipes, tuple(args.optimizers.split(",")))
  tables = (
    markdown_table(rows, COLUMNS)
    + "\n\nXLA's peak of live buffers by category, MiB:\n\n"
    + markdown_table(rows, BREAKDOWN_COLUMNS)
  )
  common.report({"rows": rows}, tables, args.out)
  if args.out:
    bar_chart(rows, args.out.with_suffix(".png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
