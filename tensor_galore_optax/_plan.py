"""Which leaves `tensor_galore` projects, and how: the one planning function and the defaults.

Both the transformation and `projection_plan` plan through `plan_tree`, so the
report says exactly what the optimizer does. Everything here is plain Python on
shapes, run once per trace.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import _tucker
from tensor_galore_optax._tucker import Rank, TuckerPlan, TuckerSpec

# The defaults of `tensor_galore`, `tensor_galore_adamw` and `projection_plan`, in one place.
RANK = 0.25
UPDATE_PROJ_GAP = 200
MIN_SIZE = 16_384
MATCHED = "matched"
RESIDUAL_SCALE = 4.0
REFRESH_WARMUP_STEPS = 50

# A single spec, a pytree of specs matching the params (None = not projected),
# or a callable of the params returning such a pytree.
SpecLike = TuckerSpec | optax.Params | Callable[[optax.Params], Any] | None


def describe(path) -> str:
  """``leaf ['a']['b']``: how messages name a leaf (a bare array is "the params leaf")."""
  return f"leaf {jax.tree_util.keystr(path)}" if path else "the params leaf"


class TreePlan(NamedTuple):
  """Every leaf's `TuckerPlan` (``None`` = not projected), in the tree's flattened order.

  Attributes:
    treedef: The structure of the params tree.
    paths: Each leaf's path, as `describe` writes it.
    plans: Each leaf's plan.
  """

  treedef: Any
  paths: tuple[str, ...]
  plans: tuple[TuckerPlan | None, ...]

  def per_leaf(self, tree, what: str) -> list:
    """``tree``'s subtree at each leaf of the params (``tree`` has the params' structure)."""
    try:
      return self.treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"{what} does not match the params tree tensor_galore was initialised with; was the "
        f"state initialised for other params? {e}"
      ) from e

  def unflatten(self, leaves) -> Any:
    return self.treedef.unflatten(leaves)


def plan_tree(
  tree: optax.Params, *, rank: Rank, spec: SpecLike, min_size: int
) -> tuple[TreePlan, list[str]]:
  """Each leaf's plan, and a note for each leaf whose rank does not do what it says.

  A note names a leaf that is eligible (by its spec, or ``ndim >= 2`` and
  ``min_size`` entries) but that the rank leaves unprojected, or whose modes
  are too short for a float rank's fraction.

  Raises:
    TypeError, ValueError: naming the leaf, for a leaf that is not a floating
      or complex array, a spec tree that does not match, or a spec that does
      not fit its leaf.
  """
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in paths_and_leaves:
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      raise TypeError(
        f"{describe(path)} is a {type(leaf).__name__}, not an array; tensor_galore needs array "
        "leaves."
      )
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(
        f"{describe(path)} has shape {tuple(leaf.shape)} and dtype {leaf.dtype}; tensor_galore "
        "trains floating and complex parameters only. Keep integer and boolean arrays out of the "
        "optimized tree (e.g. nnx.split(model, nnx.Param, ...)) or wrap with optax.masked."
      )
  leaves = [leaf for _, leaf in paths_and_leaves]
  if spec is None or isinstance(spec, TuckerSpec):
    default = spec or TuckerSpec()
    eligible = lambda leaf: leaf.ndim >= 2 and leaf.size >= min_size
    specs = [default if eligible(leaf) else None for leaf in leaves]
  else:
    spec_tree = spec(tree) if callable(spec) else spec
    try:
      specs = treedef.flatten_up_to(spec_tree)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"spec does not match the params tree (a TuckerSpec or None per leaf): {e}"
      ) from e
    for (path, _), s in zip(paths_and_leaves, specs):
      if not (s is None or isinstance(s, TuckerSpec)):
        raise TypeError(f"spec for {describe(path)} is {s!r}; expected a TuckerSpec or None.")

  plans, notes = [], []
  for (path, leaf), s in zip(paths_and_leaves, specs):
    plan = None
    if s is not None and leaf.size:  # nothing to project in an empty leaf
      where = f"{describe(path)} with shape {tuple(leaf.shape)}"
      plan = _tucker.make_plan(leaf.shape, s, rank, where)
      automatic = s.batch_axes is None and s.modes is None
      note = _note(plan, rank if s.rank is None else s.rank, where, automatic=automatic)
      if note:
        notes.append(note)
      plan = plan if plan.projected_modes else None
    plans.append(plan)
  return TreePlan(treedef, tuple(describe(p) for p, _ in paths_and_leaves), tuple(plans)), notes


def _note(plan: TuckerPlan, rank: Rank, where: str, automatic: bool = False) -> str | None:
  """What a user should hear about a leaf's plan, if anything.

  ``automatic``: the leaf's batch axes were left to `_tucker.stacked_axes`,
  which cannot tell a stack of at least as many layers as the weight's
  shortest axis from a weight: a cut of the leading axis of such a leaf of
  five or more axes (an FNO or 3-D convolution stack) is named.
  """
  kept = _tucker.fraction_kept(plan.ranks, plan.mode_sizes)
  if automatic and not plan.batch_shape and len(plan.shape) >= 5 and plan.ranks[0] is not None:
    return (
      f"{where}: its leading axis ({plan.shape[0]}) is cut to {plan.ranks[0]}. If it stacks "
      "layers (nnx.scan, nnx.vmap), give it TuckerSpec(batch_axes=0) so that each layer gets "
      "its own factors; TuckerSpec(batch_axes=()) says it does not, and silences this."
    )
  sizes = ", ".join(map(str, plan.mode_sizes))
  if not plan.projected_modes:
    return (
      f"{where}: rank={rank!r} cuts none of its modes ({sizes}), so it is not projected: it "
      "keeps full-size moments. Give a smaller rank, or leave it out with a spec (None)."
    )
  if isinstance(rank, float) and kept > _tucker._WARN * rank:
    ranks = ", ".join(f"{i}->{r}" if r else f"{i}" for i, r in zip(plan.mode_sizes, plan.ranks))
    return (
      f"{where}: rank={rank!r} keeps {kept:.3g} of its entries (modes {ranks}): its modes are "
      "too short to cut to that fraction. Give this leaf per-mode ranks in a TuckerSpec."
    )
  return None


_OWN_MODULES = ("tensor_galore_optax", "optax", "jax", "jaxlib", "flax", "functools", "contextlib")


def warn_at_caller(message: str) -> None:
  """A `UserWarning` attributed to the first frame outside this library and the ones it calls from.

  So that it points at the user's ``tx.init(params)`` (or ``nnx.Optimizer(...)``),
  and Python's default filter shows it once per place.
  """
  frame, level = sys._getframe(1), 2
  while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OWN_MODULES:
    frame, level = frame.f_back, level + 1
  warnings.warn(message, UserWarning, stacklevel=level)


def core_struct(plan: TuckerPlan | None, leaf) -> jax.ShapeDtypeStruct:
  """The shape and dtype of what the base optimizer sees for ``leaf``."""
  return jax.ShapeDtypeStruct(leaf.shape if plan is None else plan.core_shape, leaf.dtype)


def factor_dtype(leaf_dtype) -> jnp.dtype:
  """The factors' and decompositions' dtype: at least float32, complex for complex leaves."""
  real = jnp.promote_types(jnp.finfo(leaf_dtype).dtype, jnp.float32)
  if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
    return jnp.result_type(real, jnp.complex64)
  return jnp.dtype(real)


def check_int(value, name: str, minimum: int) -> int:
  """``value`` as an int (NumPy's integers too), or an error naming ``name``."""
  if not _tucker._is_int(value):
    raise TypeError(f"{name} must be an int, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be at least {minimum}, got {value}.")
  return int(value)
