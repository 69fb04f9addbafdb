r"""The step of the gradient outside the subspace, at ``O(sum_n I_n)`` memory per leaf.

The projection drops the residual \(E = G - C \times_1 U_1 \cdots \times_N U_N\)
of each gradient: between refreshes, only the factors' directions train.
`tensor_galore`'s ``residual_scale`` adds a step along it instead, with no
moment of \(E\)'s size:

* Direction: each entry of \(E\) divided by the root of its estimated second
  moment, Adafactor's separable estimate (Shazeer & Stern, 2018) extended to
  every mode: for each mode \(n\) a running mean \(r_n\) of \(|E|^2\) over
  the other modes, and
  \(\hat v_{i_1 \dots i_N} = \prod_n r_n(i_n) / \bar r^{\,N-1}\).
* Length: the direction's root mean square set to ``residual_scale`` times the
  projected step's (per entry of the weight: the base optimizer's, Adam's
  about the learning rate times its signal-to-noise ratio), times the fraction
  \(|E| / |G|\) of the gradient outside the subspace. So the residual moves
  as the projected weights do, whatever the base optimizer, and a gradient
  that the factors hold whole (a residual of round-off) adds nothing.

Everything is per index of the leaf's batch axes (per layer of stacked
weights), as every other part of the projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker
from tensor_galore_optax._tucker import TuckerPlan

DECAY = 0.999
"""Decay of the residual's running mean squares (Adam's default ``b2``)."""

_TINY = 1e-30  # Added to the mean squares, as Adafactor's epsilon: 0/0 stays 0.


def applies(plan: TuckerPlan | None, residual_scale) -> bool:
  """Whether a leaf's residual trains: projected matrices (two modes) with a ``residual_scale``.

  A dense layer's gradient has at most the batch size for rank at each step,
  mostly outside any fixed subspace; the gradient of a convolution or FNO
  kernel, summed over every position, stays close to its factors' subspace,
  where the residual step measured no better and, on a conv net, less stable.
  Factors that span their whole mode hold every gradient exactly: there the
  residual would be round-off, whose normalised step depends on the CPU's
  kernels, so such a leaf has none.
  """
  if plan is None or residual_scale is None or len(plan.mode_sizes) != 2:
    return False
  return any(r < i for r, i in zip(plan.ranks, plan.mode_sizes) if r is not None)


def shapes(plan: TuckerPlan | None, residual_scale) -> tuple[tuple[int, ...], ...]:
  """The shapes of a leaf's running mean squares: one vector per mode, batch axes in front.

  ``()`` for a leaf without a residual (`applies`).
  """
  if not applies(plan, residual_scale):
    return ()
  return tuple(plan.batch_shape + (size,) for size in plan.mode_sizes)


def init_statistics(plan: TuckerPlan | None, residual_scale, dtype) -> tuple[jax.Array, ...]:
  """Zero running mean squares, of `shapes` (real: mean squares of complex entries are)."""
  return tuple(jnp.zeros(shape, jnp.finfo(dtype).dtype) for shape in shapes(plan, residual_scale))


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


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.abs(x) ** 2))


def residual_step(
  plan: TuckerPlan,
  tensor: jax.Array,
  core: jax.Array,
  step: jax.Array,
  factors,
  statistics: tuple[jax.Array, ...],
  count: jax.Array,
  residual_scale,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """The residual's step (in the plan's tensor view) and the updated statistics.

  Args:
    plan: The leaf's plan.
    tensor: The gradient, ``plan.to_tensor(grad)``, in the working dtype.
    core: Its core.
    step: The projected step, scaled, on the core: its back-projection has the
      same norm (orthonormal factor columns), so the core gives its length.
    factors: The factors the core was projected with.
    statistics: The running mean squares, one vector per mode.
    count: Steps taken before this one (for the bias correction).
    residual_scale: The step's root mean square relative to ``step``'s, times
      the fraction of the gradient outside the subspace.
  """
  correction = 1 - jnp.asarray(DECAY, jnp.float32) ** (count + 1).astype(jnp.float32)

  def per_layer(residual, gradient, step, statistics):
    square = jnp.abs(residual) ** 2 + _TINY
    statistics = tuple(
      DECAY * r + (1 - DECAY) * m.astype(r.dtype)
      for r, m in zip(statistics, _marginals(square), strict=True)
    )
    second_moment = _separable(statistics) / correction.astype(statistics[0].dtype)
    direction = residual * jax.lax.rsqrt(second_moment).astype(residual.dtype)
    # Times the fraction of the gradient outside the subspace: a gradient the
    # factors hold whole leaves a residual of round-off, which must not move.
    outside = _rms(residual) / jnp.maximum(_rms(gradient), _TINY)
    # The back-projected step's root mean square over the weight's entries, from the core.
    step_rms = jnp.sqrt(jnp.sum(jnp.abs(step) ** 2) / residual.size)
    length = residual_scale * outside * step_rms / jnp.maximum(_rms(direction), _TINY)
    return direction * length.astype(direction.dtype), statistics

  residual = tensor - plan.back_project(core.astype(tensor.dtype), factors)
  batched = _tucker.batched(per_layer, len(plan.batch_shape))
  return batched(residual, tensor, step, statistics)
