"""Which basis costs Adam accuracy: a toy that runs in seconds.

Fits a complex ``(8, 6, 5)`` tensor and a bias to targets (loss
``sum |p - t|^2``), 40 steps at learning rate 5e-2, three seeds, and prints
the final loss over the initial one for Adam in the parameters' coordinates
and for Adam on a full-rank Tucker core (nothing truncated) in three frozen
bases: the identity, a random orthonormal one, and the HOSVD factors of the
step-0 gradient (what Tensor-GaLore uses). Then the factored-normalisation
variant (`scale_by_factored_rms` before a momentum-only core).

Usage, from the repository root::

  python -m benchmarks.basis_toy
"""

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import (
  TuckerSpec,
  scale_by_factored_rms,
  tensor_galore,
  tensor_galore_adamw,
)

SPEC = {"w": TuckerSpec(), "b": None}
NEVER = 10**6  # an update_proj_gap past the run: the basis stays fixed


def complex_normal(key, shape):
  re, im = jax.random.split(key)
  return (jax.random.normal(re, shape) + 1j * jax.random.normal(im, shape)).astype(jnp.complex64)


def loss_ratio(tx, seed: int, factors=None, steps: int = 40) -> float:
  """Final over initial loss; ``factors(held)`` replaces the factors, fixed from step 1 on."""
  params = {"w": complex_normal(jax.random.key(seed), (8, 6, 5)) * 0.1, "b": jnp.zeros(5)}
  target = {"w": complex_normal(jax.random.key(seed + 1), (8, 6, 5)), "b": jnp.ones(5)}
  loss = lambda p: sum(jnp.sum(jnp.abs(p[k] - target[k]) ** 2) for k in p)
  state = tx.init(params)
  if factors is not None:  # skip the step-0 refresh: count 1, factors given
    galore = state[0]
    galore = galore._replace(
      count=jnp.ones([], jnp.int32), factors={"w": factors(galore.factors["w"]), "b": ()}
    )
    state = (galore, *state[1:])

  @jax.jit
  def step(p, s):
    g = optax.tree.conj(jax.grad(loss)(p))
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  start = float(loss(params))
  for _ in range(steps):
    params, state = step(params, state)
  return float(loss(params)) / start


def random_factors(held):
  return tuple(
    jnp.linalg.qr(complex_normal(jax.random.key(100 + i), u.shape))[0] for i, u in enumerate(held)
  )


def main() -> None:
  core_adam = lambda: tensor_galore_adamw(5e-2, rank=1.0, spec=SPEC, update_proj_gap=NEVER)
  factored = lambda base: optax.chain(
    scale_by_factored_rms(min_size=1), base, optax.scale_by_learning_rate(5e-2)
  )
  runs = {
    "adam, the parameters' coordinates": lambda s: loss_ratio(optax.adam(5e-2), s),
    "core adam, identity factors": lambda s: loss_ratio(core_adam(), s, lambda held: held),
    "core adam, random orthonormal factors": lambda s: loss_ratio(core_adam(), s, random_factors),
    "core adam, HOSVD factors of step 0": lambda s: loss_ratio(core_adam(), s),
    "core adam, HOSVD factors of step 0, core_basis='mixed'": lambda s: loss_ratio(
      tensor_galore_adamw(5e-2, rank=1.0, spec=SPEC, update_proj_gap=NEVER, core_basis="mixed"), s
    ),
    "factored rms + ema, no projection": lambda s: loss_ratio(factored(optax.ema(0.9)), s),
    "factored rms + core ema, HOSVD factors": lambda s: loss_ratio(
      factored(tensor_galore(1.0, base_optimizer=optax.ema(0.9), spec=SPEC, update_proj_gap=NEVER)),
      s,
    ),
  }
  print("| run | final / initial loss, seeds 6, 16, 26 |\n|---|---|")
  for name, run in runs.items():
    print(f"| {name} | {', '.join(f'{run(seed):.4f}' for seed in (6, 16, 26))} |")


if __name__ == "__main__":
  main()
