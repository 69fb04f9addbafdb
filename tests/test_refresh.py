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


MODES = tuple(range(len(SHAPE)))


def _eye_factors(dtype):
  return _refresh.initial_factors([(i, r) for i, r in zip(SHAPE, RANKS)], dtype)


def _refresh_jit(t, previous, method, modes=MODES):
  return jax.jit(_refresh.refresh_factors, static_argnums=(2, 3))(t, previous, modes, method)


def _projector(u):
  return u @ u.conj().T


def _energy(t, factors, modes=MODES):
  core = _tucker.project(t, factors, modes)
  return float(jnp.linalg.norm(core) ** 2 / jnp.linalg.norm(t) ** 2)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_every_method_finds_the_hosvd_subspace_under_a_spectral_gap(method, dtype):
  t = _low_rank_plus_noise(jax.random.key(0), dtype)
  exact = _refresh_jit(t, _eye_factors(dtype), "svd")
  found = _refresh_jit(t, _eye_factors(dtype), method)
  for n in MODES:
    chex.assert_trees_all_close(_projector(found[n]), _projector(exact[n]), atol=1e-3)
    chex.assert_trees_all_close(found[n].conj().T @ found[n], jnp.eye(RANKS[n]), atol=1e-5)


def test_warm_started_subspace_iteration_converges_to_hosvd():
  # From random factors, repeated warm refreshes on one gradient converge to its
  # leading subspaces. Being sequential (HOOI-like), they settle where the core
  # keeps the most energy, a hair away from plain HOSVD when there is noise.
  t = _low_rank_plus_noise(jax.random.key(1), noise=0.03)
  exact = _refresh_jit(t, _eye_factors(jnp.complex64), "svd")
  key = jax.random.key(2)
  factors = tuple(
    jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, n), (i, r)) + 0j)[0]
    for n, (i, r) in enumerate(zip(SHAPE, RANKS))
  )
  gaps = []
  for _ in range(30):
    factors = _refresh_jit(t, factors, "subspace")
    gaps.append(
      max(float(jnp.abs(_projector(factors[n]) - _projector(exact[n])).max()) for n in MODES)
    )
  assert gaps[0] > 0.1 and gaps[-1] < 5e-3
  assert _energy(t, factors) >= 0.999 * _energy(t, exact)


@pytest.mark.parametrize("method", REFRESH_METHODS)
def test_first_refresh_keeps_99_percent_of_hosvd_energy(method):
  t = _low_rank_plus_noise(jax.random.key(3), noise=0.5)
  exact = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), MODES, "svd")
  found = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), MODES, method)
  assert _energy(t, found) >= 0.99 * _energy(t, exact)


@pytest.mark.parametrize("method", REFRESH_METHODS)
def test_same_gradient_twice_gives_the_same_factors(method):
  """Signs/phases are aligned with the previous factors: no arbitrary flips."""
  t = _low_rank_plus_noise(jax.random.key(4))
  first = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), MODES, method)
  # A different but equivalent input: the same tensor, negated and re-phased.
  again = _refresh.refresh_factors(t * (-1j), first, MODES, method)
  chex.assert_trees_all_close(again, first, atol=1e-3)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_unusable_gradient_keeps_previous_factors(method, bad):
  t = _low_rank_plus_noise(jax.random.key(5))
  if bad == "zeros":
    t = jnp.zeros_like(t)
  else:
    t = t.at[0, 0, 0, 0].set(jnp.nan if bad == "nan" else jnp.inf)
  clean = _low_rank_plus_noise(jax.random.key(5))
  computed = _refresh_jit(clean, _eye_factors(jnp.complex64), "svd")
  # From the initial factors, and from computed ones (the warm-started path).
  for previous in (_eye_factors(jnp.complex64), computed):
    factors = _refresh_jit(t, previous, method)
    chex.assert_tree_all_finite(factors)
    chex.assert_trees_all_equal(factors, previous)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("magnitude", [1e19, 1e-21])
def test_factors_do_not_depend_on_the_gradient_scale(method, magnitude):
  """Gram matrices of a 1e19 gradient overflow float32, of a 1e-21 one underflow."""
  t = _low_rank_plus_noise(jax.random.key(8))
  reference = _refresh_jit(t, _eye_factors(jnp.complex64), method)
  scaled = _refresh_jit(t * magnitude, _eye_factors(jnp.complex64), method)
  chex.assert_tree_all_finite(scaled)
  for n in MODES:
    chex.assert_trees_all_close(_projector(scaled[n]), _projector(reference[n]), atol=1e-4)


def _graded_matrix(smallest: float, size=24, others=400, rank=16):
  """A real matrix whose top ``rank`` singular values go from 1 down to ``smallest``
  (the rest ten times smaller), and that top subspace."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(size, size)))
  v, _ = np.linalg.qr(rng.normal(size=(others, size)))
  sigma = np.concatenate(
    [np.logspace(0, np.log10(smallest), rank), np.full(size - rank, smallest / 10)]
  )
  return jnp.asarray((u * sigma) @ v.T, jnp.float32), u[:, :rank]


def _alignment(found, exact) -> float:
  """Mean squared cosine of the principal angles: 1 for the same subspace."""
  return float(np.linalg.norm(exact.T @ np.asarray(found)) ** 2 / exact.shape[1])


@pytest.mark.parametrize("method", ["svd", "sthosvd"])
@pytest.mark.parametrize("smallest", [1e-4, 1e-5])
def test_accurate_methods_resolve_directions_far_below_the_leading_one(method, smallest):
  """Directions with sigma/sigma_1 down to 1e-5 are resolved by SVD and by the default."""
  matrix, top = _graded_matrix(smallest)
  (found,) = _refresh_jit(matrix, (jnp.eye(24, 16),), method, (0,))
  assert _alignment(found, top) > 0.999


def test_gram_method_is_accurate_to_about_3e4_of_the_leading_direction():
  """The documented limit of "eigh": forming A A^H squares the condition number."""
  matrix, top = _graded_matrix(1e-3)
  (found,) = _refresh_jit(matrix, (jnp.eye(24, 16),), "eigh", (0,))
  assert _alignment(found, top) > 0.999
  matrix, top = _graded_matrix(1e-5)
  (found,) = _refresh_jit(matrix, (jnp.eye(24, 16),), "eigh", (0,))
  assert _alignment(found, top) < 0.9  # 0.84 measured; "sthosvd" gives 1.0000


def test_subspace_method_starts_from_scratch_while_factors_are_initial():
  """Until a usable gradient has set them, warm starts would start from the identity."""
  t = _low_rank_plus_noise(jax.random.key(9))
  from_scratch = _refresh_jit(t, _eye_factors(jnp.complex64), "sthosvd")
  found = _refresh_jit(t, _eye_factors(jnp.complex64), "subspace")
  chex.assert_trees_all_close(found, from_scratch, atol=1e-5)
  # Once set, the same call iterates from them instead.
  warm = _refresh_jit(t + 0.3 * _low_rank_plus_noise(jax.random.key(10)), found, "subspace")
  one_step = _refresh_jit(t + 0.3 * _low_rank_plus_noise(jax.random.key(10)), found, "sthosvd")
  assert max(float(jnp.abs(w - o).max()) for w, o in zip(warm, one_step)) > 1e-3


def test_decompositions_run_in_the_factor_dtype():
  t = _low_rank_plus_noise(jax.random.key(6), dtype=jnp.float32).astype(jnp.bfloat16)
  factors = _refresh.refresh_factors(t, _eye_factors(jnp.float32), MODES, "sthosvd")
  assert all(f.dtype == jnp.float32 for f in factors)
  exact = _refresh.refresh_factors(t.astype(jnp.float32), _eye_factors(jnp.float32), MODES, "svd")
  assert _energy(t.astype(jnp.float32), factors) >= 0.99 * _energy(t.astype(jnp.float32), exact)


def test_ties_do_not_change_the_projection():
  # Identity-like spectrum: every direction ties; any orthonormal basis of the
  # chosen span is right, and the projection is the same for every method.
  t = jnp.eye(6, dtype=jnp.float32)[:, :, None] * jnp.ones(3)
  previous = (jnp.eye(6, 6, dtype=jnp.float32),)
  for method in REFRESH_METHODS:
    factors = _refresh.refresh_factors(t, previous, (0,), method)
    np.testing.assert_allclose(_projector(factors[0]), np.eye(6), atol=1e-5)


@pytest.mark.parametrize("method", REFRESH_METHODS)
@pytest.mark.parametrize("rank", [3, 5, 9])
def test_tall_unfoldings_use_the_small_gram_matrix(method, rank):
  """Matrix GaLore projecting the large side of a (5, 40) weight: mode 1 (40) is
  taller than its unfolding is wide (5); ranks past 5 complete the basis."""
  key = jax.random.key(7)
  t = jax.random.normal(key, (5, 40)) + 1j * jax.random.normal(jax.random.fold_in(key, 1), (5, 40))
  t = t.astype(jnp.complex64)
  previous = (jnp.eye(40, rank, dtype=jnp.complex64),)
  exact = _refresh.refresh_factors(t, previous, (1,), "svd")
  found = _refresh.refresh_factors(t, previous, (1,), method)
  chex.assert_trees_all_close(found[0].conj().T @ found[0], jnp.eye(rank), atol=1e-5)
  kept = min(rank, 5)
  # The leading `kept` directions are the unfolding's whole range: same projector.
  chex.assert_trees_all_close(_projector(found[0]) @ t.T, _projector(exact[0]) @ t.T, atol=1e-4)
  assert _energy(t, found, (1,)) >= 0.99 * _energy(t, exact, (1,)) and kept <= rank
