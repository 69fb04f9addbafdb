r"""The warm-up of the directions a refresh brings into the subspace.

A refresh can replace factor columns by directions the weights have never
moved along; the base optimizer's moments, kept across the refresh, then give
those directions full steps at once. On a conv net at AdamW's learning rate,
such first full steps made the loss jump at a refresh and, on one seed in
three, never recover (``benchmarks/results/frontier/NOTES.md``, H12 to H16).
A ramp of the whole step did not remove the jump; ramping only the new
directions did.

So at every refresh after step 0, each new factor column \(u\) of a mode gets
its novelty \(n = 1 - \|U_\text{old}^H u\|^2\), how much of it lies outside
the previous factors' span (0 for a direction kept, 1 for one orthogonal to
all of them). For the next ``steps`` steps, the core step along that column
is multiplied by \(1 - n (1 - \min(1, (t + 1) / \text{steps}))\), \(t\) the
steps since the refresh: kept directions move at once, new ones ramp up
linearly. The state is one number per factor column.

Everything is per index of the leaf's batch axes (per layer of stacked
weights), as every other part of the projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker
from tensor_galore_optax._tucker import TuckerPlan


def applies(plan: TuckerPlan | None, steps: int | jax.Array) -> bool:
  """Whether a leaf's new directions warm up: projected leaves, ``steps > 0``.

  A traced ``steps`` (``optax.inject_hyperparams``) keeps the state, whatever its value.
  """
  return plan is not None and (isinstance(steps, jax.Array) or steps > 0)


def shapes(plan: TuckerPlan | None, steps: int | jax.Array) -> tuple[tuple[int, ...], ...]:
  """The shapes of a leaf's novelty: one vector per projected mode, batch axes in front."""
  if not applies(plan, steps):
    return ()
  return tuple(shape[:-2] + shape[-1:] for shape in plan.factor_shapes)


def init_novelty(plan: TuckerPlan | None, steps: int | jax.Array, dtype) -> tuple[jax.Array, ...]:
  """Zero novelty, of `shapes` (real, whatever the factors' dtype)."""
  return tuple(jnp.zeros(shape, jnp.finfo(dtype).dtype) for shape in shapes(plan, steps))


def novelty(new: Sequence[jax.Array], old: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
  """Per mode, how much of each column of ``new`` lies outside the span of ``old``.

  Both have orthonormal columns, batch axes in front of their last two.
  """
  out = []
  for n, o in zip(new, old, strict=True):
    kept = jnp.sum(jnp.abs(jnp.einsum("...is,...ir->...sr", o.conj(), n)) ** 2, axis=-2)
    out.append(jnp.clip(1 - kept, 0, 1))  # round-off can leave 1 - 1 slightly negative
  return tuple(out)


def ramp(count: jax.Array, update_proj_gap: int, steps: int | jax.Array) -> jax.Array:
  """How far the warm-up has gone at step ``count``: 1 once ``steps`` steps passed a refresh.

  A warm-up longer than the gap ends at the next refresh; none (``steps <= 0``) is 1 at once.
  """
  since = (count % update_proj_gap + 1).astype(jnp.float32)
  length = jnp.minimum(jnp.asarray(steps, jnp.float32), update_proj_gap)
  return jnp.where(length > 0, jnp.minimum(1.0, since / jnp.maximum(length, 1.0)), 1.0)


def warm_up(plan: TuckerPlan, core_step: jax.Array, novelty, progress: jax.Array) -> jax.Array:
  """``core_step`` with each projected mode's entries scaled by ``1 - n (1 - progress)``."""

  def per_layer(step, novelty):
    for mode, n in zip(plan.projected_modes, novelty, strict=True):
      weight = (1 - n * (1 - progress)).astype(jnp.finfo(step.dtype).dtype)
      shape = [1] * step.ndim
      shape[mode] = -1
      step = step * weight.reshape(shape).astype(step.dtype)
    return step

  return _tucker.batched(per_layer, len(plan.batch_shape))(core_step, tuple(novelty))
