"""Factor refresh: time and energy of each method on FNO spectral-weight gradients.

For each FNO configuration, the gradient of the first spectral weight is taken
from the real model (Flax NNX FNO of ``examples/fno``) on Gaussian-random-field
inputs, once at initialisation and once after a few Adam steps. Then, in one
process, side by side:

* every refresh method: its time
  (jitted, median of repeats) and the energy its core keeps,
  ``||G x_n U_n^H||^2 / ||G||^2``, as ratios to exact HOSVD by SVD; first
  refresh from scratch, and later refresh warm from the factors of the
  earlier gradient;
* the whole refresh step: the jitted ``tensor_galore`` ``update()`` at a
  refresh count, warm, projection and Adam included, against the SVD-HOSVD
  factor computation alone (target: at least 5x faster, at >= 99% energy);
* the steady (non-refresh) step against ``optax.adam`` on the full tensor
  (target: at most 1.5x).

Usage, from the repository root::

  python -m benchmarks.refresh --configs ns64,ns128 --out benchmarks/results/refresh.json
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import common
from examples.fno import data, losses, model
from examples.fno.tables import markdown_table
from tensor_galore_optax import (
  _refresh,  # private: the factors alone, timed without the rest of a step, have no public API
  tensor_galore,
)

# Name: (preset, resolution, batch). ns64 is a 64x64 NS model with 32x32 modes.
CONFIGS = {
  "ns64": (model.FNOConfig(modes=(32, 32), width=64, projection_ratio=4), 64, 8),
  "ns128": (model.PRESETS["ns128"], 128, 8),
}
RANK = 0.25


def spectral_gradients(config_name: str, adam_steps: int = 5, seed: int = 0):
  """Gradients of the first spectral weight: at init and after ``adam_steps``."""
  config, resolution, batch = CONFIGS[config_name]
  net = config.make(1, 1, resolution=(resolution, resolution), rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(net)
  key = jax.random.key(seed)
  x = data.gaussian_random_field(jax.random.normal(key, (batch, 2, resolution, resolution)))
  # A nonlinear, non-local target, so gradients are those of a real regression.
  y = jnp.roll(x, resolution // 8, axis=1) + 0.5 * x**2
  x, y = x[..., None], y[..., None]

  @jax.jit
  def grad_fn(params):
    loss = lambda p: losses.relative_lp(model.apply(graphdef, p, x), y)
    return optax.tree.conj(jax.grad(loss)(params))

  def first_spectral(tree):
    return tree["blocks"][0]["spectral"]["weight"][...]

  adam = optax.adam(1e-3)
  state = adam.init(params)
  first = grad_fn(params)
  grads = first
  for _ in range(adam_steps):
    updates, state = adam.update(grads, state)
    params = optax.apply_updates(params, updates)
    grads = grad_fn(params)
  return first_spectral(first), first_spectral(grads)


def energy(tensor, factors) -> float:
  """The fraction ``||G x_n U_n^H||^2 / ||G||^2`` of the energy the core keeps.

  ``factors[n]`` is mode ``n``'s. The core is computed here, mode by mode,
  independently of the library's projection.
  """
  core = tensor
  for mode, factor in enumerate(factors):
    core = jnp.moveaxis(jnp.tensordot(core, factor.conj(), axes=(mode, 0)), -1, mode)
  return float(jnp.linalg.norm(core) ** 2 / jnp.linalg.norm(tensor) ** 2)


def run(config_name: str, repeats: int) -> dict:
  """Times and energies of every refresh method, and of the whole update, on one config."""
  g0, g1 = spectral_gradients(config_name)
  # The state of a fresh transformation holds the initial (identity-like)
  # factors of the shapes the rank gives: every mode of a spectral weight is
  # projected. A refresh from them is a first refresh, from scratch; from
  # earlier factors, a warm one.
  eye = tuple(tensor_galore(RANK).init({"w": g0}).factors["w"])
  assert len(eye) == g0.ndim, [f.shape for f in eye]
  modes = tuple(range(g0.ndim))
  refresh = jax.jit(
    lambda t, f, method: _refresh.refresh_factors(t, f, modes, method), static_argnames="method"
  )
  svd_first = refresh(g0, eye, method="svd")
  svd_later = refresh(g1, svd_first, method="svd")
  svd_time = common.timed(lambda t, f: refresh(t, f, method="svd"), g1, svd_first, repeats=repeats)
  rows = []
  for method in _refresh.REFRESH_METHODS:
    first = refresh(g0, eye, method=method)
    later = refresh(g1, first, method=method)
    t = common.timed(lambda g, f, m=method: refresh(g, f, method=m), g1, first, repeats=repeats)
    rows.append(
      {
        "method": method,
        "refresh_seconds": t,
        "speedup_vs_svd": svd_time / t,
        "energy_first_vs_svd": energy(g0, first) / energy(g0, svd_first),
        "energy_later_vs_svd": energy(g1, later) / energy(g1, svd_later),
        "energy_later": energy(g1, later),
      }
    )

  # Whole jitted update() of the transformation on this one weight.
  params = {"w": g0}
  adam_full = optax.scale_by_adam()
  adam_state = adam_full.init(params)
  adam_time = common.timed(jax.jit(adam_full.update), {"w": g1}, adam_state, repeats=repeats)
  gap = 200
  steps = {}
  for method in _refresh.REFRESH_METHODS:
    tx = tensor_galore(RANK, update_proj_gap=gap, refresh_method=method)
    update = jax.jit(tx.update)
    state = tx.init(params)
    _, state = update({"w": g0}, state)  # step 0: factors from the first gradient
    refresh_state = state._replace(count=jnp.asarray(gap, jnp.int32))
    steady_state = state._replace(count=jnp.asarray(gap + 1, jnp.int32))
    steps[method] = {
      "refresh_step_seconds": common.timed(update, {"w": g1}, refresh_state, repeats=repeats),
      "steady_step_seconds": common.timed(update, {"w": g1}, steady_state, repeats=repeats),
    }
  for row in rows:
    s = steps[row["method"]]
    row.update(s)
    row["refresh_step_speedup_vs_svd_factors"] = svd_time / s["refresh_step_seconds"]
    row["steady_step_vs_adam"] = s["steady_step_seconds"] / adam_time
  return {
    "config": config_name,
    "shape": list(g0.shape),
    "dtype": str(g0.dtype),
    "rank": RANK,
    "ranks": [f.shape[1] for f in eye],
    "svd_hosvd_seconds": svd_time,
    "adam_full_step_seconds": adam_time,
    "methods": rows,
  }


COLUMNS = (
  ("method", lambda m: m["method"]),
  (
    "refresh (vs SVD)",
    lambda m: f"{m['refresh_seconds'] * 1e3:.0f} ms ({m['speedup_vs_svd']:.1f}x faster)",
  ),
  ("energy, first refresh (vs SVD)", lambda m: f"{m['energy_first_vs_svd']:.4f}"),
  ("energy, warm refresh (vs SVD)", lambda m: f"{m['energy_later_vs_svd']:.4f}"),
  (
    "whole refresh step: SVD factors / step",
    lambda m: f"{m['refresh_step_speedup_vs_svd_factors']:.1f}x",
  ),
  ("steady step / adam", lambda m: f"{m['steady_step_vs_adam']:.2f}x"),
)


def markdown(results: list[dict]) -> str:
  """One paragraph and one table per configuration."""
  parts = []
  for r in results:
    parts += [
      f"**{r['config']}**: gradient {tuple(r['shape'])} {r['dtype']}, core {tuple(r['ranks'])}; "
      f"SVD-HOSVD factors {r['svd_hosvd_seconds'] * 1e3:.0f} ms keeping "
      f"{r['methods'][0]['energy_later']:.4f} of the energy, "
      f"optax.adam step on the full tensor {r['adam_full_step_seconds'] * 1e3:.1f} ms.",
      "",
      markdown_table(r["methods"], COLUMNS),
      "",
    ]
  return "\n".join(parts)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.refresh", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--configs", default="ns64,ns128")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  names = args.configs.split(",")
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
  results = [run(name, args.repeats) for name in names]
  common.report({"results": results}, markdown(results), args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
