"""Factor refresh: the leading subspaces of a gradient tensor's unfoldings.

For each projected mode ``n``, an ``(I_n, R_n)`` factor with orthonormal
columns spanning the leading left singular subspace of the mode-``n``
unfolding, by sequentially truncated HOSVD (Vannieuwenhoven et al., 2012):
each mode is computed on the tensor already projected on the modes before it,
the most compressing first, so later unfoldings are smaller. Each mode's
subspace comes from a QR decomposition of the unfolding's long side followed by
the SVD of the small triangular factor: as accurate as a plain SVD of the
unfolding on any spectrum (backward stable, no Gram matrix, whose forming would
square the condition number), and no SVD of a wide matrix (an FNO-128
unfolding is 64 x 135168).

Numerics: the gradient is divided by its largest magnitude first (the factors
do not depend on its scale), so gradients near the float32 range's ends give
the same factors as moderate ones. Decompositions run in the factors' dtype
(float32 or complex64 at least). Column signs (phases, for complex tensors) are
aligned with the previous factors, so a refresh that finds the same subspace
returns the same factors and the base optimizer's moments keep their meaning.
A gradient with NaN/Inf entries, or all zeros, keeps the previous factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker

Factors = tuple[jax.Array, ...]


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


def _leading_subspace(unfolded: jax.Array, rank: int) -> jax.Array:
  """The ``rank`` leading left singular vectors of a matrix, through QR and a small SVD."""
  size, others = unfolded.shape
  if size <= others:
    # A = R^H Q^H with Q^H Q = I, so A's left singular vectors are those of the
    # small square R^H.
    r = jnp.linalg.qr(unfolded.conj().T, mode="r")
    u, _, _ = jnp.linalg.svd(r.conj().T)
    return u[:, :rank]
  q, r = jnp.linalg.qr(unfolded)
  u, _, _ = jnp.linalg.svd(r)
  return _complete(q @ u[:, : min(rank, others)], rank)


def _sthosvd(tensor: jax.Array, previous: Factors, modes: Sequence[int]) -> Factors:
  """ST-HOSVD: every mode from the tensor projected on the modes before it."""
  factors = list(previous)
  # The most compressing modes first shrink the tensor the most for the rest.
  order = sorted(range(len(modes)), key=lambda k: previous[k].shape[1] / tensor.shape[modes[k]])
  for k in order:
    factors[k] = _leading_subspace(_tucker.unfold(tensor, modes[k]), previous[k].shape[1])
    tensor = _tucker.mode_dot(tensor, factors[k].conj(), modes[k])
  return tuple(factors)


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


def refresh_factors(tensor: jax.Array, previous: Factors, modes: Sequence[int]) -> Factors:
  """New factors for ``tensor``.

  Args:
    tensor: The gradient seen as a tensor with one axis per mode (no batch
      axes; map this function over them).
    previous: The current factors, one ``(I_n, R_n)`` array per projected
      mode; they fix the ranks and the dtype the decomposition runs in.
    modes: The projected modes, in the order of ``previous``.

  Returns:
    The new factors, orthonormal columns, phases aligned with ``previous``;
    ``previous`` itself if ``tensor`` has NaN/Inf entries or is all zeros.
  """
  previous = tuple(previous)
  if not previous:
    return ()
  dtype = previous[0].dtype

  def compute():
    work = tensor.astype(dtype)
    # Scale-free factors from a scale-free tensor: no overflow of squares for
    # huge gradients, no underflow for tiny ones.
    work = work / jnp.max(jnp.abs(work)).astype(dtype)
    factors = _sthosvd(work, previous, modes)
    return tuple(_align_phases(f.astype(u.dtype), u) for f, u in zip(factors, previous))

  return jax.lax.cond(is_usable(tensor), compute, lambda: previous)
