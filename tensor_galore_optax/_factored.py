"""Per-mode factored second moments: Adam's normalisation in the original basis.

Adam divides each coordinate of the gradient by the root of its own running
mean square. Tensor-GaLore runs Adam on the Tucker core, so that division
happens in the rotated basis of the factors, not in the parameter's own
coordinates (each channel, each Fourier mode). `scale_by_factored_rms` puts it
back where it was, at ``O(sum_n I_n)`` memory per tensor instead of
``O(prod_n I_n)``: for every mode ``n`` it keeps ``r_n``, the running mean of
``|g|^2`` over all axes but ``n``, and estimates the second moment of entry
``(i_1, ..., i_N)`` by the separable (rank-one) product

.. math::

  \\hat v_{i_1 \\dots i_N} = \\frac{\\prod_n r_n(i_n)}{\\bar r^{\\,N-1}},
  \\qquad \\bar r = \\operatorname{mean}(r_1),

which is exact when the second moments factor over the modes, and is
Adafactor's estimate (Shazeer & Stern, 2018) for a matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class FactoredRmsState(NamedTuple):
  """State of `scale_by_factored_rms`.

  Attributes:
    count: Number of updates taken so far (int32 scalar).
    nu: One entry per parameter leaf: a tuple holding the running mean square
      of each axis (a vector of length ``I_n`` per axis) for factored leaves, a
      1-tuple holding the full-size running mean square for the others.
  """

  count: jax.Array
  nu: optax.Updates


def _is_factored(leaf, min_size: int) -> bool:
  return leaf.ndim >= 2 and leaf.size >= min_size and leaf.size > 0


def _real_dtype(dtype):
  return jnp.finfo(jnp.promote_types(dtype, jnp.float32)).dtype


def _marginals(square: jax.Array) -> tuple[jax.Array, ...]:
  """The mean of ``square`` over all axes but ``n``, for every axis ``n``."""
  axes = range(square.ndim)
  return tuple(jnp.mean(square, axis=tuple(a for a in axes if a != n)) for n in axes)


def _separable(marginals: tuple[jax.Array, ...]) -> jax.Array:
  """The rank-one tensor ``prod_n r_n / mean(r)^(N - 1)``."""
  mean = jnp.mean(marginals[0])
  mean = jnp.where(mean > 0, mean, 1)  # all-zero statistics give a zero estimate
  out = marginals[0] / mean
  for r in marginals[1:]:
    out = out[..., None] * (r / mean)
  # Normalising every factor by the mean, then multiplying it back once, keeps
  # each product near 1 and away from under- and overflow.
  return out * mean


def scale_by_factored_rms(
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  min_size: int = 16_384,
) -> optax.GradientTransformation:
  r"""Divides each gradient entry by the root of a per-mode factored mean square.

  For a leaf with ``ndim >= 2`` and at least ``min_size`` entries, keeps one
  running mean of :math:`|g|^2` per axis (over every other axis), with bias
  correction as in Adam, and returns

  .. math::

    u = g / (\sqrt{\hat v + \epsilon_{root}} + \epsilon),\qquad
    \hat v_{i_1 \dots i_N} = \prod_n r_n(i_n) / \bar r^{\,N-1},

  Adafactor's factored estimate extended to every axis of a tensor. Smaller
  leaves keep a full-size running mean square (RMSProp with bias correction).
  Complex gradients are normalised by their squared magnitude, so the update
  keeps each entry's phase.

  Placed before `tensor_galore` with a momentum-only base optimizer, the
  per-coordinate normalisation that Adam gets in the parameter's own
  coordinates is kept while the first moment lives on the Tucker core:

  ```py
  optax.chain(
      scale_by_factored_rms(),
      tensor_galore(rank, base_optimizer=optax.ema(0.9)),
      optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
  ```

  Args:
    b2: Decay rate of the running mean squares.
    eps: Added to the root, as Adam's ``eps``.
    eps_root: Added under the root, as Adam's ``eps_root``.
    min_size: Leaves with at least 2 dimensions and at least this many entries
      get factored statistics; the others full-size ones.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from tensor_galore_optax import scale_by_factored_rms
    >>> params = {'w': jnp.ones((8, 6, 4), jnp.complex64), 'b': jnp.ones(8)}
    >>> tx = scale_by_factored_rms(min_size=1)
    >>> state = tx.init(params)
    >>> [r.shape for r in state.nu['w']], [r.shape for r in state.nu['b']]
    ([(8,), (6,), (4,)], [(8,)])
    >>> updates, state = tx.update(params, state)
    >>> bool(jnp.allclose(jnp.abs(updates['w']), 1.0, atol=1e-4))
    True

  References:
    Shazeer & Stern, [Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost](https://arxiv.org/abs/1804.04235), 2018.

    Kingma & Ba, [Adam: A Method for Stochastic Optimization](
    https://arxiv.org/abs/1412.6980), 2015.
  """
  if not 0.0 <= b2 < 1.0:
    raise ValueError(f"b2 must be in [0, 1), got {b2}.")
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"min_size must be a non-negative int, got {min_size!r}.")

  def init_leaf(p):
    dtype = _real_dtype(p.dtype)
    if _is_factored(p, min_size):
      return tuple(jnp.zeros((n,), dtype) for n in p.shape)
    return (jnp.zeros(p.shape, dtype),)

  def init_fn(params):
    return FactoredRmsState(jnp.zeros([], jnp.int32), jax.tree.map(init_leaf, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    correction = 1.0 - jnp.asarray(b2, jnp.float32) ** count

    def update_leaf(g, nu):
      square = jnp.square(jnp.abs(g)).astype(nu[0].dtype)
      stats = _marginals(square) if len(nu) > 1 else (square,)
      nu = tuple(b2 * r + (1.0 - b2) * s for r, s in zip(nu, stats))
      v = (_separable(nu) if len(nu) > 1 else nu[0]) / correction.astype(nu[0].dtype)
      u = g / (jnp.sqrt(v + eps_root) + eps).astype(g.dtype)
      return u, nu

    flat_g, treedef = jax.tree.flatten(updates)
    flat_nu = treedef.flatten_up_to(state.nu)
    pairs = [update_leaf(g, nu) for g, nu in zip(flat_g, flat_nu)]
    new_updates = treedef.unflatten([u for u, _ in pairs])
    new_nu = treedef.unflatten([nu for _, nu in pairs])
    return new_updates, FactoredRmsState(count, new_nu)

  return optax.GradientTransformation(init_fn, update_fn)
