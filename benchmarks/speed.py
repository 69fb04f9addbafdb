"""Speed of a real FNO train step: AdamW, matrix GaLore and Tensor-GaLore side by side.

In one process, for each optimizer: the jitted train step (forward, backward,
optimizer, ``apply_updates``) is timed at a steady step (no refresh) and at a
refresh step (factors recomputed), median of ``--repeats`` after a warm-up.
Reported as ratios to AdamW's step measured in the same run, plus the
amortised step at ``--gap``: ``(refresh + (gap - 1) * steady) / gap``.

Usage::

  python benchmarks/speed.py --config small --out benchmarks/results/speed_small.json
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

from tensor_galore_optax import TensorGaLoreState  # noqa: E402


def at_count(state, count: int):
  """The state with its Tensor-GaLore step counter set (refresh or not)."""
  return jax.tree.map(
    lambda s: (
      s._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(s, TensorGaLoreState) else s
    ),
    state,
    is_leaf=lambda s: isinstance(s, TensorGaLoreState),
  )


def measure(config_name: str, rank: float, gap: int, repeats: int, methods):
  config = common.CONFIGS[config_name]
  graphdef, params = common.build_params(config)
  rng = np.random.default_rng(0)
  shape = (config.batch, config.resolution, config.resolution, 1)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  y = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  plan = (
    [("adamw", None)] + [("galore", m) for m in methods] + [("tensor_galore", m) for m in methods]
  )
  rows = []
  for name, method in plan:
    kwargs = {"update_proj_gap": gap}
    if method:
      kwargs["refresh_method"] = method
    optimizer, used_rank = common.make_optimizer(name, rank, params, **kwargs)
    step = jax.jit(common.train_step(graphdef, optimizer))
    state = optimizer.init(params)
    _, state, _ = step(params, state, x, y)  # step 0 computes the first factors
    steady = common.timed(step, params, at_count(state, 1), x, y, repeats=repeats)
    refresh = common.timed(step, params, at_count(state, gap), x, y, repeats=repeats)
    row = {
      "config": config_name,
      "optimizer": name,
      "rank": None if name == "adamw" else rank,
      "refresh_method": method,
      "steady_seconds": steady,
      "refresh_seconds": refresh,
      "amortised_seconds": (refresh + (gap - 1) * steady) / gap,
      "update_proj_gap": gap,
    }
    if name == "galore":
      row["galore_int_rank"] = used_rank
    rows.append(row)
    print(
      f"{name:14s} {method or '':9s} steady {steady * 1e3:8.1f} ms  refresh "
      f"{refresh * 1e3:8.1f} ms",
      flush=True,
    )
  adamw = rows[0]["steady_seconds"]
  for row in rows:
    for key in ("steady", "refresh", "amortised"):
      row[f"{key}_vs_adamw"] = row[f"{key}_seconds"] / adamw
  return rows


def markdown(rows) -> str:
  lines = [
    "| optimizer | refresh method | steady step ms (vs adamw) | refresh step ms (vs adamw) | "
    f"amortised at gap {rows[0]['update_proj_gap']} (vs adamw) |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    name = r["optimizer"] + ("" if r["rank"] is None else f" {r['rank']}")
    if "galore_int_rank" in r:
      name += f" (r={r['galore_int_rank']})"
    lines.append(
      f"| {name} | {r['refresh_method'] or ''} | {r['steady_seconds'] * 1e3:.1f} "
      f"({r['steady_vs_adamw']:.2f}x) | {r['refresh_seconds'] * 1e3:.1f} "
      f"({r['refresh_vs_adamw']:.2f}x) | {r['amortised_seconds'] * 1e3:.1f} "
      f"({r['amortised_vs_adamw']:.3f}x) |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="small")
  parser.add_argument("--rank", type=float, default=0.25)
  parser.add_argument("--gap", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--methods", default="sthosvd", help="comma-separated refresh methods to time"
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  rows = measure(args.config, args.rank, args.gap, args.repeats, args.methods.split(","))
  common.report(rows, markdown(rows), args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
