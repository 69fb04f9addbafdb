"""What `tensor_galore` does with each leaf of a params tree, and what it keeps, before training."""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from tensor_galore_optax import _memory, _plan, _transform
from tensor_galore_optax._adam import SecondMoment, scale_by_core_adam
from tensor_galore_optax._tucker import Rank


class LeafPlan(NamedTuple):
  """One leaf's projection.

  Attributes:
    path: The leaf's path in the params tree (``jax.tree_util.keystr``).
    shape: The leaf's shape.
    layers: The sizes of its batch axes (stacked layers, each projected on
      its own); ``()`` for none.
    modes: ``(I_n, R_n)`` per mode, ``R_n`` ``None`` where the mode is not
      projected; ``()`` for a leaf that is not projected at all.
    state_bytes: Bytes `tensor_galore_adamw` keeps for it: its factors, Adam's
      two moments (on the core, or on the leaf if not projected) and, for a
      projected matrix, the residual's running mean squares (one per side).
    adamw_bytes: Bytes of ``optax.adamw``'s two moments of the leaf.
  """

  path: str
  shape: tuple[int, ...]
  layers: tuple[int, ...]
  modes: tuple[tuple[int, int | None], ...]
  state_bytes: int
  adamw_bytes: int


class ProjectionPlan(NamedTuple):
  """Every leaf's `LeafPlan` and the totals; ``str()`` formats it as a table.

  Attributes:
    leaves: One `LeafPlan` per leaf, in the tree's order.
    state_bytes: The whole state of `tensor_galore_adamw` with these settings.
    adamw_state_bytes: The whole state of ``optax.adamw``.
  """

  leaves: tuple[LeafPlan, ...]
  state_bytes: int
  adamw_state_bytes: int

  def __str__(self) -> str:
    rows = [("leaf", "shape", "modes (size->rank)", "state / AdamW")]
    for leaf in self.leaves:
      modes = ", ".join(f"{i}->{r}" if r else f"{i}" for i, r in leaf.modes) or "not projected"
      if leaf.layers and leaf.modes:
        modes = f"{' x '.join(map(str, leaf.layers))} x [{modes}]"
      ratio = leaf.state_bytes / leaf.adamw_bytes if leaf.adamw_bytes else 1.0
      rows.append((leaf.path, str(leaf.shape), modes, f"{ratio:.3f}"))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    mb = lambda b: f"{b / 1e6:.2f} MB"
    lines.append(
      f"optimizer state {mb(self.state_bytes)}: "
      f"{self.state_bytes / self.adamw_state_bytes:.3f}x AdamW's {mb(self.adamw_state_bytes)}"
    )
    return "\n".join(lines)


def projection_plan(
  params: optax.Params,
  *,
  rank: Rank = _plan.RANK,
  spec: _plan.SpecLike = None,
  min_size: int = _plan.MIN_SIZE,
  residual_scale: float | None = _plan.RESIDUAL_SCALE,
  second_moment: SecondMoment = "full",
  mu_dtype: jax.typing.DTypeLike | None = None,
  refresh_warmup_steps: int = _plan.REFRESH_WARMUP_STEPS,
) -> ProjectionPlan:
  """Which modes of each leaf `tensor_galore` projects, at which ranks, and the bytes it keeps.

  Shapes only: nothing is allocated. The arguments mean what they mean for
  `tensor_galore` and `tensor_galore_adamw`, with the same defaults; the bytes
  are those of the state these keep with Adam on the cores (`scale_by_core_adam`).

  Args:
    params: The parameters (arrays or ``jax.ShapeDtypeStruct`` leaves).
    rank: The projection rank.
    spec: Which leaves are projected and how.
    min_size: Smallest leaf projected by default.
    residual_scale: The residual's step (``None``: dropped, no state for it).
    second_moment: Adam's second moment, ``"full"`` or ``"factored"``.
    mu_dtype: The first moment's dtype (``None``: the leaf's).
    refresh_warmup_steps: The warm-up of a refresh's new directions (``0``:
      none, no state for it).

  Returns:
    A `ProjectionPlan`; print it for a table. A stacked leaf's layers show as
    ``L x [modes]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tensor_galore_optax import projection_plan
    >>> params = {'conv': jnp.zeros((3, 3, 64, 64)), 'bias': jnp.zeros(64)}
    >>> print(projection_plan(params, rank=0.25))
    leaf      shape           modes (size->rank)  state / AdamW
    ['bias']  (64,)           not projected       1.000
    ['conv']  (3, 3, 64, 64)  3, 3, 64->16, 64    0.264
    optimizer state 0.08 MB: 0.265x AdamW's 0.30 MB
  """
  adam = scale_by_core_adam(mu_dtype=mu_dtype, second_moment=second_moment)
  tx = _transform.tensor_galore(
    rank=rank,
    spec=spec,
    min_size=min_size,
    residual_scale=residual_scale,
    base_optimizer=adam,
    refresh_warmup_steps=refresh_warmup_steps,
  )
  state = jax.eval_shape(tx.init, params)
  tree, _ = _plan.plan_tree(params, rank=rank, spec=spec, min_size=min_size)
  leaves = tree.per_leaf(params, "params")
  # Adam's moments per leaf: a factored second moment is a subtree where the leaf was.
  per_param = jax.tree.structure(params).flatten_up_to
  base = state.base_optimizer_state
  moment_bytes = [_memory.tree_bytes(m) for m in per_param(base.mu)]
  moment_bytes = [b + _memory.tree_bytes(n) for b, n in zip(moment_bytes, per_param(base.nu))]
  per_leaf = zip(
    tree.paths,
    leaves,
    tree.plans,
    tree.per_leaf(state.factors, "factors"),
    tree.per_leaf(state.residual_moments, "residual moments"),
    tree.per_leaf(state.novelty, "novelty"),
    moment_bytes,
  )
  report = tuple(
    LeafPlan(
      path=path.removeprefix("leaf "),
      shape=tuple(leaf.shape),
      layers=() if plan is None else plan.batch_shape,
      modes=() if plan is None else tuple(zip(plan.mode_sizes, plan.ranks)),
      state_bytes=_memory.tree_bytes((factors, residual, novelty)) + moments,
      adamw_bytes=2 * _memory.tree_bytes(leaf),
    )
    for path, leaf, plan, factors, residual, novelty, moments in per_leaf
  )
  adamw = _memory.optimizer_state_bytes(optax.adamw(1e-3), params)
  # Decay and learning rate, chained after it in `tensor_galore_adamw`, keep no state.
  return ProjectionPlan(report, _memory.tree_bytes(state), adamw)
