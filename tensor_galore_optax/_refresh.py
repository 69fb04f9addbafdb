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
* ``"averaged"``: not from the current gradient alone but from an exponential
  moving average of each unfolding's Gram matrix ``A A^H``, updated at every
  step (`accumulate_grams`): the leading eigenvectors of that average
  (`factors_from_grams`), as Shampoo's and SOAP's bases are. The subspace is
  then where gradients have lately been, not where one mini-batch's is, and
  successive refreshes change the basis less. Its state is ``I_n x I_n`` per
  projected mode.

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

RefreshMethod = Literal["svd", "eigh", "sthosvd", "subspace", "averaged"]
"""How factors are recomputed; see the module docstring."""

REFRESH_METHODS: tuple[str, ...] = typing.get_args(RefreshMethod)
"""The factor refresh methods, the reference (exact HOSVD by SVD) first."""

AVERAGED = "averaged"
"""The refresh method that decomposes averaged Gram matrices rather than one gradient."""

GRADIENT_METHODS: tuple[str, ...] = tuple(m for m in REFRESH_METHODS if m != AVERAGED)
"""The refresh methods that decompose the current gradient (`refresh_factors`)."""

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


def mixing_matrix(rank: int, dtype) -> jax.Array:
  """The orthonormal DCT-II basis of ``R^rank`` as columns: a fixed rotation that spreads
  each coordinate over several (the first column is constant)."""
  n = jnp.arange(rank)
  c = jnp.sqrt(2.0 / rank) * jnp.cos(jnp.pi * (n[:, None] + 0.5) * n[None, :] / rank)
  return c.at[:, 0].divide(jnp.sqrt(2.0)).astype(dtype)


def _is_initial(factors: Factors) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(u == jnp.eye(*u.shape, dtype=u.dtype)) for u in factors]))


def refresh_factors(
  tensor: jax.Array,
  previous: Factors,
  modes: Sequence[int],
  method: RefreshMethod,
  mixed: bool = False,
) -> Factors:
  """New factors for ``tensor`` by ``method``.

  Args:
    tensor: The gradient seen as a tensor with one axis per mode (no batch
      axes; map this function over them).
    previous: The current factors, one ``(I_n, R_n)`` array per projected
      mode; they fix the ranks and the dtype the decomposition runs in.
    modes: The projected modes, in the order of ``previous``.
    method: One of `GRADIENT_METHODS`.
    mixed: Whether to rotate each new factor's columns by `mixing_matrix`
      (the same subspace, its leading directions spread over every column).

  Returns:
    The new factors, orthonormal columns, phases aligned with ``previous``;
    ``previous`` itself if ``tensor`` has NaN/Inf entries or is all zeros.
  """
  if method not in _COMPUTE:
    raise ValueError(
      f"refresh_factors decomposes a gradient by one of {GRADIENT_METHODS}, got {method!r} "
      "(averaged Gram matrices go to factors_from_grams)."
    )
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
    return _finish(factors, previous, mixed)

  return jax.lax.cond(is_usable(tensor), compute, lambda: previous)


def _finish(factors: Factors, previous: Factors, mixed: bool) -> Factors:
  """New factors in the previous ones' dtype, mixed if asked, phases aligned with them."""
  if mixed:
    factors = tuple(f @ mixing_matrix(f.shape[1], f.dtype) for f in factors)
  return tuple(_align_phases(f.astype(u.dtype), u) for f, u in zip(factors, previous))


def accumulate_grams(
  grams: Factors, tensor: jax.Array, modes: Sequence[int], decay: jax.typing.ArrayLike
) -> Factors:
  """``decay * G_n + (1 - decay) * A_n A_n^H / |A|^2`` for each projected mode's unfolding ``A_n``.

  Each step's Gram matrix is normalised to unit trace, so the average weighs
  steps by their directions, not their sizes (the large gradients of the
  first steps do not dominate it), and no gradient's scale can overflow or
  underflow it.

  Args:
    grams: The running averages, one ``(I_n, I_n)`` array per projected mode
      (no batch axes; map this function over them).
    tensor: The gradient seen as a tensor with one axis per mode.
    modes: The projected modes, in the order of ``grams``.
    decay: The average's decay rate, in [0, 1).

  Returns:
    The updated averages; ``grams`` themselves if ``tensor`` has NaN/Inf
    entries or is all zeros (one bad step must not poison every later
    refresh).
  """
  grams = tuple(grams)
  if not grams:
    return ()

  def accumulate():
    work = tensor.astype(grams[0].dtype)
    work = work / jnp.max(jnp.abs(work)).astype(work.dtype)
    work = work / jnp.linalg.norm(work).astype(work.dtype)
    new = []
    for n, gram in zip(modes, grams):
      unfolded = _tucker.unfold(work, n)
      new.append(decay * gram + (1 - decay) * (unfolded @ unfolded.conj().T))
    return tuple(g.astype(old.dtype) for g, old in zip(new, grams))

  return jax.lax.cond(is_usable(tensor), accumulate, lambda: grams)


def factors_from_grams(grams: Factors, previous: Factors, mixed: bool = False) -> Factors:
  """The leading ``R_n`` eigenvectors of each averaged Gram matrix (``"averaged"``).

  Args:
    grams: Hermitian ``(I_n, I_n)`` averages of ``A_n A_n^H`` (`accumulate_grams`).
    previous: The current factors, ``(I_n, R_n)`` each; they fix the ranks.
    mixed: Whether to rotate each new factor's columns by `mixing_matrix`.

  Returns:
    The new factors, phases aligned with ``previous``; ``previous`` itself
    while every average is still zero (no usable gradient seen yet).
  """
  grams, previous = tuple(grams), tuple(previous)
  if not previous:
    return ()

  def compute():
    factors = tuple(_leading_eigenvectors(g, u.shape[1]) for g, u in zip(grams, previous))
    return _finish(factors, previous, mixed)

  usable = jnp.all(jnp.stack([is_usable(g) for g in grams]))
  return jax.lax.cond(usable, compute, lambda: previous)
