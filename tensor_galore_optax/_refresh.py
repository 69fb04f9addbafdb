"""Factor refresh: the leading subspaces of a gradient tensor's unfoldings.

Every method returns, for each projected mode ``n``, an ``(I_n, R_n)`` factor
with orthonormal columns spanning (an estimate of) the leading left singular
subspace of the mode-``n`` unfolding, which is what HOSVD keeps:

* ``"svd"``: exact HOSVD, one SVD per unfolding. The reference; slow, since the
  unfoldings of FNO weights are very wide (64 x 135168 for NS-128).
* ``"eigh"``: HOSVD through the eigendecomposition of each unfolding's Gram
  matrix ``A A^H`` (``I_n x I_n``): one pass over the tensor per mode, then a
  tiny eigh. The fastest, but forming ``A A^H`` squares the condition number:
  in float32, directions whose singular value is below about ``3e-4`` of the
  largest come out as noise (``tests/test_refresh.py`` measures this).
* ``"sthosvd"`` (the default): sequentially truncated HOSVD (Vannieuwenhoven
  et al., 2012): each mode is computed on the tensor already projected on the
  modes before it, so later unfoldings are smaller. Each mode's subspace comes
  from a QR decomposition of the unfolding's long side followed by the SVD of
  the small triangular factor, which is as accurate as ``"svd"`` on any
  spectrum (backward stable, no Gram matrix) and needs no wide SVD.
* ``"subspace"``: warm-started subspace iteration, sequential like
  ``"sthosvd"``: from the previous factors ``U``, ``Q = qr(A (A^H U))`` per
  mode: two thin matrix products and one QR. Factors still at their initial
  value (no usable gradient seen yet) are computed by ``"sthosvd"`` instead.
Numerics: the gradient is divided by its largest magnitude first (the factors
do not depend on its scale), so gradients near the float32 range's ends give
the same factors as moderate ones. Decompositions run in the factors' dtype
(float32 or complex64 at least). Column signs (phases, for complex tensors) are
aligned with the previous factors, so a refresh that finds the same subspace
returns the same factors and the base optimizer's moments keep their meaning.
A gradient with NaN/Inf entries, or all zeros, keeps the previous factors.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker

RefreshMethod = Literal["svd", "eigh", "sthosvd", "subspace"]
"""How factors are recomputed; see the module docstring."""

REFRESH_METHODS: tuple[str, ...] = typing.get_args(RefreshMethod)
"""The factor refresh methods, the reference (exact HOSVD by SVD) first."""

Factors = tuple[jax.Array, ...]


def _leading_eigenvectors(gram: jax.Array, rank: int) -> jax.Array:
  """The ``rank`` eigenvectors of a Hermitian matrix with the largest eigenvalues."""
  gram = 0.5 * (gram + gram.conj().T)  # exact symmetry for eigh's sake
  _, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
  return vectors[:, ::-1][:, :rank]


def _complete(leading: jax.Array, rank: int) -> jax.Array:
  """Orthonormal ``(I, rank)`` columns spanning ``leading`` first.

  For ranks above the unfolding's column count, the leading subspace has fewer
  than ``rank`` directions; further columns complete it.
  """
  size, kept = leading.shape
  if rank > kept:
    leading = jnp.concatenate([leading, jnp.eye(size, rank - kept, dtype=leading.dtype)], axis=1)
  basis, _ = jnp.linalg.qr(leading)
  return basis


def _svd_factor(unfolded: jax.Array, rank: int, previous: jax.Array) -> jax.Array:
  del previous
  # A rank above the unfolding's column count needs the complete basis.
  u, _, _ = jnp.linalg.svd(unfolded, full_matrices=rank > unfolded.shape[1])
  return u[:, :rank]


def _eigh_factor(unfolded: jax.Array, rank: int, previous: jax.Array) -> jax.Array:
  del previous
  size, others = unfolded.shape
  if size <= others:
    return _leading_eigenvectors(unfolded @ unfolded.conj().T, rank)
  # A tall unfolding (matrix GaLore projecting the large side of a weight):
  # the small Gram matrix A^H A has the same leading spectrum, and A V spans
  # the leading left subspace.
  kept = min(rank, others)
  return _complete(unfolded @ _leading_eigenvectors(unfolded.conj().T @ unfolded, kept), rank)


def _qr_svd_factor(unfolded: jax.Array, rank: int, previous: jax.Array) -> jax.Array:
  del previous
  size, others = unfolded.shape
  if size <= others:
    # A = R^H Q^H with Q^H Q = I, so A's left singular vectors are those of the
    # small square R^H.
    r = jnp.linalg.qr(unfolded.conj().T, mode="r")
    u, _, _ = jnp.linalg.svd(r.conj().T)
    return u[:, :rank]
  q, r = jnp.linalg.qr(unfolded)
  u, _, _ = jnp.linalg.svd(r)
  kept = min(rank, others)
  return _complete(q @ u[:, :kept], rank)


def _subspace_factor(unfolded: jax.Array, rank: int, previous: jax.Array) -> jax.Array:
  del rank
  # One step of subspace iteration on A A^H without forming it: two thin
  # products, then an orthonormal basis of the result.
  basis, _ = jnp.linalg.qr(unfolded @ (unfolded.conj().T @ previous))
  return basis


FactorFn = Callable[[jax.Array, int, jax.Array], jax.Array]


def _independent(factor_fn: FactorFn) -> Callable:
  """HOSVD: every mode from the full tensor."""

  def compute(tensor, previous, modes):
    return tuple(
      factor_fn(_tucker.unfold(tensor, n), u.shape[1], u) for n, u in zip(modes, previous)
    )

  return compute


def _sequential(factor_fn: FactorFn) -> Callable:
  """ST-HOSVD: every mode from the tensor projected on the modes before it."""

  def compute(tensor, previous, modes):
    factors = list(previous)
    # The most compressing modes first shrink the tensor the most for the rest.
    order = sorted(range(len(modes)), key=lambda k: previous[k].shape[1] / tensor.shape[modes[k]])
    for k in order:
      factors[k] = factor_fn(_tucker.unfold(tensor, modes[k]), previous[k].shape[1], previous[k])
      tensor = _tucker.mode_dot(tensor, factors[k].conj(), modes[k])
    return tuple(factors)

  return compute


_COMPUTE = {
  "svd": _independent(_svd_factor),
  "eigh": _independent(_eigh_factor),
  "sthosvd": _sequential(_qr_svd_factor),
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


def initial_factors(shapes: Sequence[tuple[int, ...]], dtype) -> Factors:
  """The factors before any refresh: the first ``R_n`` coordinate axes.

  A shape may carry batch axes in front; every batch entry gets the same.
  """
  return tuple(
    jnp.broadcast_to(jnp.eye(*shape[-2:], dtype=dtype), shape).copy() for shape in shapes
  )


def _is_initial(factors: Factors) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(u == jnp.eye(*u.shape, dtype=u.dtype)) for u in factors]))


def refresh_factors(
  tensor: jax.Array,
  previous: Factors,
  modes: Sequence[int],
  method: RefreshMethod,
) -> Factors:
  """New factors for ``tensor`` by ``method``.

  Args:
    tensor: The gradient seen as a tensor with one axis per mode (no batch
      axes; map this function over them).
    previous: The current factors, one ``(I_n, R_n)`` array per projected
      mode; they fix the ranks and the dtype the decomposition runs in.
    modes: The projected modes, in the order of ``previous``.
    method: One of `REFRESH_METHODS`.

  Returns:
    The new factors, orthonormal columns, phases aligned with ``previous``;
    ``previous`` itself if ``tensor`` has NaN/Inf entries or is all zeros.
  """
  if method not in _COMPUTE:
    raise ValueError(f"refresh_factors takes one of {REFRESH_METHODS}, got {method!r}.")
  previous = tuple(previous)
  if not previous:
    return ()
  dtype = previous[0].dtype

  def compute():
    work = tensor.astype(dtype)
    # Scale-free factors from a scale-free tensor: no overflow of squares for
    # huge gradients, no underflow for tiny ones.
    work = work / jnp.max(jnp.abs(work)).astype(dtype)
    if method == "subspace":
      factors = jax.lax.cond(
        _is_initial(previous),
        lambda: _COMPUTE["sthosvd"](work, previous, modes),
        lambda: _COMPUTE["subspace"](work, previous, modes),
      )
    else:
      factors = _COMPUTE[method](work, previous, modes)
    return tuple(_align_phases(f.astype(u.dtype), u) for f, u in zip(factors, previous))

  return jax.lax.cond(is_usable(tensor), compute, lambda: previous)
