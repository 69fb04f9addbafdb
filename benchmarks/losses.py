"""Relative L^p and H^1 losses for fields on periodic 2-D grids.

Both follow neuraloperator's ``LpLoss`` / ``H1Loss`` in relative mode: each
sample's error norm is divided by the norm of its target and the ratios are
averaged over the batch. Quadrature weights cancel in the ratio and are
omitted. Fields are channels-last, ``(B, H, W)`` or ``(B, H, W, C)``.
"""

import jax
import jax.numpy as jnp


def _per_sample_sum(x: jax.Array) -> jax.Array:
  """Sums over every axis but the leading batch axis."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def per_sample_relative_lp(pred: jax.Array, y: jax.Array, p: float = 2) -> jax.Array:
  """``||pred - y||_p / ||y||_p`` for each sample of a batch.

  Args:
    pred: Predictions of shape ``(B, ...)``, or any shape that broadcasts
      against ``y`` (e.g. one channel for several).
    y: Targets of shape ``(B, ...)``.
    p: Order of the norm.

  Returns:
    The ``(B,)`` ratios.
  """
  err = _per_sample_sum(jnp.abs(pred - y) ** p)
  ref = _per_sample_sum(jnp.abs(y) ** p)
  return (err / ref) ** (1 / p)


def relative_lp(pred: jax.Array, y: jax.Array, p: float = 2) -> jax.Array:
  """Batch mean of ``||pred - y||_p / ||y||_p``, norms taken per sample.

  Args:
    pred: Predictions of shape ``(B, ...)``.
    y: Targets of the same shape.
    p: Order of the norm.

  Returns:
    A scalar.
  """
  return jnp.mean(per_sample_relative_lp(pred, y, p))


def _central_diff(u: jax.Array, axis: int) -> jax.Array:
  """Periodic central difference along ``axis`` of a grid on ``[0, 1)``."""
  h = 1.0 / u.shape[axis]
  return (jnp.roll(u, -1, axis) - jnp.roll(u, 1, axis)) / (2 * h)


def _h1_norm_sq(u: jax.Array) -> jax.Array:
  """Per-sample ``||u||^2 + ||du/dx||^2 + ||du/dy||^2`` on axes 1 and 2."""
  return _per_sample_sum(u**2 + _central_diff(u, 1) ** 2 + _central_diff(u, 2) ** 2)


def relative_h1(pred: jax.Array, y: jax.Array) -> jax.Array:
  """Batch mean of ``||pred - y||_H1 / ||y||_H1``, norms taken per sample.

  The H^1 norm adds the squared L^2 norms of the first derivatives along the
  two spatial axes, estimated by periodic central differences with spacing
  ``1 / size``.

  Args:
    pred: Predictions of shape ``(B, H, W)`` or ``(B, H, W, C)``.
    y: Targets of the same shape.

  Returns:
    A scalar.
  """
  return jnp.mean(jnp.sqrt(_h1_norm_sq(pred - y) / _h1_norm_sq(y)))


# The training losses by name: ``loss(pred, y) -> scalar``.
LOSSES = {"l2": relative_lp, "h1": relative_h1}
