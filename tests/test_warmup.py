"""The warm-up of a refresh's new directions (``refresh_warmup_steps``).

The warm-up only scales the step: factors, moments and the residual's statistics are those of
the same optimizer without it, so every test compares against ``refresh_warmup_steps=0``.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensor_galore_optax import (
  _warmup,
  optimizer_state_bytes,
  projection_plan,
  tensor_galore,
  tensor_galore_adamw,
)
from tests._helpers import normal, orthonormal, raises_naming

LR = 1e-2
GAP = 5
SPECTRAL = (24, 24, 8, 5)  # an FNO spectral weight: complex, projected on its input channels


def _params():
  return {
    "w": normal(jax.random.key(0), SPECTRAL),
    "m": normal(jax.random.key(1), (160, 128), jnp.float32),  # a matrix: it has a residual step
    "b": jnp.zeros(24),  # left whole
  }


def _grads(seed: int, params=None):
  params = _params() if params is None else params
  keys = jax.random.split(jax.random.key(100 + seed), len(params))
  return {k: normal(key, p.shape, p.dtype) for key, (k, p) in zip(keys, sorted(params.items()))}


def _pair(steps: int, **kwargs):
  """The optimizer with a warm-up of ``steps`` and without one, jitted."""
  warm = tensor_galore_adamw(LR, update_proj_gap=GAP, refresh_warmup_steps=steps, **kwargs)
  cold = tensor_galore_adamw(LR, update_proj_gap=GAP, refresh_warmup_steps=0, **kwargs)
  return warm, cold


def _run(warm, cold, params, grads_at, steps: int):
  """Both optimizers over ``steps`` steps: the updates of each, and the warm one's states."""
  ws, cs = warm.init(params), cold.init(params)
  w_update, c_update = jax.jit(warm.update), jax.jit(cold.update)
  out = []
  for step in range(steps):
    grads = grads_at(step)
    u, ws = w_update(grads, ws, params)
    v, cs = c_update(grads, cs, params)
    out.append((u, v, ws))
  return out


def test_until_the_first_refresh_after_step_0_nothing_changes():
  params = _params()
  for u, v, _ in _run(*_pair(4), params, _grads, GAP):
    chex.assert_trees_all_equal(u, v)


@pytest.mark.parametrize("residual_scale", [None, 4.0])
def test_at_a_refresh_new_columns_start_small_and_the_rest_moves_as_without_a_warm_up(
  residual_scale,
):
  """At the refresh, the projected step along each factor column is the cold one's times
  ``1 - novelty (1 - 1/K)``; outside the subspace (the matrix's residual step) and on leaves
  left whole it is the cold one's. The residual step, normalised entry by entry, also has a
  part inside the span, which does not warm up: the formula is checked without it."""
  params, steps = _params(), 4
  warm, cold = _pair(steps, residual_scale=residual_scale)
  *_, (u, v, state) = _run(warm, cold, params, _grads, GAP + 1)
  galore = state[0]
  chex.assert_trees_all_equal(u["b"], v["b"])
  for k in ("w", "m"):
    (novelty,) = galore.novelty[k]
    (factor,) = galore.factors[k]
    # Unrelated gradients: most of each new column is new.
    assert 0.5 < float(jnp.mean(novelty)) <= 1.0, k
    mode = 0 if k == "w" else int(np.argmin(params[k].shape))
    # The steps before the learning rate and the decay, as rows along the projected mode.
    rows = [
      jnp.moveaxis(-x[k] / LR - 1e-4 * params[k], mode, 0).reshape(factor.shape[0], -1)
      for x in (u, v)
    ]
    along, cold_along = (factor.conj().T @ x for x in rows)
    rest, cold_rest = (x - factor @ (factor.conj().T @ x) for x in rows)
    np.testing.assert_allclose(rest, cold_rest, rtol=1e-4, atol=1e-5, err_msg=k)
    if k == "m" and residual_scale is not None:
      assert not np.allclose(along, cold_along, rtol=1e-3), k
      continue
    expected = (1 - novelty * (1 - 1 / steps))[:, None] * cold_along
    np.testing.assert_allclose(along, expected, rtol=1e-4, atol=1e-5, err_msg=k)
    assert float(jnp.linalg.norm(along)) < 0.8 * float(jnp.linalg.norm(cold_along)), k


def test_the_warm_up_ends_after_its_steps_and_a_long_one_at_the_next_refresh():
  params = _params()
  for steps, last in ((3, GAP + 2), (100, 2 * GAP - 1)):
    runs = _run(*_pair(steps), params, _grads, last + 1)
    u, v, _ = runs[last]
    chex.assert_trees_all_close(u, v, rtol=1e-6, atol=1e-9)
    u, v, _ = runs[last - 1]
    assert not np.allclose(u["w"], v["w"], rtol=1e-3), steps  # still warming up the step before


def test_a_refresh_that_keeps_its_subspace_warms_nothing():
  params = _params()
  grads = _grads(0)
  *_, (u, v, state) = _run(*_pair(4), params, lambda step: grads, GAP + 1)
  for k in ("w", "m"):
    assert float(jnp.max(state[0].novelty[k][0])) < 1e-5, k
  chex.assert_trees_all_close(u, v, rtol=1e-5, atol=1e-7)


def test_novelty_is_the_part_of_each_new_column_outside_the_old_span():
  unitary = orthonormal(jax.random.key(0), 16, 16)
  old, outside = unitary[:, :6], unitary[:, 6:10]  # outside: orthogonal to old's span
  phase = jnp.exp(1j * jnp.arange(6.0)).astype(jnp.complex64)
  kept = old * phase  # the same directions, other phases
  half = (old[:, :2] + outside[:, :2]) / math.sqrt(2)
  new = jnp.concatenate([kept[:, :2], outside[:, 2:4], half], axis=1)
  (novelty,) = _warmup.novelty((new,), (old,))
  np.testing.assert_allclose(novelty, [0, 0, 1, 1, 0.5, 0.5], atol=1e-5)
  # Batch axes in front: one novelty per layer.
  (stacked,) = _warmup.novelty((jnp.stack([new, kept]),), (jnp.stack([old, old]),))
  np.testing.assert_allclose(stacked, [[0, 0, 1, 1, 0.5, 0.5], [0] * 6], atol=1e-5)


def test_stacked_layers_warm_up_each_by_its_own_novelty():
  """A stacked matrix whose layer 0 sees one gradient throughout and layer 1 a new one after
  step 0: only layer 1's columns are new, and only layer 1's step changes at the refresh."""
  params = {"stack": normal(jax.random.key(3), (2, 64, 48), jnp.float32)}
  fixed = normal(jax.random.key(4), (64, 48), jnp.float32)

  def grads_at(step):
    other = normal(jax.random.key(200 + step), (64, 48), jnp.float32)
    return {"stack": jnp.stack([fixed, other])}

  warm, cold = _pair(4, min_size=1)
  *_, (u, v, state) = _run(warm, cold, params, grads_at, GAP + 1)
  (novelty,) = state[0].novelty["stack"]
  assert novelty.shape == (2, 12)  # a quarter of the 48 columns, per layer
  assert float(jnp.max(novelty[0])) < 1e-5
  assert float(jnp.mean(novelty[1])) > 0.5
  np.testing.assert_allclose(u["stack"][0], v["stack"][0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(u["stack"][1], v["stack"][1], rtol=1e-3)


def test_the_state_holds_one_real_number_per_factor_column():
  params = {**_params(), "stack": jnp.ones((3, 64, 48))}
  warm = tensor_galore(rank=0.25, min_size=1000)
  cold = tensor_galore(rank=0.25, min_size=1000, refresh_warmup_steps=0)
  state = warm.init(params)
  shapes = jax.tree.map(lambda n: (n.shape, n.dtype), state.novelty)
  assert shapes == {
    "w": (((6,), jnp.float32),),  # complex factors, real novelty
    "m": (((32,), jnp.float32),),
    "stack": (((3, 12), jnp.float32),),
    "b": (),
  }
  assert jax.tree.leaves(cold.init(params).novelty) == []
  columns = 6 + 32 + 3 * 12
  added = optimizer_state_bytes(warm, params) - optimizer_state_bytes(cold, params)
  assert added == 4 * columns
  for steps in (0, 50):
    report = projection_plan(params, rank=0.25, min_size=1000, refresh_warmup_steps=steps)
    tx = tensor_galore_adamw(LR, rank=0.25, min_size=1000, refresh_warmup_steps=steps)
    assert report.state_bytes == optimizer_state_bytes(tx, params)


def test_a_traced_warm_up_from_inject_hyperparams_is_a_hyper_parameter():
  """``optax.inject_hyperparams`` traces ``refresh_warmup_steps``: 0 there is no warm-up."""
  params, steps = _params(), GAP + 1
  factory = optax.inject_hyperparams(
    tensor_galore_adamw,
    static_args=("rank", "update_proj_gap", "min_size"),
    hyperparam_dtype=jnp.float32,
  )
  injected = factory(learning_rate=LR, update_proj_gap=GAP, refresh_warmup_steps=4)
  warm, cold = _pair(4)
  runs = _run(injected, warm, params, _grads, steps)
  chex.assert_trees_all_close(runs[-1][0], runs[-1][1], rtol=1e-5, atol=1e-7)
  injected = factory(learning_rate=LR, update_proj_gap=GAP, refresh_warmup_steps=0)
  runs = _run(injected, cold, params, _grads, steps)
  chex.assert_trees_all_close(runs[-1][0], runs[-1][1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
  ("value", "error"), [(-1, ValueError), (2.5, TypeError), ("50", TypeError), (True, TypeError)]
)
def test_a_bad_warm_up_is_refused_naming_it(value, error):
  with raises_naming(error, "refresh_warmup_steps"):
    tensor_galore_adamw(LR, refresh_warmup_steps=value)


def test_a_state_without_novelty_is_refused_naming_the_leaf_and_the_argument():
  params = _params()
  cold = tensor_galore(rank=0.25, refresh_warmup_steps=0, min_size=1000)
  warm = tensor_galore(rank=0.25, min_size=1000)
  with raises_naming(ValueError, "leaf ['m']", "novelty", "refresh_warmup_steps", "init"):
    warm.update(_grads(0), cold.init(params))
