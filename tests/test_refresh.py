"""Tests of the factor refresh methods and their numerics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensor_galore_optax import REFRESH_METHODS, _refresh, _tucker

SHAPE = (16, 12, 10, 6)
RANKS = (4, 3, 3, 2)


def _low_rank_plus_noise(key, dtype=jnp.complex64, noise=1e-3):
  """A tensor of multilinear rank RANKS plus small noise: a clear spectral gap."""
  keys = jax.random.split(key, 6)
  cplx = jnp.issubdtype(dtype, jnp.complexfloating)

  def normal(k, shape):
    x = jax.random.normal(k, shape)
    return (x + 1j * jax.random.normal(jax.random.fold_in(k, 1), shape)) if cplx else x

  t = normal(keys[0], RANKS)
  for n, (i, r) in enumerate(zip(SHAPE, RANKS)):
    u, _ = jnp.linalg.qr(normal(keys[n + 1], (i, r)))
    t = _tucker.mode_dot(t, u.T, n)
  return (t + noise * normal(keys[5], SHAPE)).astype(dtype)


def _eye_factors(dtype):
  return {n: jnp.eye(i, r, dtype=dtype) for n, (i, r) in enumerate(zip(SHAPE, RANKS))}


def _projector(u):
  return u @ u.conj().T


def _energy(t, factors):
  return float(jnp.linalg.norm(_tucker.project(t, factors)) ** 2 / jnp.linalg.norm(t) ** 2)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_every_method_finds_the_hosvd_subspace_under_a_spectral_gap(method, dtype):
  t = _low_rank_plus_noise(jax.random.key(0), dtype)
  refresh = jax.jit(_refresh.refresh_factors, static_argnames="method")
  exact = refresh(t, _eye_factors(dtype), method="svd", is_first=True)
  found = refresh(t, _eye_factors(dtype), method=method, is_first=True)
  for n in exact:
    chex.assert_trees_all_close(_projector(found[n]), _projector(exact[n]), atol=1e-3)
    chex.assert_trees_all_close(found[n].conj().T @ found[n], jnp.eye(RANKS[n]), atol=1e-5)


def test_warm_started_subspace_iteration_converges_to_hosvd():
  # From random factors, repeated warm refreshes on one gradient converge to its
  # leading subspaces. Being sequential (HOOI-like), they settle where the core
  # keeps the most energy, a hair away from plain HOSVD when there is noise.
  t = _low_rank_plus_noise(jax.random.key(1), noise=0.03)
  refresh = jax.jit(_refresh.refresh_factors, static_argnames="method")
  exact = refresh(t, _eye_factors(jnp.complex64), method="svd", is_first=True)
  key = jax.random.key(2)
  factors = {
    n: jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, n), (i, r)) + 0j)[0]
    for n, (i, r) in enumerate(zip(SHAPE, RANKS))
  }
  gaps = []
  for _ in range(30):
    factors = refresh(t, factors, method="subspace", is_first=False)
    gaps.append(
      max(float(jnp.abs(_projector(factors[n]) - _projector(exact[n])).max()) for n in exact)
    )
  assert gaps[0] > 0.1 and gaps[-1] < 5e-3
  assert _energy(t, factors) >= 0.999 * _energy(t, exact)


@pytest.mark.parametrize("method", REFRESH_METHODS)
def test_first_refresh_keeps_99_percent_of_hosvd_energy(method):
  t = _low_rank_plus_noise(jax.random.key(3), noise=0.5)
  exact = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), "svd", True)
  found = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), method, True)
  assert _energy(t, found) >= 0.99 * _energy(t, exact)


@pytest.mark.parametrize("method", REFRESH_METHODS)
def test_same_gradient_twice_gives_the_same_factors(method):
  """Signs/phases are aligned with the previous factors: no arbitrary flips."""
  t = _low_rank_plus_noise(jax.random.key(4))
  first = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), method, True)
  # A different but equivalent input: the same tensor, negated and re-phased.
  again = _refresh.refresh_factors(t * (-1j), first, method, False)
  chex.assert_trees_all_close(again, first, atol=1e-3)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_unusable_gradient_keeps_previous_factors(method, bad):
  t = _low_rank_plus_noise(jax.random.key(5))
  if bad == "zeros":
    t = jnp.zeros_like(t)
  else:
    t = t.at[0, 0, 0, 0].set(jnp.nan if bad == "nan" else jnp.inf)
  refresh = jax.jit(_refresh.refresh_factors, static_argnames="method")
  previous = _eye_factors(jnp.complex64)
  for is_first in (True, False):
    factors = refresh(t, previous, method=method, is_first=is_first)
    chex.assert_tree_all_finite(factors)
    chex.assert_trees_all_equal(factors, previous)


def test_decompositions_run_in_the_factor_dtype():
  t = _low_rank_plus_noise(jax.random.key(6), dtype=jnp.float32).astype(jnp.bfloat16)
  factors = _refresh.refresh_factors(t, _eye_factors(jnp.float32), "sthosvd", True)
  assert all(f.dtype == jnp.float32 for f in factors.values())
  exact = _refresh.refresh_factors(t.astype(jnp.float32), _eye_factors(jnp.float32), "svd", True)
  assert _energy(t.astype(jnp.float32), factors) >= 0.99 * _energy(t.astype(jnp.float32), exact)


def test_ties_do_not_change_the_projection():
  # Identity-like spectrum: every direction ties; any orthonormal basis of the
  # chosen span is right, and the projection is the same for every method.
  t = jnp.eye(6, dtype=jnp.float32)[:, :, None] * jnp.ones(3)
  previous = {0: jnp.eye(6, 6, dtype=jnp.float32)}
  for method in REFRESH_METHODS:
    factors = _refresh.refresh_factors(t, previous, method, True)
    np.testing.assert_allclose(_projector(factors[0]), np.eye(6), atol=1e-5)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("rank", [3, 5, 9])
def test_tall_unfoldings_use_the_small_gram_matrix(method, rank):
  """Matrix GaLore projecting the large side of a (5, 40) weight: mode 1 (40) is
  taller than its unfolding is wide (5); ranks past 5 complete the basis."""
  key = jax.random.key(7)
  t = jax.random.normal(key, (5, 40)) + 1j * jax.random.normal(jax.random.fold_in(key, 1), (5, 40))
  t = t.astype(jnp.complex64)
  previous = {1: jnp.eye(40, rank, dtype=jnp.complex64)}
  exact = _refresh.refresh_factors(t, previous, "svd", True)
  found = _refresh.refresh_factors(t, previous, method, True)
  chex.assert_trees_all_close(found[1].conj().T @ found[1], jnp.eye(rank), atol=1e-5)
  kept = min(rank, 5)
  # The leading `kept` directions are the unfolding's whole range: same projector.
  chex.assert_trees_all_close(_projector(found[1]) @ t.T, _projector(exact[1]) @ t.T, atol=1e-4)
  assert _energy(t, found) >= 0.99 * _energy(t, exact) and kept <= rank
