"""The factor refresh (ST-HOSVD through QR and small SVDs) against a float64 SVD reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import hosvd_by_svd, projector, tucker_tensor

from tensor_galore_optax import _refresh, _tucker

SHAPE = (16, 12, 10, 6)
RANKS = (4, 3, 3, 2)
MODES = tuple(range(len(SHAPE)))


def _eye_factors(dtype, shape=SHAPE, ranks=RANKS):
  return _refresh.initial_factors(list(zip(shape, ranks)), dtype)


def _refresh_jit(t, previous, modes=MODES):
  return jax.jit(_refresh.refresh_factors, static_argnums=2)(t, previous, modes)


def _energy(t, factors, modes=MODES):
  core = _tucker.project(t, factors, modes)
  return float(jnp.linalg.norm(core) ** 2 / jnp.linalg.norm(t) ** 2)


def _round_off_bound(tensor, mode: int, rank: int) -> float:
  """How far a backward-stable float32 subspace may be from the exact one (Wedin's theorem).

  A backward-stable decomposition is exact for an unfolding perturbed by about
  ``sqrt(m n) eps |A|``; the leading-``rank`` subspace then moves by that over
  the gap between the ``rank``-th and the next singular value. Ten times that,
  for the constants the theorem leaves out.
  """
  unfolded = np.moveaxis(np.asarray(tensor, np.complex128), mode, 0)
  unfolded = unfolded.reshape(tensor.shape[mode], -1)
  s = np.linalg.svd(unfolded, compute_uv=False)
  s = np.append(s, 0.0)
  eps = np.finfo(np.float32).eps
  return 10 * np.sqrt(unfolded.size) * eps * s[0] / (s[rank - 1] - s[rank])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_the_factors_span_the_hosvd_subspaces_to_round_off(dtype):
  """Each mode's factor spans the SVD reference's subspace of the tensor it is computed from.

  ST-HOSVD computes mode ``n`` from the tensor already projected on the modes
  before it; under a spectral gap those subspaces are the plain HOSVD's up to
  the noise over the gap (1e-3 / O(1) here), so that is compared at that
  bound, and orthonormality at round-off.
  """
  t = tucker_tensor(jax.random.key(0), SHAPE, RANKS, dtype)
  found = _refresh_jit(t, _eye_factors(dtype))
  exact = hosvd_by_svd(t, RANKS, MODES)
  for n in MODES:
    # Noise 1e-3 per entry: about 1e-3 * (sqrt(I_n) + sqrt(J_n)) = 0.03 in norm, over a gap of
    # at least the core's smallest singular value (about 1): a 0.05 bound on the projectors.
    np.testing.assert_allclose(projector(found[n]), projector(exact[n]), atol=0.05)
    gram = np.asarray(found[n].conj().T @ found[n])
    # Orthonormal to float32 round-off: a few eps times sqrt(I_n).
    np.testing.assert_allclose(gram, np.eye(RANKS[n]), atol=20 * np.finfo(np.float32).eps * 4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_one_mode_is_the_svd_references_subspace_to_round_off(dtype):
  """A single projected mode: ST-HOSVD is then exactly one SVD, and agrees to round-off."""
  t = tucker_tensor(jax.random.key(1), SHAPE, RANKS, dtype)
  (found,) = _refresh_jit(t, _eye_factors(dtype, (16,), (4,)), (0,))
  (exact,) = hosvd_by_svd(t, (4,), (0,))
  bound = _round_off_bound(t, 0, 4)
  assert bound < 1e-3  # the gap makes the comparison meaningful
  np.testing.assert_allclose(projector(found), projector(exact), atol=bound)


def test_a_wrong_factor_is_caught_by_the_reference():
  """The reference comparison fails a refresh that keeps the trailing directions instead."""
  t = tucker_tensor(jax.random.key(1), SHAPE, RANKS, jnp.complex64)
  unfolded = np.moveaxis(np.asarray(t), 0, 0).reshape(16, -1)
  trailing = np.linalg.svd(unfolded)[0][:, -4:]
  (exact,) = hosvd_by_svd(t, (4,), (0,))
  assert np.abs(projector(trailing) - projector(exact)).max() > 100 * _round_off_bound(t, 0, 4)


def test_the_core_keeps_at_least_99_percent_of_the_references_energy_without_a_gap():
  """With heavy noise (no clear gap) the subspaces differ, the kept energy hardly does."""
  t = tucker_tensor(jax.random.key(3), SHAPE, RANKS, noise=0.5)
  found = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), MODES)
  exact = tuple(jnp.asarray(u, jnp.complex64) for u in hosvd_by_svd(t, RANKS, MODES))
  assert _energy(t, found) >= 0.99 * _energy(t, exact)


def test_the_same_subspace_gives_the_same_factors_whatever_the_phase():
  """Signs/phases are aligned with the previous factors: no arbitrary flips."""
  t = tucker_tensor(jax.random.key(4), SHAPE, RANKS)
  first = _refresh.refresh_factors(t, _eye_factors(jnp.complex64), MODES)
  # A different but equivalent input: the same tensor, negated and re-phased.
  again = _refresh.refresh_factors(t * (-1j), first, MODES)
  # The same subspaces to round-off (gap 1e3), so the aligned columns agree to about 1e-5.
  chex.assert_trees_all_close(again, first, atol=1e-4)


@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_an_unusable_gradient_keeps_the_previous_factors(bad):
  t = tucker_tensor(jax.random.key(5), SHAPE, RANKS)
  computed = _refresh_jit(t, _eye_factors(jnp.complex64))
  if bad == "zeros":
    t = jnp.zeros_like(t)
  else:
    t = t.at[0, 0, 0, 0].set(jnp.nan if bad == "nan" else jnp.inf)
  for previous in (_eye_factors(jnp.complex64), computed):
    chex.assert_trees_all_equal(_refresh_jit(t, previous), previous)  # bitwise: kept as held


@pytest.mark.parametrize("magnitude", [1e19, 1e-21])
def test_factors_do_not_depend_on_the_gradient_scale(magnitude):
  """Squares of a 1e19 gradient overflow float32, of a 1e-21 one underflow."""
  t = tucker_tensor(jax.random.key(8), SHAPE, RANKS)
  reference = _refresh_jit(t, _eye_factors(jnp.complex64))
  scaled = _refresh_jit(t * magnitude, _eye_factors(jnp.complex64))
  chex.assert_tree_all_finite(scaled)
  for n in MODES:
    # The tensor is divided by its largest entry first, so both decompose nearly the same
    # numbers (the scaling itself rounds): agreement to round-off over the gap, 1e-4.
    np.testing.assert_allclose(projector(scaled[n]), projector(reference[n]), atol=1e-4)


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


@pytest.mark.parametrize("smallest", [1e-4, 1e-5])
def test_directions_far_below_the_leading_one_are_resolved(smallest):
  """No Gram matrix: directions with sigma/sigma_1 down to 1e-5 are resolved.

  A Gram matrix (eigh of A A^H) squares the condition number: in float32 it
  resolves about 3e-4 of the leading direction, and measured an alignment of
  0.84 at 1e-5.
  """
  matrix, top = _graded_matrix(smallest)
  (found,) = _refresh_jit(matrix, (jnp.eye(24, 16),), (0,))
  assert _alignment(found, top) > 0.999


def test_decompositions_run_in_the_factor_dtype():
  t = tucker_tensor(jax.random.key(6), SHAPE, RANKS, jnp.float32).astype(jnp.bfloat16)
  factors = _refresh.refresh_factors(t, _eye_factors(jnp.float32), MODES)
  assert all(f.dtype == jnp.float32 for f in factors)
  exact = tuple(jnp.asarray(u.real, jnp.float32) for u in hosvd_by_svd(t, RANKS, MODES))
  t32 = t.astype(jnp.float32)
  assert _energy(t32, factors) >= 0.99 * _energy(t32, exact)


def test_a_cut_inside_tied_singular_values_keeps_the_leading_ones_and_the_optimal_energy():
  """Singular values 3, 2, 1, 1, 1, 0.5 cut at rank 3, inside the tie: any one of the tied
  directions is right, but the two leading ones must be kept, and the energy is 9 + 4 + 1."""
  rng = np.random.default_rng(1)
  u, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  v, _ = np.linalg.qr(rng.normal(size=(30, 6)))
  sigma = np.array([3.0, 2.0, 1.0, 1.0, 1.0, 0.5])
  matrix = jnp.asarray((u * sigma) @ v.T, jnp.float32)
  (found,) = _refresh_jit(matrix, (jnp.eye(6, 3),), (0,))
  found = np.asarray(found)
  # The two leading directions lie in the span: their projections keep unit length.
  kept = np.linalg.norm(found.T @ u[:, :2], axis=0)
  np.testing.assert_allclose(kept, 1.0, atol=1e-5)  # float32 round-off on well-separated values
  energy = np.linalg.norm(found.T @ np.asarray(matrix)) ** 2
  np.testing.assert_allclose(energy, 9 + 4 + 1, rtol=1e-5)
  # The third column lies in the tied cluster, not on the trailing 0.5 direction.
  assert abs(found[:, 2] @ u[:, 5]) < 1e-4


@pytest.mark.parametrize("rank", [3, 5, 9])
def test_a_tall_unfolding_completes_its_basis_past_its_width(rank):
  """Matrix GaLore projecting the large side of a (5, 40) weight: mode 1 (40) is taller
  than its unfolding is wide (5); ranks past 5 complete the basis with orthonormal columns."""
  t = tucker_tensor(jax.random.key(7), (5, 40), (5, 5), noise=0.0)
  previous = (jnp.eye(40, rank, dtype=jnp.complex64),)
  (found,) = _refresh.refresh_factors(t, previous, (1,))
  np.testing.assert_allclose(np.asarray(found.conj().T @ found), np.eye(rank), atol=1e-5)
  kept = min(rank, 5)
  (exact,) = hosvd_by_svd(t, (kept,), (1,))
  # The leading `kept` directions: the same projection of the unfolding as the reference.
  f = np.asarray(found)
  np.testing.assert_allclose(
    projector(f) @ np.asarray(t).T, projector(exact) @ np.asarray(t).T, atol=1e-4
  )
