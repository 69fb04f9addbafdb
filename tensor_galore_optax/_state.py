"""The state of `tensor_galore`, and the check that a held state is one.

Its own module so that the transformation and the sharding rule both import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import optax

# Fields that only the 0.2 releases' state had (Fira's residual norms, averaged Gram matrices).
_FIELDS_BEFORE_0_3 = ("residual_norms", "grams")


class TensorGaLoreState(NamedTuple):
  """State of `tensor_galore`.

  Attributes:
    count: Number of updates taken so far (int32 scalar).
    factors: One entry per parameter leaf: a tuple holding the factor of each
      projected mode (``(I_n, R_n)``, with the leaf's batch axes in front),
      ``()`` for leaves that are not projected.
    base_optimizer_state: The base optimizer's state on the tree of cores
      (projected leaves) and full gradients (the other leaves).
    residual_moments: One entry per parameter leaf: with ``residual_scale``,
      a tuple of the running mean squares of the part of the gradient outside
      the subspace, one vector per mode (``(I_n,)``, the leaf's batch axes in
      front); ``()`` for the other leaves. ``None`` in a state of 0.3.
  """

  count: jax.Array
  factors: optax.Params
  base_optimizer_state: optax.OptState
  residual_moments: optax.Params = None


def as_state(state) -> TensorGaLoreState:
  """``state`` as a `TensorGaLoreState`, or a clear error for anything else.

  A state restored without a target (a mapping of field names, a list) is
  accepted when it has exactly its fields, or the first three (a state of
  0.3, which had no residual: its ``residual_moments`` are ``None``). A state of the
  0.2 releases (five fields) is refused with a message saying so, rather than
  failing later on a shape deep inside the update.

  Raises:
    ValueError: For a state of another version or another transformation.
  """
  if isinstance(state, TensorGaLoreState):
    return state
  names = TensorGaLoreState._fields
  if isinstance(state, Mapping) and set(state) in (set(names), set(names[:3])):
    return TensorGaLoreState(**{k: state[k] for k in names if k in state})
  plain = isinstance(state, (list, tuple)) and not hasattr(state, "_fields")
  if plain and len(state) in (3, len(names)):
    return TensorGaLoreState(*state)
  fields = tuple(state) if isinstance(state, Mapping) else getattr(state, "_fields", ())
  if set(fields) & set(_FIELDS_BEFORE_0_3) or (plain and len(state) == 5):
    raise ValueError(
      "this tensor_galore state has five fields (count, factors, base_optimizer_state, "
      "residual_norms, grams): it was written by tensor_galore_optax 0.2, whose state 0.3 "
      "no longer reads. Initialise a new state with `init` (the factors are recomputed at the "
      "first step), or keep training with 0.2."
    )
  raise ValueError(
    f"expected a TensorGaLoreState {names} from tensor_galore's init, got a "
    f"{type(state).__name__} {fields or ''}; was the state made by another transformation?"
  )
