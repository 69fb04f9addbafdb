"""``scale="matched"``: projected weights get full-size Adam's step length."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import normal as _normal

from tensor_galore_optax import TuckerSpec, tensor_galore, tensor_galore_adamw

CASES = {
  # (shape, spec, rank, dtype): every mode, a matrix on one side, stacked layers.
  "tensor": ((12, 10, 6, 4), TuckerSpec(), 0.2, jnp.complex64),
  "matrix": ((40, 24), TuckerSpec(num_projected=1), 5, jnp.float32),  # residual off below
  "stacked": ((3, 8, 8, 5), TuckerSpec(batch_axes=(0,)), 0.3, jnp.complex64),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_first_step_is_as_long_as_full_size_adams(case):
  """Adam's first step moves every entry by exactly 1 (``g / |g|``): ``sqrt(entries)`` in all,
  full-size; on a core of ``R`` entries, ``sqrt(R)``; "matched" multiplies by ``sqrt(I / R)``."""
  shape, spec, rank, dtype = CASES[case]
  grads = {"w": _normal(jax.random.key(0), shape, dtype), "b": jnp.linspace(-1.0, 1.0, 8)}
  full = optax.scale_by_adam(eps=0.0)
  expected, _ = full.update(grads, full.init(grads))
  for scale, length in (("matched", 1.0), (1.0, None)):
    tx = tensor_galore(
      rank=rank,
      scale=scale,
      spec={"w": spec, "b": None},
      base_optimizer=optax.scale_by_adam(eps=0.0),
      residual_scale=None,  # the projected step alone
    )
    state = tx.init(grads)
    updates, state = jax.jit(tx.update)(grads, state)
    ratio = float(jnp.linalg.norm(updates["w"]) / jnp.linalg.norm(expected["w"]))
    core = state.base_optimizer_state.mu["w"]
    if length is None:  # unscaled: sqrt(R / I) as long
      length = math.sqrt(core.size / math.prod(shape))
    assert ratio == pytest.approx(length, rel=1e-5)
    # Not projected: Adam's own first step, sign(g) (no zero entry: eps=0 would make it 0/0).
    chex.assert_tree_all_finite(updates["b"])
    chex.assert_trees_all_close(updates["b"], expected["b"])


def test_matched_is_the_number_sqrt_entries_over_core_entries():
  grads = {"w": _normal(jax.random.key(1), (3, 8, 8, 5), jnp.complex64)}
  spec = TuckerSpec(batch_axes=(0,))
  matched = tensor_galore_adamw(1e-2, rank=0.3, spec=spec, scale="matched")
  state = matched.init(grads)
  core = state[0].base_optimizer_state.mu["w"]
  number = math.sqrt(3 * 8 * 8 * 5 / core.size)
  explicit = tensor_galore_adamw(1e-2, rank=0.3, spec=spec, scale=number)
  for _ in range(3):
    updates, state = jax.jit(matched.update)(grads, state, grads)
  explicit_state = explicit.init(grads)
  for _ in range(3):
    expected, explicit_state = jax.jit(explicit.update)(grads, explicit_state, grads)
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-5, atol=1e-7)


def test_matched_runs_under_inject_hyperparams():
  grads = {"w": _normal(jax.random.key(2), (6, 5, 4), jnp.complex64)}
  tx = optax.inject_hyperparams(
    tensor_galore_adamw, static_args=("rank", "min_size", "update_proj_gap", "scale")
  )(learning_rate=1e-2, rank=0.5, min_size=1, scale="matched")
  updates, _ = jax.jit(tx.update)(grads, tx.init(grads), grads)
  plain = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, scale="matched")
  expected, _ = jax.jit(plain.update)(grads, plain.init(grads), grads)
  # The same arithmetic, injected or not (the decay rates are arrays either way; the learning
  # rate is a float32 array injected, a Python float here): a few float32 ulps.
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-9)
