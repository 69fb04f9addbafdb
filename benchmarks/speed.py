"""Speed of a real FNO train step: AdamW, Adafactor, matrix GaLore and Tensor-GaLore.

In one process, for each optimizer: the jitted train step (forward, backward,
optimizer, ``apply_updates``) is timed at a steady step (no refresh) and at a
refresh step (factors recomputed), median of ``--repeats`` after a warm-up.
Reported as ratios to AdamW's step measured in the same run, plus the
amortised step at ``--gap``: ``(refresh + (gap - 1) * steady) / gap``.

Usage, from the repository root::

  python -m benchmarks.speed --config small --out benchmarks/results/speed_small.json
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.steps import make_train_step
from benchmarks.tables import markdown_table
from tensor_galore_optax import TensorGaLoreState


def at_count(state, count: int):
  """The state with its Tensor-GaLore step counter set (refresh or not)."""
  return jax.tree.map(
    lambda s: (
      s._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(s, TensorGaLoreState) else s
    ),
    state,
    is_leaf=lambda s: isinstance(s, TensorGaLoreState),
  )


def measure(config_name: str, rank: float, gap: int, repeats: int, names):
  """Steady, refresh and amortised step times per optimizer, with ratios to AdamW's."""
  config = common.CONFIGS[config_name]
  graphdef, params = common.build_params(config)
  rng = np.random.default_rng(0)
  shape = (config.batch, config.resolution, config.resolution, 1)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  y = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  rows = []
  for name in ["adamw", *names]:
    optimizer, used_rank = common.make_optimizer(name, rank, params, update_proj_gap=gap)
    step = jax.jit(make_train_step(graphdef, optimizer))
    state = optimizer.init(params)
    _, state, _ = step(params, state, x, y)  # step 0 computes the first factors
    steady = common.timed(step, params, at_count(state, 1), x, y, repeats=repeats)
    refresh = common.timed(step, params, at_count(state, gap), x, y, repeats=repeats)
    row = {
      "config": config_name,
      "optimizer": name,
      "rank": rank if common.has_rank(name) else None,
      "steady_seconds": steady,
      "refresh_seconds": refresh,
      "amortised_seconds": (refresh + (gap - 1) * steady) / gap,
      "update_proj_gap": gap,
    }
    if name == "galore":
      row["galore_int_rank"] = used_rank
    rows.append(row)
    print(
      f"{name:24s} steady {steady * 1e3:8.1f} ms  refresh {refresh * 1e3:8.1f} ms",
      flush=True,
    )
  adamw = rows[0]["steady_seconds"]
  for row in rows:
    for key in ("steady", "refresh", "amortised"):
      row[f"{key}_vs_adamw"] = row[f"{key}_seconds"] / adamw
  return rows


def _ms(key: str, digits: int = 2):
  """A cell of ``row[key + "_seconds"]`` in ms, with its ratio to AdamW's."""
  return lambda r: f"{r[key + '_seconds'] * 1e3:.1f} ({r[key + '_vs_adamw']:.{digits}f}x)"


def markdown(rows) -> str:
  """The table of `measure`'s rows."""
  columns = (
    ("optimizer", lambda r: f"{r['optimizer']} {common.rank_text(r)}".rstrip()),
    ("steady step ms (vs adamw)", _ms("steady")),
    ("refresh step ms (vs adamw)", _ms("refresh")),
    (f"amortised at gap {rows[0]['update_proj_gap']} (vs adamw)", _ms("amortised", 3)),
  )
  return markdown_table(rows, columns)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.speed", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="small")
  parser.add_argument("--rank", type=float, default=0.25)
  parser.add_argument("--gap", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--optimizers",
    default="galore,tensor_galore",
    help="optimizer variants (`benchmarks.variants`) beside adamw, comma-separated",
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  rows = measure(args.config, args.rank, args.gap, args.repeats, args.optimizers.split(","))
  common.report({"rows": rows}, markdown(rows), args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
