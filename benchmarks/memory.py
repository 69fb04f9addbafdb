"""Memory of a real FNO train step: AdamW, matrix GaLore and Tensor-GaLore side by side.

For every optimizer and rank, the whole train step (forward, backward,
optimizer update, ``apply_updates``) is jitted with params and optimizer state
donated, lowered on abstract shapes and compiled *without running it*. Per row:

* ``optimizer_state_bytes``: the summed bytes of every array in the optimizer
  state (moments in optax's default dtype, factors, counters);
* ``params_bytes``: the summed bytes of the parameters;
* ``step_bytes``: the compiled step's peak estimate from XLA's
  ``memory_analysis()``: ``argument + output + temp - alias`` bytes. Arguments
  are params, state and the batch; donation lets outputs alias the donated
  arguments, so aliased bytes are counted once.

Usage, from the repository root::

  python -m benchmarks.memory --config ns128 --out benchmarks/results/memory_ns128.json
"""

import argparse
import pathlib
import sys

import jax

from benchmarks import common
from examples.fno.steps import make_train_step
from examples.fno.tables import markdown_table
from tensor_galore_optax import tree_bytes

RANKS = (0.25, 0.1, 0.05)


def compiled_step_memory(config, optimizer, params, *, remat: bool):
  """The compiled step's memory analysis and the state and parameter bytes."""
  graphdef, _ = common.build_params(config, remat=remat)
  step = jax.jit(make_train_step(graphdef, optimizer), donate_argnums=(0, 1))
  abstract_params = jax.eval_shape(lambda: params)
  abstract_state = jax.eval_shape(optimizer.init, params)
  return {
    **common.compiled_memory(step, abstract_params, abstract_state, *common.abstract_batch(config)),
    "optimizer_state_bytes": tree_bytes(abstract_state),
    "params_bytes": tree_bytes(abstract_params),
  }


def rows_for(config_name: str, ranks=RANKS, remats=(False, True)):
  """One row per remat setting, optimizer and rank, with ratios to AdamW's."""
  config = common.CONFIGS[config_name]
  _, params = common.build_params(config)
  plan = [("adamw", None)] + [(name, r) for r in ranks for name in ("galore", "tensor_galore")]
  rows = []
  for remat in remats:
    for name, rank in plan:
      optimizer, used_rank = common.make_optimizer(name, rank if rank else 0.25, params)
      row = {"config": config_name, "optimizer": name, "rank": rank, "remat": remat}
      if name == "galore":
        row["galore_int_rank"] = used_rank
      row.update(compiled_step_memory(config, optimizer, params, remat=remat))
      rows.append(row)
      print(
        f"{name:14s} rank={rank!s:5s} remat={remat!s:5s} "
        f"state={row['optimizer_state_bytes'] / 2**20:9.1f} MiB "
        f"step={row['step_bytes'] / 2**20:9.1f} MiB",
        flush=True,
      )
  for row in rows:
    base = next(r for r in rows if r["optimizer"] == "adamw" and r["remat"] == row["remat"])
    row["state_vs_adamw"] = row["optimizer_state_bytes"] / base["optimizer_state_bytes"]
    row["step_vs_adamw"] = row["step_bytes"] / base["step_bytes"]
  return rows


def _mib(key: str, ratio: str | None = None):
  """A cell of ``row[key]`` bytes in MiB, with ``row[ratio]`` after it."""
  return lambda r: f"{r[key] / 2**20:,.1f}" + (f" ({r[ratio]:.3f}x)" if ratio else "")


COLUMNS = (
  ("optimizer", lambda r: r["optimizer"]),
  ("rank", common.rank_text),
  ("remat", lambda r: str(r["remat"])),
  ("optimizer state MiB (vs adamw)", _mib("optimizer_state_bytes", "state_vs_adamw")),
  ("params MiB", _mib("params_bytes")),
  ("step MiB (vs adamw)", _mib("step_bytes", "step_vs_adamw")),
  ("temp MiB", _mib("temp_bytes")),
)


def bar_chart(rows, path: pathlib.Path) -> None:
  """Optimizer state and compiled step per optimizer and rank (no remat), as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in rows if not r["remat"]]
  labels = [r["optimizer"] + ("" if r["rank"] is None else f"\n{r['rank']}") for r in rows]
  fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
  xs = range(len(rows))
  ax.bar(
    [x - 0.2 for x in xs],
    [r["optimizer_state_bytes"] / 2**20 for r in rows],
    0.4,
    label="optimizer state",
  )
  ax.bar(
    [x + 0.2 for x in xs], [r["step_bytes"] / 2**20 for r in rows], 0.4, label="compiled step (XLA)"
  )
  ax.set_xticks(list(xs), labels, fontsize=8)
  ax.set_ylabel("MiB")
  ax.set_title(f"{rows[0]['config']}: memory per optimizer and rank")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.memory", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="small")
  parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
  parser.add_argument("--no-remat", action="store_true", help="skip the remat rows")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="JSON file; a .md table and a .png chart are written beside it",
  )
  args = parser.parse_args(argv)
  ranks = tuple(float(r) for r in args.ranks.split(","))
  rows = rows_for(args.config, ranks, (False,) if args.no_remat else (False, True))
  common.report({"rows": rows}, markdown_table(rows, COLUMNS), args.out)
  if args.out:
    bar_chart(rows, args.out.with_suffix(".png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
