"""The step of the gradient outside the subspace (`tensor_galore`'s ``residual_scale``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensor_galore_optax import TuckerSpec, tensor_galore, tensor_galore_adamw

PARAMS = {
  "w": jnp.ones((12, 10, 6), jnp.complex64),
  "m": jnp.ones((16, 24)),
  "b": jnp.ones(10),
}


def _grads(seed=0):
  keys = jax.random.split(jax.random.key(seed), len(PARAMS))
  return {k: jax.random.normal(key, p.shape, p.dtype) for key, (k, p) in zip(keys, PARAMS.items())}


def _update(residual_scale, grads=None, **kwargs):
  tx = tensor_galore(
    rank=0.25, min_size=100, scale="matched", residual_scale=residual_scale, **kwargs
  )
  grads = _grads() if grads is None else grads
  return jax.jit(tx.update)(grads, tx.init(PARAMS)), grads


def _rms(x):
  return float(jnp.sqrt(jnp.mean(jnp.abs(x) ** 2)))


def test_the_state_keeps_one_vector_per_side_of_each_projected_matrix_only():
  state = tensor_galore(rank=0.25, min_size=100, residual_scale=4.0).init(PARAMS)
  shapes = jax.tree.map(lambda m: m.shape, state.residual_moments)
  assert state.factors["w"]  # the 3-mode tensor is projected, but takes no residual
  assert shapes == {"w": (), "m": ((16,), (24,)), "b": ()}
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.residual_moments))
  without = tensor_galore(rank=0.25, min_size=100, residual_scale=None).init(PARAMS)
  assert jax.tree.leaves(without.residual_moments) == []


@pytest.mark.parametrize("residual_scale", [1.0, 4.0])
def test_the_residual_step_has_the_promised_length(residual_scale):
  """RMS of the added step = residual_scale x fraction outside x RMS of the projected step."""
  (with_residual, state), grads = _update(residual_scale)
  (without, _), _ = _update(None)
  for name in ("m",):
    term = with_residual[name] - without[name]
    factors = state.factors[name]
    g = grads[name]
    # The part of the gradient the factors hold, for the one projected mode of each leaf.
    (u,) = factors
    mode = 0 if g.shape[0] == u.shape[0] else g.ndim - 1
    moved = jnp.moveaxis(g, mode, 0)
    inside = jnp.tensordot(u, jnp.tensordot(u.conj(), moved, axes=(0, 0)), axes=(1, 0))
    outside = _rms(moved - inside) / _rms(g)
    assert 0.3 < outside < 1
    np.testing.assert_allclose(
      _rms(term), residual_scale * outside * _rms(without[name]), rtol=1e-4
    )
  chex.assert_trees_all_equal(with_residual["b"], without["b"])  # not projected
  chex.assert_trees_all_equal(with_residual["w"], without["w"])  # a tensor: no residual


def test_a_gradient_the_factors_hold_whole_adds_nothing():
  """Every projected mode kept whole (rank = size): no residual at all, decided statically.

  The residual would be round-off normalised by its own round-off, whose size
  depends on the CPU's kernels; the contract is bitwise equality.
  """
  spec = {"w": TuckerSpec(rank=(12, None, None)), "m": TuckerSpec(rank=(16, None)), "b": None}
  (with_residual, state), _ = _update(4.0, spec=spec)
  (without, _), _ = _update(None, spec=spec)
  assert state.residual_moments["m"] == ()
  chex.assert_trees_all_equal(with_residual, without)


def test_the_residual_follows_the_gradient_entry_by_entry():
  """A first step: each residual entry over its factored RMS, so large rows stay large."""
  grads = _grads()
  grads["m"] = grads["m"] * jnp.linspace(0.1, 10, 16)[:, None]  # rows of very different sizes
  (with_residual, _), _ = _update(4.0, grads=grads)
  (without, _), _ = _update(None, grads=grads)
  term = with_residual["m"] - without["m"]
  row_rms = jnp.sqrt(jnp.mean(term**2, axis=1))
  # Normalised per row by its own running mean square: rows end up of comparable size.
  assert float(row_rms.max() / row_rms.min()) < 5
  assert bool(jnp.all(jnp.isfinite(term)))


def test_adamw_trains_the_residual_by_default():
  tx = tensor_galore_adamw(1e-3, rank=0.25, min_size=100)
  explicit = optax.chain(
    tensor_galore(
      rank=0.25,
      min_size=100,
      scale="matched",
      base_optimizer=optax.scale_by_adam(b1=jnp.asarray(0.9), b2=jnp.asarray(0.999)),
      residual_scale=4.0,
    ),
    optax.add_decayed_weights(1e-4),
    optax.scale_by_learning_rate(1e-3),
  )
  grads = _grads()
  ours, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  theirs, _ = explicit.update(grads, explicit.init(PARAMS), PARAMS)
  chex.assert_trees_all_close(ours, theirs, rtol=1e-6)
  dropped = tensor_galore_adamw(1e-3, rank=0.25, min_size=100, residual_scale=None)
  plain, _ = dropped.update(grads, dropped.init(PARAMS), PARAMS)
  assert _rms(ours["m"] - plain["m"]) > 0.1 * _rms(plain["m"])


def test_a_state_without_residual_moments_is_refused_naming_the_leaf():
  grads = _grads()
  without = tensor_galore(rank=0.25, min_size=100, residual_scale=None).init(PARAMS)
  with pytest.raises(ValueError, match=r"leaf \['m'\].*residual moments.*residual_scale"):
    tensor_galore(rank=0.25, min_size=100, residual_scale=4.0).update(grads, without)


def test_stacked_layers_get_their_own_statistics_like_separate_leaves():
  keys = jax.random.split(jax.random.key(3), 3)
  stacked = jax.random.normal(keys[0], (3, 16, 24))
  spec_stacked = TuckerSpec(rank=(4, None), batch_axes=(0,))
  tx = tensor_galore(residual_scale=4.0, spec={"s": spec_stacked}, scale="matched")
  one = tensor_galore(residual_scale=4.0, spec={"s": TuckerSpec(rank=(4, None))}, scale="matched")
  grads = jax.random.normal(keys[1], (3, 16, 24)) * jnp.array([1.0, 30.0, 0.01])[:, None, None]
  params = {"s": stacked}
  state = tx.init(params)
  for _ in range(3):
    out, state = tx.update({"s": grads}, state)
  for layer in range(3):
    single = one.init({"s": stacked[layer]})
    for _ in range(3):
      expected, single = one.update({"s": grads[layer]}, single)
    np.testing.assert_allclose(out["s"][layer], expected["s"], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "4", True])
def test_a_bad_residual_scale_is_refused_by_name(bad):
  with pytest.raises(ValueError, match="residual_scale"):
    tensor_galore(rank=0.25, residual_scale=bad)
