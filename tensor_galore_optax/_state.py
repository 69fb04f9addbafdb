"""The state of `tensor_galore`, and the check that a held state is one.

Its own module so that the transformation and the sharding rule both import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import optax


class TensorGaLoreState(NamedTuple):
  """State of `tensor_galore`.

  Attributes:
    count: Number of updates taken so far (int32 scalar).
    factors: One entry per parameter leaf: a tuple holding the factor of each
      projected mode (``(I_n, R_n)``, with the leaf's batch axes in front),
      ``()`` for leaves that are not projected.
    base_optimizer_state: The base optimizer's state on the tree of cores
      (projected leaves) and full gradients (the other leaves).
    residual_moments: One entry per parameter leaf: for a projected matrix
      with ``residual_scale``, a tuple of the running mean squares of the part
      of the gradient outside the subspace, one vector per mode (``(I_n,)``,
      the leaf's batch axes in front); ``()`` for the other leaves.
    novelty: One entry per parameter leaf: for a projected leaf with
      ``refresh_warmup_steps``, a tuple of one vector per projected mode
      (``(R_n,)``, the leaf's batch axes in front): how much of each factor
      column lay outside the previous factors' span at the last refresh
      (``1 - |U_old^H u|^2``; zeros before the first refresh after step 0);
      ``()`` for the other leaves.
  """

  count: jax.Array
  factors: optax.Params
  base_optimizer_state: optax.OptState
  residual_moments: optax.Params
  novelty: optax.Params


def as_state(state) -> TensorGaLoreState:
  """``state`` as a `TensorGaLoreState`, or a clear error for anything else.

  A state restored without a target (orbax gives a mapping of field names, or
  a list) is accepted when it has exactly the state's fields.

  Raises:
    ValueError: For a state of another transformation or another version
      (states of tensor_galore_optax 0.x and of 1.1 and earlier are not read:
      initialise a new one).
  """
  if isinstance(state, TensorGaLoreState):
    return state
  names = TensorGaLoreState._fields
  if isinstance(state, Mapping) and set(state) == set(names):
    return TensorGaLoreState(**{k: state[k] for k in names})
  if (
    isinstance(state, (list, tuple)) and not hasattr(state, "_fields") and len(state) == len(names)
  ):
    return TensorGaLoreState(*state)
  fields = tuple(state) if isinstance(state, Mapping) else getattr(state, "_fields", ())
  raise ValueError(
    f"expected a TensorGaLoreState {names} from tensor_galore's init, got a "
    f"{type(state).__name__} {fields or ''}; was the state made by another transformation, or "
    "by another version of tensor_galore_optax (0.x, or 1.1 and earlier, whose states have no "
    "novelty)? Initialise a new state with `init`."
  )
