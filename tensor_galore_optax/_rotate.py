"""The base optimizer's moments carried into a refreshed basis."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tensor_galore_optax import _tucker
from tensor_galore_optax._tucker import TuckerPlan


def rotate_moment(
  plan: TuckerPlan,
  moment: jax.Array,
  old: Sequence[jax.Array],
  new: Sequence[jax.Array],
  *,
  second_order: bool,
  complete: bool = True,
) -> jax.Array:
  """``moment`` of a core in the ``old`` factors' coordinates, in the ``new`` ones."""

  def one(m, olds, news):
    dtype = m.dtype
    m = m.astype(jnp.result_type(m, jnp.float32))
    for k, mode in enumerate(plan.projected_modes):
      r = news[k].conj().T @ olds[k]  # new coordinates of the old basis vectors
      if not second_order:
        m = _tucker.mode_dot(m, r.T.astype(jnp.result_type(m, r)), mode)
        continue
      w = jnp.abs(r) ** 2
      rotated = _tucker.mode_dot(m, w.T.astype(m.dtype), mode)
      if complete:
        missing = jnp.clip(1 - jnp.sum(w, axis=1), 0, 1).astype(m.dtype)
        shape = [1] * m.ndim
        shape[mode] = -1
        rotated = rotated + missing.reshape(shape) * jnp.mean(m, axis=mode, keepdims=True)
      m = rotated
    return m.astype(dtype)

  return _tucker.batched(one, len(plan.batch_shape))(moment, tuple(old), tuple(new))
