"""Speed of a real FNO train step: AdamW, Adafactor, matrix GaLore and Tensor-GaLore.

In one process, for each optimizer: the jitted train step (forward, backward,
optimizer, ``apply_updates``) is timed at a steady step (no refresh) and at a
refresh step (factors recomputed), ``--repeats`` rounds after a warm-up, the
optimizers taking turns in every round. Reported as ratios to AdamW's steady
step in the same round (medians over the rounds), plus the amortised step at
``--gap``: ``(refresh + (gap - 1) * steady) / gap``.

Usage, from the repository root::

  python -m benchmarks.speed --config small --out benchmarks/results/speed_small.json
"""

import argparse
import pathlib
import statistics
import sys
import time

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


def _seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(config_name: str, rank: float, gap: int, repeats: int, names):
  """Steady, refresh and amortised step times per optimizer, with ratios to AdamW's.

  The optimizers take turns: each round times every optimizer's steady and refresh step once,
  and a ratio is taken within its round, so that a machine whose load drifts (a shared CPU)
  moves all of a round's times together. Times and ratios are medians over the rounds.
  """
  config = common.CONFIGS[config_name]
  graphdef, params = common.build_params(config)
  rng = np.random.default_rng(0)
  shape = (config.batch, config.resolution, config.resolution, 1)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  y = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  rows, calls = [], []
  for name in ["adamw", *names]:
    optimizer, used_rank = common.make_optimizer(name, rank, params, update_proj_gap=gap)
    step = jax.jit(make_train_step(graphdef, optimizer))
    state = optimizer.init(params)
    _, state, _ = step(params, state, x, y)  # step 0 compiles and computes the first factors
    steady, refresh = at_count(state, 1), at_count(state, gap)
    jax.block_until_ready(step(params, refresh, x, y))  # warm: the refresh branch too
    calls.append((step, steady, refresh))
    row = {"config": config_name, "optimizer": name, "update_proj_gap": gap}
    row["rank"] = rank if common.has_rank(name) else None
    if name == "galore":
      row["galore_int_rank"] = used_rank
    rows.append(row)
  times = [[] for _ in rows]
  for _ in range(repeats):
    for timings, (step, steady, refresh) in zip(times, calls):
      timings.append((_seconds(step, params, steady, x, y), _seconds(step, params, refresh, x, y)))
  for row, timings in zip(rows, times):
    steady = [t[0] for t in timings]
    refresh = [t[1] for t in timings]
    amortised = [(r + (gap - 1) * s) / gap for s, r in zip(steady, refresh)]
    adamw = [t[0] for t in times[0]]  # AdamW's steady step, round by round
    for key, values in (("steady", steady), ("refresh", refresh), ("amortised", amortised)):
      row[f"{key}_seconds"] = statistics.median(values)
      row[f"{key}_vs_adamw"] = statistics.median([v / a for v, a in zip(values, adamw)])
    print(
      f"{row['optimizer']:24s} steady {row['steady_seconds'] * 1e3:8.1f} ms  "
      f"refresh {row['refresh_seconds'] * 1e3:8.1f} ms",
      flush=True,
    )
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
