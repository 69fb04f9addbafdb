"""Tests of `benchmarks.frontier_levers.sparse_plus_low_rank`: TensorGRaD's sparse-plus-low-rank
split, with `tensor_galore` as its low-rank part."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import frontier
from benchmarks.frontier_levers import sparse_plus_low_rank
from tensor_galore_optax import scale_by_core_adam, tensor_galore
from tests._helpers import normal, tucker_tensor

LR = 1e-2
# Adam's decay rates as `scale_by_core_adam` computes with them: float32.
B1, B2 = np.float32(0.9), np.float32(0.999)
SPECTRAL = (24, 24, 8, 5)  # the darcy16 FNO's spectral weight: 23 040 entries, projected


def _params():
  return {
    "w": normal(jax.random.key(0), SPECTRAL),
    "m": normal(jax.random.key(1), (128, 128), jnp.float32),  # a projected real matrix
    "b": jnp.zeros(24),  # left whole
  }


def _grads(seed: int):
  keys = jax.random.split(jax.random.key(100 + seed), 3)
  return {
    "w": normal(keys[0], SPECTRAL),
    "m": normal(keys[1], (128, 128), jnp.float32),
    "b": normal(keys[2], (24,), jnp.float32),
  }


def test_all_entries_sparse_is_adam():
  # sparse_ratio=1 puts every entry in the sparse part: the residuals are zero, tensor_galore
  # adds nothing (zero cores, no residual step) and each leaf takes Adam's step, scattered.
  params = _params()
  tx = sparse_plus_low_rank(LR, params, sparse_ratio=1.0, weight_decay=1e-4)
  # Decay rates as float32 arrays, as `scale_by_core_adam` takes them: with Python floats optax
  # computes 1 - 0.999 exactly where float32 gives 1 - 0.99900001, steps 7e-6 relative apart.
  adamw = optax.chain(
    optax.scale_by_adam(jnp.asarray(0.9), jnp.asarray(0.999)),
    optax.add_decayed_weights(1e-4),
    optax.scale_by_learning_rate(LR),
  )
  state, reference_state = tx.init(params), adamw.init(params)
  update, reference_update = jax.jit(tx.update), jax.jit(adamw.update)
  for step in range(3):
    grads = _grads(step)
    updates, state = update(grads, state, params)
    expected, reference_state = reference_update(grads, reference_state, params)
    # The same elementwise arithmetic on the same numbers, gathered and scattered exactly (plus
    # tensor_galore's zeros): equal but for XLA's fusions, a few float32 ulps of an update of
    # about LR (an ulp of 1e-2 is 9e-10; 1e-8 is about ten).
    for name in params:
      np.testing.assert_allclose(updates[name], expected[name], rtol=0, atol=1e-8)
    params = optax.apply_updates(params, updates)


def _top(grad, k):
  """The flat positions of the ``k`` largest ``|grad|``, sorted, by NumPy."""
  return np.sort(np.argsort(-np.abs(np.asarray(grad)).reshape(-1))[:k])


def test_topk_positions_are_kept_until_the_refresh_which_restarts_the_moments():
  params = _params()
  gap = 3
  tx = sparse_plus_low_rank(LR, params, sparse_ratio=0.01, update_proj_gap=gap)
  k = {"w": 230, "m": 163}  # floor(0.01 * 23 040), floor(0.01 * 16 384)
  update = jax.jit(tx.update)
  state = tx.init(params)
  assert state[0].indices["b"] is None  # not projected: no sparse part

  grads = [_grads(step) for step in range(gap + 1)]
  for step in range(gap + 1):
    held = state[0].sparse_adam
    _, state = update(grads[step], state, params)
    split = state[0]
    chosen = 0 if step < gap else gap  # the step whose gradient chose the positions
    for name in k:
      indices = np.asarray(split.indices[name])
      np.testing.assert_array_equal(indices, _top(grads[chosen][name], k[name]))
      values = np.asarray(grads[step][name]).reshape(-1)[indices]
      mu, nu = np.asarray(split.sparse_adam.mu[name]), np.asarray(split.sparse_adam.nu[name])
      if step in (0, gap):  # fresh moments: one step from zero
        np.testing.assert_allclose(mu, (1 - B1) * values, rtol=1e-6)
        np.testing.assert_allclose(nu, (1 - B2) * np.abs(values) ** 2, rtol=1e-6)
      else:  # the same positions' moments carried on
        previous = np.asarray(held.mu[name])
        np.testing.assert_allclose(mu, B1 * previous + (1 - B1) * values, rtol=1e-5, atol=1e-7)
    assert split.sparse_adam.count == (step % gap) + 1  # the bias correction counts from a refresh


def test_randk_positions_are_distinct_deterministic_and_redrawn_at_the_refresh():
  params = _params()
  tx = sparse_plus_low_rank(LR, params, sparse_type="randk", update_proj_gap=2)
  update = jax.jit(tx.update)
  state = tx.init(params)
  drawn = []
  for step in range(3):
    _, state = update(_grads(step), state, params)
    drawn.append({name: np.asarray(state[0].indices[name]) for name in ("w", "m")})
  for name, size in (("w", 23_040), ("m", 16_384)):
    indices = drawn[0][name]
    assert len(np.unique(indices)) == len(indices) == size // 100
    assert 0 <= indices.min() and indices.max() < size
    np.testing.assert_array_equal(drawn[1][name], indices)  # kept between refreshes
    assert not np.array_equal(drawn[2][name], indices)  # redrawn at step 2
  # The key is folded from the step and the leaf: another instance draws the same.
  again = sparse_plus_low_rank(LR, params, sparse_type="randk", update_proj_gap=2)
  _, state = jax.jit(again.update)(_grads(7), again.init(params), params)
  np.testing.assert_array_equal(state[0].indices["w"], drawn[0]["w"])


@pytest.mark.parametrize(
  "mu_dtype, mu_bytes",
  [
    # Complex64 moment of the spectral weight's 230 values (8 bytes each); float32 of the
    # matrix's 163.
    (None, 230 * 8 + 163 * 4),
    # bfloat16: (real, imaginary) pairs for the complex values, one for the real ones.
    (jnp.bfloat16, 230 * 2 * 2 + 163 * 2),
  ],
)
def test_state_is_tensor_galores_plus_indices_and_sparse_moments(mu_dtype, mu_bytes):
  params = _params()
  tx = sparse_plus_low_rank(LR, params, rank=0.05, sparse_ratio=0.01, mu_dtype=mu_dtype)
  low_rank = tensor_galore(rank=0.05, base_optimizer=scale_by_core_adam(mu_dtype=mu_dtype))
  low_rank_bytes = sum(
    math.prod(s.shape) * s.dtype.itemsize
    for s in jax.tree.leaves(jax.eval_shape(low_rank.init, params))
  )
  k = 230 + 163
  # int32 indices, the first moments, float32 second moments (real for complex values), and
  # the sparse Adam's int32 count.
  extra = 4 * k + mu_bytes + 4 * k + 4
  assert frontier.state_bytes(tx, params) == low_rank_bytes + extra


def test_fits_a_sparse_plus_low_rank_target():
  # The target: a multilinear-rank-2 tensor (root mean square 0.3, half the initial loss) plus
  # 163 = 1% spikes of modulus 3 (the other half). Starting from zero, tensor_galore alone at
  # rank 0.05 fits the low-rank half but not the spikes, which lie outside its subspace
  # (measured: loss 0.084 after these 50 steps), and the sparse part alone holds 1% of the
  # entries; below a tenth of the initial loss (0.018), both parts must have fitted most of
  # theirs (measured: 0.002).
  shape = (32, 32, 4, 4)  # 16 384 entries: projected
  low = tucker_tensor(jax.random.key(1), shape, (2, 2, 2, 2), noise=0.0)
  low = 0.3 * low / jnp.sqrt(jnp.mean(jnp.abs(low) ** 2))
  rng = np.random.default_rng(0)
  spikes = rng.choice(low.size, 163, replace=False)
  phases = np.exp(2j * np.pi * rng.random(163))
  target = low.reshape(-1).at[spikes].add(3 * phases).reshape(shape).astype(jnp.complex64)

  def loss(params):
    return jnp.mean(jnp.abs(params["w"] - target) ** 2)

  params = {"w": jnp.zeros(shape, jnp.complex64)}
  tx = sparse_plus_low_rank(optax.cosine_decay_schedule(0.2, 50), params)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      grads = optax.tree.conj(jax.grad(loss)(params))  # the descent direction for complex params
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=50)
    return params

  initial = float(loss(params))
  assert 0.17 < initial < 0.19  # 0.09 + 163 * 9 / 16 384
  assert float(loss(train(params))) < 0.1 * initial
