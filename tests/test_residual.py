"""`tensor_galore(residual="scaled")`: Fira's term for the gradient outside the subspace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensor_galore_optax import TuckerSpec, tensor_galore, tensor_galore_adamw


def _complex_normal(key, shape):
  kr, ki = jax.random.split(key)
  return (jax.random.normal(kr, shape) + 1j * jax.random.normal(ki, shape)).astype(jnp.complex64)


def _update(tx, grads, state=None):
  state = tx.init(grads) if state is None else state
  return jax.jit(tx.update)(grads, state)


@pytest.mark.parametrize(
  "spec",
  [
    TuckerSpec(),  # every mode: one ratio for the tensor
    TuckerSpec(modes=(0, (1, 2)), num_projected=1, rank=3),  # one-sided: a ratio per column
    TuckerSpec(rank=(0.5, None, 0.5)),  # an unprojected mode in the middle
    TuckerSpec(batch_axes=(0,)),  # stacked layers: one ratio per layer
  ],
)
def test_with_an_identity_base_optimizer_the_update_is_the_whole_gradient(spec):
  """The base step equals the core, so the ratio is 1 and core + residual = G."""
  grads = {"w": _complex_normal(jax.random.key(0), (6, 5, 4)), "b": jnp.arange(3.0)}
  tx = tensor_galore(
    rank=0.3, min_size=1, spec=spec, base_optimizer=optax.identity(), residual="scaled"
  )
  updates, _ = _update(tx, grads)
  chex.assert_trees_all_close(updates, grads, atol=1e-5)
  dropped, _ = _update(
    tensor_galore(rank=0.3, min_size=1, spec=spec, base_optimizer=optax.identity()), grads
  )
  assert not np.allclose(dropped["w"], grads["w"], atol=1e-2)  # the residual is not negligible


def test_at_full_rank_the_residual_changes_nothing():
  grads = {"w": _complex_normal(jax.random.key(1), (6, 5, 4))}
  drop, _ = _update(tensor_galore(rank=1.0, min_size=1), grads)
  scaled, state = _update(tensor_galore(rank=1.0, min_size=1, residual="scaled"), grads)
  chex.assert_trees_all_close(scaled, drop, atol=1e-5)
  assert float(state.residual_norms["w"]) < 1e-3


def test_one_sided_matrix_scales_each_column_by_its_own_ratio():
  """Fira's rule, written out with numpy for a real matrix projected on its rows."""
  g = np.asarray(jax.random.normal(jax.random.key(2), (12, 5)), np.float64)
  tx = tensor_galore(rank=3, min_size=1, residual="scaled", factor_dtype=None)
  updates, state = _update(tx, {"w": jnp.asarray(g, jnp.float32)})
  (p,) = np.asarray(state.factors["w"], np.float64)
  core = p.T @ g
  adam = core / (np.abs(core) + 1e-8)  # Adam's first step
  ratio = np.linalg.norm(adam, axis=0) / np.linalg.norm(core, axis=0)
  expected = p @ adam + ratio * (g - p @ core)
  np.testing.assert_allclose(updates["w"], expected, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(
    state.residual_norms["w"], np.linalg.norm(ratio * (g - p @ core)), rtol=1e-4
  )


def test_the_residual_norm_grows_by_at_most_the_limit():
  g = _complex_normal(jax.random.key(3), (6, 5, 4))
  kwargs = dict(rank=0.3, min_size=1, base_optimizer=optax.identity(), update_proj_gap=100)
  tx = tensor_galore(**kwargs, residual="scaled", max_residual_growth=1.5)
  first, state = _update(tx, {"w": g})
  second, state = _update(tx, {"w": 10 * g}, state)
  projected, _ = _update(tensor_galore(**kwargs), {"w": g})
  residual = g - projected["w"]
  np.testing.assert_allclose(first["w"], g, atol=1e-5)
  # The projected part follows the gradient, the residual term only grows 1.5x.
  np.testing.assert_allclose(second["w"], 10 * projected["w"] + 1.5 * residual, atol=1e-4)
  np.testing.assert_allclose(state.residual_norms["w"], 1.5 * np.linalg.norm(residual), rtol=1e-5)


def test_zero_gradients_give_zero_updates_and_no_nans():
  grads = {"w": jnp.zeros((6, 5, 4), jnp.complex64)}
  tx = tensor_galore_adamw(1e-2, rank=0.3, min_size=1, residual="scaled")
  state = tx.init(grads)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, grads)
    chex.assert_tree_all_finite((updates, state))
    np.testing.assert_array_equal(updates["w"], 0)


def test_a_state_without_residual_norms_is_rejected_with_the_leaf_named():
  grads = {"w": jnp.ones((6, 5, 4))}
  state = tensor_galore(rank=0.3, min_size=1).init(grads)
  with pytest.raises(ValueError, match=r"\['w'\].*residual='scaled' needs a residual norm"):
    tensor_galore(rank=0.3, min_size=1, residual="scaled").update(grads, state)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    (dict(residual="fira"), "residual must be one of"),
    (dict(residual="scaled", max_residual_growth=0.5), "max_residual_growth must be at least 1"),
  ],
)
def test_bad_residual_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tensor_galore(**kwargs)


def test_scaled_residual_runs_under_inject_hyperparams():
  grads = {"w": _complex_normal(jax.random.key(4), (6, 5, 4))}
  static = ("rank", "update_proj_gap", "min_size", "residual")
  tx = optax.inject_hyperparams(tensor_galore_adamw, static_args=static)(
    learning_rate=1e-2, rank=0.3, min_size=1, residual="scaled", max_residual_growth=1.01
  )
  updates, state = jax.jit(tx.update)(grads, tx.init(grads), grads)
  chex.assert_tree_all_finite(updates)
  assert state.hyperparams["max_residual_growth"] == pytest.approx(1.01)
