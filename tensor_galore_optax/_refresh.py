"""Factor refresh: the leading subspaces of a gradient tensor's unfoldings.

Every method returns, for each projected mode ``n``, an ``(I_n, R_n)`` factor
with orthonormal columns spanning (an estimate of) the leading left singular
subspace of the mode-``n`` unfolding, which is what HOSVD keeps:

* ``"svd"``: exact HOSVD, one SVD per unfolding. The reference; slow, since the
  unfoldings of FNO weights are very wide (64 x 139392 for NS-128).
* ``"eigh"``: HOSVD through the eigendecomposition of each unfolding's Gram
  matrix ``A A^H`` (``I_n x I_n``): one pass over the tensor per mode, then a
  tiny eigh. Same subspaces as ``"svd"`` up to float32 round-off. For a mode
  larger than the rest of the tensor (matrix GaLore's large side), the other
  Gram matrix ``A^H A`` is the small one and is used instead.
* ``"sthosvd"``: sequentially truncated HOSVD (Vannieuwenhoven et al., 2012):
  like ``"eigh"``, but each mode is computed on the tensor already projected on
  the modes before it, so later Gram matrices come from a smaller tensor.
* ``"subspace"``: warm-started subspace iteration, sequential like
  ``"sthosvd"``: from the previous factors ``U``, ``Q = qr(A (A^H U))`` per
  mode: two thin matrix products and one QR. The first refresh (no previous
  factors) falls back to ``"sthosvd"``.

Numerics: decompositions run in the factors' dtype (float32 or complex64 at
least, whatever the parameter dtype). Column signs (phases, for complex
tensors) are aligned with the previous factors, so a refresh that finds the same
subspace returns the same factors and Adam's moments keep their meaning. A
gradient with NaN/Inf entries, or all zeros, keeps the previous factors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker

RefreshMethod = Literal["svd", "eigh", "sthosvd", "subspace"]
REFRESH_METHODS: tuple[str, ...] = ("svd", "eigh", "sthosvd", "subspace")
"""The factor refresh methods, the reference (exact HOSVD by SVD) first."""

Factors = dict[int, jax.Array]


def _leading_eigenvectors(gram: jax.Array, rank: int) -> jax.Array:
  """The ``rank`` eigenvectors of a Hermitian matrix with the largest eigenvalues."""
  gram = 0.5 * (gram + gram.conj().T)  # exact symmetry for eigh's sake
  _, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
  return vectors[:, ::-1][:, :rank]


def _gram(matrix: jax.Array) -> jax.Array:
  return matrix @ matrix.conj().T


def _svd_factor(tensor, mode, rank, previous):
  del previous
  unfolded = _tucker.unfold(tensor, mode)
  # A rank above the unfolding's column count needs the complete basis.
  u, _, _ = jnp.linalg.svd(unfolded, full_matrices=rank > unfolded.shape[1])
  return u[:, :rank]


def _eigh_factor(tensor, mode, rank, previous):
  del previous
  unfolded = _tucker.unfold(tensor, mode)
  size, others = unfolded.shape
  if size <= others:
    return _leading_eigenvectors(_gram(unfolded), rank)
  # A tall unfolding (matrix GaLore projecting the large side of a weight):
  # the small Gram matrix A^H A has the same leading spectrum, and A V spans
  # the leading left subspace. The QR orthonormalises it and, where the rank
  # exceeds the unfolding's column count, completes it with further columns.
  kept = min(rank, others)
  leading = unfolded @ _leading_eigenvectors(_gram(unfolded.conj().T), kept)
  if rank > kept:
    leading = jnp.concatenate([leading, jnp.eye(size, rank - kept, dtype=leading.dtype)], axis=1)
  basis, _ = jnp.linalg.qr(leading)
  return basis


def _subspace_factor(tensor, mode, rank, previous):
  del rank
  unfolded = _tucker.unfold(tensor, mode)
  # One step of subspace iteration on A A^H without forming it: two thin
  # products, then an orthonormal basis of the result.
  basis, _ = jnp.linalg.qr(unfolded @ (unfolded.conj().T @ previous))
  return basis


def _independent(factor_fn) -> Callable:
  def compute(tensor, ranks, previous):
    return {n: factor_fn(tensor, n, ranks[n], previous[n]) for n in previous}

  return compute


def _sequential(factor_fn) -> Callable:
  def compute(tensor, ranks, previous):
    factors = {}
    # The most compressing modes first shrink the tensor the most for the rest.
    for n in sorted(previous, key=lambda n: ranks[n] / tensor.shape[n]):
      factors[n] = factor_fn(tensor, n, ranks[n], previous[n])
      tensor = _tucker.mode_dot(tensor, factors[n].conj(), n)
    return factors

  return compute


_COMPUTE = {
  "svd": _independent(_svd_factor),
  "eigh": _independent(_eigh_factor),
  "sthosvd": _sequential(_eigh_factor),
  "subspace": _sequential(_subspace_factor),
}


def _align_phases(new: jax.Array, old: jax.Array) -> jax.Array:
  """Rotates each column of ``new`` by a sign (phase) so that ``old^H new`` has a
  real non-negative diagonal."""
  overlap = jnp.sum(old.conj() * new, axis=0)
  magnitude = jnp.abs(overlap)
  phase = jnp.where(magnitude > 0, overlap / jnp.where(magnitude > 0, magnitude, 1), 1)
  return new * phase.conj().astype(new.dtype)


def is_usable(tensor: jax.Array) -> jax.Array:
  """Whether a gradient can define a subspace: finite and not all zero."""
  return jnp.all(jnp.isfinite(tensor)) & jnp.any(tensor != 0)


def refresh_factors(
  tensor: jax.Array,
  previous: Factors,
  method: str,
  is_first: jax.Array | bool = False,
) -> Factors:
  """New factors for ``tensor`` (one axis per mode) by ``method``.

  Args:
    tensor: The gradient seen as a tensor with one axis per mode.
    previous: The current factors ``{mode: (I_n, R_n) array}``; they fix the
      projected modes, the ranks and the dtype the decomposition runs in.
    method: One of ``"svd"``, ``"eigh"``, ``"sthosvd"``, ``"subspace"``.
    is_first: True when ``previous`` holds no information yet (the first
      refresh); warm-started methods then compute from scratch.

  Returns:
    The new factors, orthonormal columns, phases aligned with ``previous``;
    ``previous`` itself if ``tensor`` has NaN/Inf entries or is all zeros.
  """
  if method not in _COMPUTE:
    raise ValueError(f"refresh method must be one of {REFRESH_METHODS}, got {method!r}.")
  if not previous:
    return {}
  dtype = next(iter(previous.values())).dtype
  ranks = {n: u.shape[1] for n, u in previous.items()}

  def compute():
    work = tensor.astype(dtype)
    if method == "subspace":
      factors = jax.lax.cond(
        is_first,
        lambda: _COMPUTE["sthosvd"](work, ranks, previous),
        lambda: _COMPUTE["subspace"](work, ranks, previous),
      )
    else:
      factors = _COMPUTE[method](work, ranks, previous)
    return {n: _align_phases(factors[n].astype(dtype), previous[n]) for n in previous}

  return jax.lax.cond(is_usable(tensor), compute, lambda: dict(previous))
