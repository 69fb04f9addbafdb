"""``refresh_method="averaged"``: factors from moving averages of the unfoldings' Gram matrices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensor_galore_optax import TuckerSpec, tensor_galore, tensor_galore_adamw


def _complex_normal(key, shape):
  real, imag = jax.random.normal(key, (2, *shape))
  return (real + 1j * imag).astype(jnp.complex64)


def _unfold(x: np.ndarray, n: int) -> np.ndarray:
  return np.moveaxis(x, n, 0).reshape(x.shape[n], -1)


def _identity_averaged(**options):
  """The refresh alone: the identity on the cores, averaged Gram matrices, every mode projected."""
  return tensor_galore(
    min_size=1, refresh_method="averaged", base_optimizer=optax.identity(), **options
  )


def test_the_state_holds_the_moving_average_of_unit_trace_gram_matrices():
  """The reference, in NumPy: ``G_n <- b G_n + (1 - b) A_n A_n^H / |A|^2`` from zero."""
  shape, decay = (6, 5, 4), 0.8
  grads = [_complex_normal(jax.random.key(k), shape) * (10.0**k) for k in range(3)]
  tx = _identity_averaged(rank=0.5, gram_decay=decay, update_proj_gap=2)
  state = tx.init({"w": grads[0]})
  update = jax.jit(tx.update)
  for g in grads:
    _, state = update({"w": g}, state)
  for n, gram in enumerate(state.grams["w"]):
    expected = np.zeros((shape[n], shape[n]), np.complex128)
    for g in map(np.asarray, grads):
      a = _unfold(g.astype(np.complex128), n)
      expected = decay * expected + (1 - decay) * (a @ a.conj().T) / np.sum(np.abs(a) ** 2)
    np.testing.assert_allclose(np.asarray(gram), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["averaged", "svd"])
def test_the_subspace_follows_the_recent_gradients_not_the_last_one(method):
  """Four steps along one mode-0 direction, then a refresh step along another: the averaged
  factor keeps the first direction (weight 0.31 against 0.1), a decomposition of the last
  gradient takes the second."""
  shape = (5, 4, 3)
  rest = _complex_normal(jax.random.key(0), shape[1:])
  along = lambda axis: jnp.eye(shape[0], dtype=jnp.complex64)[axis][:, None, None] * rest
  tx = tensor_galore(
    rank=(1, None, None),
    min_size=1,
    refresh_method=method,
    gram_decay=0.9,
    update_proj_gap=4,
    base_optimizer=optax.identity(),
  )
  state = tx.init({"w": along(0)})
  update = jax.jit(tx.update)
  for _ in range(4):  # steps 0 to 3; step 0 refreshes along direction 0
    _, state = update({"w": along(0)}, state)
  _, state = update({"w": along(1)}, state)  # step 4 refreshes
  factor = np.abs(np.asarray(state.factors["w"][0][:, 0]))
  np.testing.assert_allclose(factor, np.eye(shape[0])[0 if method == "averaged" else 1], atol=1e-4)


def test_stacked_layers_keep_one_average_each():
  layers = _complex_normal(jax.random.key(1), (3, 6, 5, 4))
  noise = [_complex_normal(jax.random.key(10 + k), layers.shape) for k in range(3)]
  grads = [layers * (k + 1) + n for k, n in enumerate(noise)]
  stacked = _identity_averaged(rank=0.4, spec=TuckerSpec(batch_axes=(0,)), update_proj_gap=2)
  single = _identity_averaged(rank=0.4, update_proj_gap=2)
  state = stacked.init({"w": layers})
  assert [g.shape for g in state.grams["w"]] == [(3, 6, 6), (3, 5, 5), (3, 4, 4)]
  for g in grads:
    updates, state = jax.jit(stacked.update)({"w": g}, state)
  for layer in range(3):
    one = single.init({"w": layers[layer]})
    for g in grads:
      expected, one = jax.jit(single.update)({"w": g[layer]}, one)
    chex.assert_trees_all_close(
      [gram[layer] for gram in state.grams["w"]], list(one.grams["w"]), atol=1e-6
    )
    chex.assert_trees_all_close(updates["w"][layer], expected["w"], atol=1e-5)


def test_only_the_averaged_method_keeps_gram_matrices():
  params = {"w": _complex_normal(jax.random.key(2), (8, 6, 4)), "b": jnp.ones(8)}
  averaged = tensor_galore(rank=0.5, min_size=1, refresh_method="averaged").init(params)
  assert averaged.grams["b"] == ()
  assert [(g.shape, g.dtype) for g in averaged.grams["w"]] == [
    ((8, 8), jnp.complex64),
    ((6, 6), jnp.complex64),
    ((4, 4), jnp.complex64),
  ]
  plain = tensor_galore(rank=0.5, min_size=1).init(params)
  assert jax.tree.leaves(plain.grams) == []


def test_a_state_from_another_refresh_method_is_refused_with_the_leaf_named():
  params = {"w": _complex_normal(jax.random.key(3), (8, 6, 4))}
  state = tensor_galore(rank=0.5, min_size=1).init(params)
  averaged = tensor_galore(rank=0.5, min_size=1, refresh_method="averaged")
  with pytest.raises(ValueError, match=r"\['w'\].*refresh_method='averaged'.*Gram"):
    averaged.update(params, state)


def test_unusable_gradients_leave_the_average_and_the_factors_alone():
  params = {"w": _complex_normal(jax.random.key(4), (6, 5, 4))}
  tx = _identity_averaged(rank=0.5, update_proj_gap=1)
  update = jax.jit(tx.update)
  _, state = update(params, tx.init(params))
  for bad in (jnp.nan, jnp.inf, 0.0):
    _, after = update({"w": jnp.full((6, 5, 4), bad, jnp.complex64)}, state)
    chex.assert_trees_all_equal(after.grams, state.grams)
    # Step 1 refreshes again, from the same averages: the same factors, up to eigh's rounding.
    chex.assert_tree_all_finite(after.factors)
    chex.assert_trees_all_close(after.factors, state.factors, atol=1e-5)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_gram_decay_outside_zero_one_is_refused(decay):
  with pytest.raises(ValueError, match="gram_decay"):
    tensor_galore(refresh_method="averaged", gram_decay=decay)
  with pytest.raises(ValueError, match="gram_decay"):
    tensor_galore_adamw(1e-3, refresh_method="averaged", gram_decay=decay)
