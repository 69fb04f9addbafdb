"""The factor refresh: the library's ST-HOSVD against plain HOSVD by full SVDs.

For each FNO configuration, the gradient of the first spectral weight is taken
from the real model (the FNO of `examples.fno.model`) on Gaussian-random-field
inputs, once at initialisation and once after a few Adam steps. Every mode of
it is projected at rank 0.25 (`TuckerSpec(num_projected="all")`, the most work
a refresh does). Then, in one process, side by side:

* the reference, written here: plain HOSVD, each factor the leading left
  singular vectors of a full SVD of the gradient's mode-n unfolding (jitted,
  median of repeats), and the energy its core keeps,
  ``||G x_n U_n^H||^2 / ||G||^2``;
* the library's refresh (sequentially truncated HOSVD through QR and small
  SVDs): the whole jitted ``tensor_galore`` ``update()`` at a refresh step,
  warm, projection and Adam included, and the energy of the factors it leaves
  in the state, first from scratch and then warm from the earlier ones;
* the steady (non-refresh) ``update()`` against ``optax.scale_by_adam`` on the
  full tensor.

Usage, from the repository root::

  python -m benchmarks.refresh --configs ns64,ns128 --out benchmarks/results/refresh.json
"""

import argparse
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import common, losses
from benchmarks.tables import markdown_table
from examples.fno import data, model
from tensor_galore_optax import TuckerSpec, tensor_galore

# Name: (preset, resolution, batch). ns64 is a 64x64 NS model with 32x32 modes.
CONFIGS = {
  "ns64": (model.FNOConfig(modes=(32, 32), width=64, projection_ratio=4), 64, 8),
  "ns128": (model.PRESETS["ns128"], 128, 8),
}
RANK = 0.25
GAP = 200


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
    loss = lambda p: losses.relative_lp(nnx.merge(graphdef, p)(x), y)
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


def hosvd(tensor: jax.Array, ranks) -> tuple[jax.Array, ...]:
  """Plain HOSVD: each mode's leading left singular vectors of a full SVD of its unfolding."""
  factors = []
  for mode, rank in enumerate(ranks):
    unfolded = jnp.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
    u, _, _ = jnp.linalg.svd(unfolded, full_matrices=False)
    factors.append(u[:, :rank])
  return tuple(factors)


def run(config_name: str, repeats: int) -> dict:
  """Times and energies of the two refreshes, and of the whole update, on one config."""
  g0, g1 = spectral_gradients(config_name)
  tx = tensor_galore(rank=RANK, update_proj_gap=GAP, spec=TuckerSpec(num_projected="all"))
  params = {"w": g0}
  update = jax.jit(tx.update)
  state = tx.init(params)
  ranks = tuple(f.shape[1] for f in state.factors["w"])
  assert len(ranks) == g0.ndim, ranks  # every mode projected
  _, state = update({"w": g0}, state)  # step 0: the first factors, from scratch
  first = state.factors["w"]
  refresh_state = state._replace(count=jnp.asarray(GAP, jnp.int32))
  steady_state = state._replace(count=jnp.asarray(GAP + 1, jnp.int32))
  _, later_state = update({"w": g1}, refresh_state)
  reference = jax.jit(hosvd, static_argnums=1)
  adam = optax.scale_by_adam()
  adam_time = common.timed(jax.jit(adam.update), {"w": g1}, adam.init(params), repeats=repeats)
  svd_time = common.timed(reference, g1, ranks, repeats=repeats)
  refresh_step = common.timed(update, {"w": g1}, refresh_state, repeats=repeats)
  steady_step = common.timed(update, {"w": g1}, steady_state, repeats=repeats)
  svd_first, svd_later = reference(g0, ranks), reference(g1, ranks)
  return {
    "config": config_name,
    "shape": list(g0.shape),
    "dtype": str(g0.dtype),
    "rank": RANK,
    "ranks": list(ranks),
    "hosvd_seconds": svd_time,
    "hosvd_energy_first": energy(g0, svd_first),
    "hosvd_energy_later": energy(g1, svd_later),
    "refresh_step_seconds": refresh_step,
    "steady_step_seconds": steady_step,
    "energy_first": energy(g0, first),
    "energy_later": energy(g1, later_state.factors["w"]),
    "adam_full_step_seconds": adam_time,
    "entries": math.prod(g0.shape),
  }


COLUMNS = (
  ("weight, core", lambda r: f"{r['config']}: {tuple(r['shape'])}, {tuple(r['ranks'])}"),
  ("HOSVD by full SVDs (factors only)", lambda r: f"{r['hosvd_seconds'] * 1e3:.0f} ms"),
  (
    "library: whole refresh step",
    lambda r: (
      f"{r['refresh_step_seconds'] * 1e3:.0f} ms "
      f"({r['hosvd_seconds'] / r['refresh_step_seconds']:.1f}x faster)"
    ),
  ),
  (
    "energy kept, first / warm refresh (HOSVD's)",
    lambda r: (
      f"{r['energy_first']:.4f} / {r['energy_later']:.4f} "
      f"({r['hosvd_energy_first']:.4f} / {r['hosvd_energy_later']:.4f})"
    ),
  ),
  (
    "steady step / optax.scale_by_adam",
    lambda r: f"{r['steady_step_seconds'] / r['adam_full_step_seconds']:.2f}x",
  ),
)


def markdown(results: list[dict]) -> str:
  """One table, a row per configuration."""
  return markdown_table(results, COLUMNS)


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
