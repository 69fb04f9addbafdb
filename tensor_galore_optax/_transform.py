"""Tensor-GaLore: Tucker-projected gradients as an optax transformation.

Implements "Tensor-GaLore: Memory-Efficient Training via Gradient Tensor
Decomposition" (George et al., https://arxiv.org/abs/2501.02379), which extends
GaLore (Zhao et al., https://arxiv.org/abs/2403.03507) from matrices to tensors
of any order, real or complex.

``update`` reads one way: check the state against the gradients once, then per
leaf to its core (refreshing the factors every ``update_proj_gap`` steps), the
base optimizer on the tree of cores, then per leaf back to full size (the
residual step included). A leaf's refresh and update depend on its own
gradient only.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import (
  _moments,
  _plan,
  _refresh,
  _residual,
  _sharding,
  _tucker,
  _warmup,
)
from tensor_galore_optax._adam import SecondMoment, scale_by_core_adam
from tensor_galore_optax._plan import MATCHED, SpecLike
from tensor_galore_optax._state import TensorGaLoreState, as_state
from tensor_galore_optax._tucker import Rank, TuckerPlan

Scale = float | jax.Array | Literal["matched"]


def _keyword_only(fn: Callable) -> Callable:
  """``fn``, whose options are keyword-only, with an error that names them when given by position.

  ``tensor_galore(1e-3)`` reads like an optax learning rate but would be a
  rank: refused, with the keyword it would have been.
  """
  signature = inspect.signature(fn)
  positional = [p.name for p in signature.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
  keyword = [p.name for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY]

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if len(args) > len(positional):
      extra = args[len(positional) :]
      given = ", ".join(f"{name}={value!r}" for name, value in zip(keyword, extra))
      hint = (
        ""
        if positional
        else " A learning rate goes to optax.scale_by_learning_rate after it in a chain, or to "
        "tensor_galore_adamw(learning_rate, ...)."
      )
      raise TypeError(
        f"{fn.__name__} takes {', '.join(positional) or 'no argument'} by position and its "
        f"options by keyword only: did you mean {fn.__name__}({given})?{hint}"
      )
    return fn(*args, **kwargs)

  return wrapper


def _check_scale(scale) -> Scale:
  if isinstance(scale, str):
    if scale != MATCHED:
      raise ValueError(f"scale must be a positive number or {MATCHED!r}, got {scale!r}.")
    return scale
  if isinstance(scale, jax.Array):  # optax.inject_hyperparams hands hyper-parameters over traced
    return scale
  if not (isinstance(scale, numbers.Real) and not isinstance(scale, bool) and 0 < scale < math.inf):
    raise ValueError(f"scale must be a positive number or {MATCHED!r}, got {scale!r}.")
  return float(scale)


def _check_residual_scale(residual_scale):
  if residual_scale is None or isinstance(residual_scale, jax.Array):
    return residual_scale
  if not (
    isinstance(residual_scale, numbers.Real)
    and not isinstance(residual_scale, bool)
    and 0 < residual_scale < math.inf
  ):
    raise ValueError(f"residual_scale must be None or a positive number, got {residual_scale!r}.")
  return float(residual_scale)


def _check_refresh_warmup_steps(steps) -> int | jax.Array:
  if isinstance(steps, jax.Array):  # optax.inject_hyperparams hands hyper-parameters over traced
    return steps
  return _plan.check_int(steps, "refresh_warmup_steps", 0)


def _matched_scale(plan: TuckerPlan) -> float:
  """``sqrt(I / R)``: how much shorter a projected step is than a full-size one.

  A base optimizer that moves every core entry by about the learning rate
  (Adam, whose per-entry steps are about ``lr``) takes a step of norm about
  ``lr * sqrt(R)`` on a core of ``R`` entries, and the orthonormal
  back-projection keeps that norm; the same optimizer at full size moves
  all ``I`` entries of the weight, a step of norm about ``lr * sqrt(I)``.
  Batch axes scale both alike.
  """
  core_modes = plan.core_shape[len(plan.batch_shape) :]
  return math.sqrt(math.prod(plan.mode_sizes) / math.prod(core_modes))


# --- Per leaf: its state checked, to the core, back to full size --------------------------------


def _as_tuple(held) -> tuple | None:
  """A per-leaf tuple of the state as a tuple, ``None`` if it is not one.

  Containers other than tuples are accepted (Flax NNX stores a tuple as a
  mapping from its positions).
  """
  try:
    return tuple(held[k] for k in range(len(held)))
  except (TypeError, KeyError):
    return None


def _checked(path: str, plan: TuckerPlan | None, grad, factors, moments, residual_scale):
  """A leaf's factors and residual moments from the state, as tuples, checked against ``grad``."""
  wanted = () if plan is None else plan.factor_shapes
  held = _as_tuple(factors)
  shapes = None if held is None else tuple(tuple(getattr(u, "shape", ())) for u in held)
  if shapes != tuple(wanted):
    raise ValueError(
      f"{path}: its gradient of shape {tuple(grad.shape)} needs factors {tuple(wanted)} "
      f"but the state holds {shapes if shapes is not None else factors!r}; was the state "
      "initialised for other params?"
    )
  if held and jnp.iscomplexobj(grad) and not jnp.iscomplexobj(held[0]):
    raise TypeError(
      f"{path}: the gradient is complex ({grad.dtype}) but the state was initialised "
      f"for real params ({held[0].dtype} factors); its imaginary part would be dropped. "
      "Initialise the optimizer with the complex params."
    )
  statistics = _checked_vectors(
    path, moments, _residual.shapes(plan, residual_scale), "residual moments", "residual_scale"
  )
  return held, statistics


def _checked_vectors(path: str, held, wanted, what: str, argument: str) -> tuple:
  """A leaf's per-mode vectors from the state (``what``), as a tuple of the ``wanted`` shapes,
  or an error naming the leaf and the ``argument`` that decides them."""
  vectors = _as_tuple(held)
  shapes = None if vectors is None else tuple(tuple(v.shape) for v in vectors)
  if shapes != wanted:
    raise ValueError(
      f"{path}: the state's {what} have shapes {shapes}, this transformation's have {wanted}: "
      f"was the state initialised with another {argument}? Initialise a new state with `init`."
    )
  return vectors


def _to_core(plan: TuckerPlan | None, grad, factors, novelty, count, update_proj_gap):
  """The leaf in its tensor view, its factors and novelty (refreshed at a refresh's step) and
  its core."""
  if plan is None:
    return grad, factors, novelty, grad
  tensor = plan.to_tensor(grad)
  refresh = lambda t, fs: _refresh.refresh_factors(t, fs, plan.projected_modes)
  # Stacked layers refresh one after the other: a decomposition's work arrays
  # are as large as the tensor, and this way exist for one layer at a time.
  refresh = _tucker.batched(refresh, len(plan.batch_shape), sequential=True)

  def refreshed():
    new = refresh(tensor, factors)
    if not novelty:
      return new, novelty
    # Step 0's factors replace coordinate axes, not directions that trained.
    fresh = _warmup.novelty(new, factors)
    return new, tuple(jnp.where(count > 0, f, 0).astype(n.dtype) for f, n in zip(fresh, novelty))

  now = count % update_proj_gap == 0
  factors, novelty = jax.lax.cond(now, refreshed, lambda: (factors, novelty))
  work = jnp.result_type(tensor, *factors)
  tensor = tensor.astype(work)
  return tensor, factors, novelty, plan.project(tensor, factors).astype(grad.dtype)


def _to_full(
  plan: TuckerPlan | None,
  step,
  tensor,
  core,
  factors,
  moments,
  novelty,
  *,
  dtype,
  scale,
  residual_scale,
  count,
  progress,
):
  """The full-size update of a core's step, and the residual's moments.

  ``scale`` times the back-projected step (its new directions warmed up by
  ``progress``, `_warmup`), plus the residual's step where it applies
  (`_residual.applies`); leaves that are not projected pass through.
  """
  if plan is None:
    return step, moments
  if isinstance(scale, str):
    scale = _matched_scale(plan)
  work = jnp.result_type(step, *factors)
  step = scale * step.astype(work)
  warmed = _warmup.warm_up(plan, step, novelty, progress) if novelty else step
  full = plan.back_project(warmed, factors)
  if _residual.applies(plan, residual_scale):
    # The residual moves as the projected weights do, not as their new directions warm up.
    term, moments = _residual.residual_step(
      plan, tensor, core.astype(work), step, factors, moments, count, residual_scale
    )
    full = full + term
  return plan.from_tensor(full).astype(dtype), moments


# --- The transformation ------------------------------------------------------------------------


@_keyword_only
def tensor_galore(
  *,
  rank: Rank = _plan.RANK,
  update_proj_gap: int = _plan.UPDATE_PROJ_GAP,
  scale: Scale = MATCHED,
  base_optimizer: optax.GradientTransformation | None = None,
  min_size: int = _plan.MIN_SIZE,
  spec: SpecLike = None,
  residual_scale: float | None = _plan.RESIDUAL_SCALE,
  refresh_warmup_steps: int = _plan.REFRESH_WARMUP_STEPS,
) -> optax.GradientTransformationExtraArgs:
  r"""Projects gradient tensors on a Tucker core, runs ``base_optimizer`` there.

  For a parameter tensor with gradient \(G\) of shape
  \((I_1, \dots, I_N)\), the transformation keeps one factor
  \(U_n \in \mathbb{C}^{I_n \times R_n}\) with orthonormal columns per
  projected mode and computes

  \[
    C = G \times_1 U_1^H \cdots \times_N U_N^H, \qquad
    u = \mathrm{scale} \cdot B(C) \times_1 U_1 \cdots \times_N U_N,
  \]

  where \(B\) is ``base_optimizer`` (Adam by default), whose state lives at
  the size of the core \(C\), not of \(G\). For projected matrices, the part
  of the gradient outside the subspace,
  \(G - C \times_1 U_1 \cdots \times_N U_N\), trains too
  (``residual_scale``). Every ``update_proj_gap`` steps, counting from step
  0, the factors are recomputed from the current gradient (the leading left
  singular vectors of each mode-``n`` unfolding, by sequentially truncated
  HOSVD) inside the jitted update, with one `jax.lax.cond` per leaf; the
  directions a refresh brings in then warm up (``refresh_warmup_steps``).
  Projections use conjugate transposes, so complex weights (FNO spectral
  kernels) are handled exactly. Leaves that are not projected go through
  ``base_optimizer`` at full size.

  ``base_optimizer`` sees core-shaped arrays and no ``params``, so it must not
  need them: ``optax.adamw`` inside would decay the core, not the weight.
  Apply weight decay after this transformation, in the full space,

  ```py
  optax.chain(tensor_galore(...), optax.add_decayed_weights(wd),
              optax.scale_by_learning_rate(lr))
  ```

  which is `tensor_galore_adamw`, with the same defaults. ``optax.chain(
  tensor_galore(...), optax.adamw(...))`` would not save memory: ``chain``'s
  ``init`` hands the full parameters to ``adamw``, which then keeps full-size
  moments.

  Complex parameters: ``jax.grad`` of a real loss returns the *conjugate* of
  the descent direction for complex parameters; conjugate complex gradients
  (``optax.tree.conj``) before ``update``, as for any optax optimizer.

  Every argument is keyword-only: ``tensor_galore(1e-3)`` is an error, not a
  rank of 0.001.

  Args:
    rank: A float in (0, 1] is the fraction of a tensor's entries that its
      core keeps, about that much of Adam's memory: the fewest modes that
      reach it are projected (one, for most weights: the input channels of an
      FNO or convolution kernel, the smaller side of a matrix; see
      `TuckerSpec`), each of the ``N`` keeping ``ceil(I_n * rank ** (1 / N))``.
      An int is the rank of the first mode it cuts, in the same order. A
      mode that a scalar rank cannot cut (a 3 x 3 kernel's) stays
      unprojected, in its own coordinates. A leaf that the rank leaves
      unprojected (``rank=1.0``), or whose modes are too short for its
      fraction, is named in a warning at ``init``. A tuple gives one entry per
      mode (an int, a float fraction of that mode, or ``None`` = not
      projected), each projected as given. Every mode, as in the paper:
      ``spec=TuckerSpec(num_projected="all")``. Integers and reals of any
      kind (NumPy's) are accepted.
    update_proj_gap: The factors are recomputed at every multiple of this
      many steps, starting at step 0, and at no other step.
    scale: Multiplies the back-projected update of projected leaves (the
      others are left as the base optimizer returns them, as in GaLore).
      ``"matched"`` (the default): per projected leaf, \(\sqrt{I / R}\), with
      \(I\) the leaf's entries and \(R\) its core's (per layer of a stacked
      leaf). Adam moves each core entry by about the learning rate, so a core
      step back-projected is about \(\sqrt{R / I}\) as long as Adam's step on
      the whole weight; ``"matched"`` gives projected weights the step length
      of full-size Adam, so that one learning rate suits projected and
      unprojected leaves alike. A positive number is GaLore's ``alpha``
      (``1.0`` is the paper's).
    base_optimizer: The transformation run on the cores; it must not need
      ``params``. Defaults to Adam, `scale_by_core_adam` (``optax.scale_by_adam``'s
      arithmetic with real second moments for complex cores).
    min_size: With the default ``spec``, leaves with at least 2 dimensions and
      at least this many entries are projected, as ``rank`` says; smaller
      leaves (biases, norm scales) go through ``base_optimizer`` at full
      size.
    spec: Which leaves, and how each is seen as a tensor: a `TuckerSpec` for
      every eligible leaf (``ndim >= 2``, ``size >= min_size``), a pytree of
      specs matching the params (``None`` = not projected; explicit specs
      apply whatever the leaf's size), or a callable of the params returning
      such a pytree. A stacked leaf's layer axis (``nnx.scan``,
      ``nnx.vmap``) is never cut by default (see `TuckerSpec`): each layer
      gets its own factors. Leaves with no entries are never projected.
    residual_scale: For projected matrices (leaves seen as two modes, per
      layer if stacked) the part of each gradient outside its subspace takes
      a step too: each entry divided by the root of a factored running mean
      square (Adafactor's estimate, one vector per mode: ``sum(shape)``
      numbers of state per leaf), the whole scaled so that its root mean
      square is ``residual_scale`` times that of the projected step (per
      entry of the weight) times the fraction of the gradient outside the
      subspace (``|G - B(C)| / |G|``), per layer of a stacked leaf. Every
      entry of every such matrix then moves at every step. ``None`` drops it,
      as GaLore and the paper do. Tensors of three or more modes
      (convolution, FNO kernels), whose gradients are sums over positions
      and stay close to their subspace, never take it.
    refresh_warmup_steps: After each refresh but step 0's, the projected step
      along each factor column ramps up linearly over this many steps, in
      proportion to how much of the column lies outside the previous
      factors' span: directions the subspace kept move at once, new ones
      (whose kept moments belong to other directions) start small. One
      number of state per factor column. Without it, a conv net at AdamW's
      learning rate lost a seed in three to a refresh (``docs/benchmarks.md``,
      the frontier). ``0`` turns it off; a value above ``update_proj_gap``
      ends at the next refresh.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``params`` is optional in
    its ``update``, and extra arguments reach ``base_optimizer``.

  Raises:
    TypeError, ValueError: at construction for an argument of the wrong form,
      at ``init`` for a leaf that cannot be planned, at ``update`` for a state
      initialised for other params; each message names the argument or leaf.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from tensor_galore_optax import tensor_galore
    >>> params = {'w': jnp.ones((16, 16, 8, 5), jnp.complex64), 'b': jnp.ones(16)}
    >>> tx = optax.chain(
    ...     tensor_galore(rank=0.25, min_size=1000),
    ...     optax.scale_by_learning_rate(1e-3))
    >>> state = tx.init(params)
    >>> [f.shape for f in state[0].factors['w']]  # a quarter of the input channels
    [(16, 4)]
    >>> updates, state = tx.update(params, state)
    >>> updates['w'].shape, updates['w'].dtype
    ((16, 16, 8, 5), dtype('complex64'))

  References:
    George et al., [Tensor-GaLore: Memory-Efficient Training via Gradient
    Tensor Decomposition](https://arxiv.org/abs/2501.02379), 2025.

    Zhao et al., [GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection](https://arxiv.org/abs/2403.03507), 2024.
  """
  rank = _tucker.canonical_rank(rank)
  update_proj_gap = _plan.check_int(update_proj_gap, "update_proj_gap", 1)
  refresh_warmup_steps = _check_refresh_warmup_steps(refresh_warmup_steps)
  min_size = _plan.check_int(min_size, "min_size", 0)
  scale = _check_scale(scale)
  residual_scale = _check_residual_scale(residual_scale)
  if base_optimizer is None:
    base_optimizer = scale_by_core_adam()
  if not isinstance(base_optimizer, optax.GradientTransformation):
    raise TypeError(
      f"base_optimizer must be an optax.GradientTransformation, got {base_optimizer!r}."
    )
  base = optax.with_extra_args_support(base_optimizer)
  plan_tree = functools.partial(_plan.plan_tree, rank=rank, spec=spec, min_size=min_size)

  def init_fn(params):
    tree, notes = plan_tree(params)
    for note in notes:
      _plan.warn_at_caller(note)
    leaves = tree.per_leaf(params, "params")
    structs = [_plan.core_struct(p, leaf) for p, leaf in zip(tree.plans, leaves)]
    cores = tree.unflatten([jnp.zeros(s.shape, s.dtype) for s in structs])
    _check_base_optimizer(base, cores)
    factors, moments, novelty = [], [], []
    for plan, leaf in zip(tree.plans, leaves):
      dtype = _plan.factor_dtype(leaf.dtype)
      shapes = () if plan is None else plan.factor_shapes
      factors.append(_refresh.initial_factors(shapes, dtype))
      moments.append(_residual.init_statistics(plan, residual_scale, dtype))
      novelty.append(_warmup.init_novelty(plan, refresh_warmup_steps, dtype))
    return TensorGaLoreState(
      count=jnp.zeros([], jnp.int32),
      factors=tree.unflatten(factors),
      base_optimizer_state=_moments.real_second_moments(base.init, base.update, cores)(cores),
      residual_moments=tree.unflatten(moments),
      novelty=tree.unflatten(novelty),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params  # The projection needs none; weight decay belongs outside.
    state = as_state(state)
    tree, _ = plan_tree(updates)  # its notes were said at init
    grads = tree.per_leaf(updates, "updates")
    held = [
      _checked(path, plan, grad, factors, moments, residual_scale)
      for path, plan, grad, factors, moments in zip(
        tree.paths,
        tree.plans,
        grads,
        tree.per_leaf(state.factors, "the state's factors"),
        tree.per_leaf(state.residual_moments, "the state's residual moments"),
      )
    ]
    cores_like = tree.unflatten([_plan.core_struct(p, g) for p, g in zip(tree.plans, grads)])
    _moments.check_shapes(state.base_optimizer_state, cores_like)
    held = [
      (
        *parts,
        _checked_vectors(
          path,
          novelty,
          _warmup.shapes(plan, refresh_warmup_steps),
          "novelty vectors",
          "refresh_warmup_steps",
        ),
      )
      for path, plan, parts, novelty in zip(
        tree.paths, tree.plans, held, tree.per_leaf(state.novelty, "the state's novelty")
      )
    ]

    projected = [
      _to_core(plan, grad, factors, novelty, state.count, update_proj_gap)
      for plan, grad, (factors, _, novelty) in zip(tree.plans, grads, held)
    ]
    steps, base_state = base.update(
      tree.unflatten([core for *_, core in projected]),
      state.base_optimizer_state,
      None,
      **extra_args,
    )
    progress = _warmup.ramp(state.count, update_proj_gap, refresh_warmup_steps)
    to_full = functools.partial(
      _to_full,
      scale=scale,
      residual_scale=residual_scale,
      count=state.count,
      progress=progress,
    )
    full = [
      to_full(plan, step, tensor, core, factors, moments, novelty, dtype=grad.dtype)
      for plan, step, grad, (tensor, factors, novelty, core), (_, moments, _) in zip(
        tree.plans, tree.per_leaf(steps, "the base optimizer's updates"), grads, projected, held
      )
    ]
    new_state = TensorGaLoreState(
      count=optax.safe_increment(state.count),
      factors=tree.unflatten([factors for _, factors, _, _ in projected]),
      base_optimizer_state=base_state,
      residual_moments=tree.unflatten([moments for _, moments in full]),
      novelty=tree.unflatten([novelty for _, _, novelty, _ in projected]),
    )
    return tree.unflatten([update for update, _ in full]), new_state

  return optax.GradientTransformationExtraArgs(init_fn, _sharding.with_auto_axes(update_fn))


def _check_base_optimizer(base, cores) -> None:
  """Fails early, and clearly, for base optimizers that cannot run on cores."""
  try:
    jax.eval_shape(lambda c: base.update(c, base.init(c), None), cores)
  except Exception as e:  # Any failure here means the base optimizer is unusable.
    raise ValueError(
      "base_optimizer failed when called on the cores without params; it must not need "
      "`params` (it sees core-shaped arrays). Use a gradient transformation such as "
      "optax.scale_by_adam(), and put weight decay after tensor_galore: "
      "optax.chain(tensor_galore(...), optax.add_decayed_weights(wd), "
      f"optax.scale_by_learning_rate(lr)). The base optimizer raised: {e}"
    ) from e


@_keyword_only
def tensor_galore_adamw(
  learning_rate: optax.ScalarOrSchedule,
  *,
  rank: Rank = _plan.RANK,
  update_proj_gap: int = _plan.UPDATE_PROJ_GAP,
  min_size: int = _plan.MIN_SIZE,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  scale: Scale = MATCHED,
  spec: SpecLike = None,
  nesterov: bool = False,
  residual_scale: float | None = _plan.RESIDUAL_SCALE,
  second_moment: SecondMoment = "full",
  multiply_by_parameter_scale: bool = False,
  refresh_warmup_steps: int = _plan.REFRESH_WARMUP_STEPS,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW whose moments live on Tucker cores of the gradients (Tensor-GaLore).

  The same as

  ```py
  optax.chain(
      tensor_galore(rank=rank, base_optimizer=scale_by_core_adam(
                    b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov,
                    second_moment=second_moment), ...),
      # only with multiply_by_parameter_scale=True:
      optax.scale_by_param_block_rms(),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  ```

  with `tensor_galore`'s defaults. Adam runs on the Tucker cores; for
  projected matrices, the part of each gradient outside the subspace is
  normalised per entry by a factored second moment (Adafactor's estimate,
  ``sum(shape)`` numbers per matrix) and added (``residual_scale``), so every
  entry of a dense layer moves at every step. Decoupled weight decay acts on
  the full weights, as in ``optax.adamw``. See `tensor_galore` for the
  projection, the ranks, the refresh and complex parameters.

  Args:
    learning_rate: A fixed learning rate or a schedule.
    rank: Projection rank (keyword-only); see `tensor_galore`.
    update_proj_gap: Steps between factor refreshes (at multiples of it).
    min_size: Smallest leaf (in entries) projected by default.
    b1: Adam's decay rate of the first moment.
    b2: Adam's decay rate of the second moment.
    eps: Added to the denominator, outside the square root.
    eps_root: Added to the denominator, inside the square root.
    mu_dtype: dtype of the first moment (``jnp.bfloat16`` or ``"bfloat16"``
      halves it; ``"int8"``, blocks of 64 int8 values with a float32 scale
      each, rounded stochastically, quarters it); ``None`` keeps the cores'
      dtype. Complex moments keep their imaginary part (see
      `scale_by_core_adam`).
    weight_decay: Strength of the decoupled weight decay.
    mask: Which leaves get weight decay, as in ``optax.adamw``.
    scale: ``"matched"`` (full-size Adam's step length, so that the learning
      rate tuned for AdamW suits every leaf) or a positive number; see
      `tensor_galore`.
    spec: Which leaves are projected and how; see `tensor_galore`.
    nesterov: Whether to use Nesterov momentum in Adam.
    residual_scale: The step of the part of each projected matrix's gradient
      outside its subspace, relative to the projected step's; ``None`` drops
      it (GaLore, the paper); see `tensor_galore`.
    second_moment: ``"full"`` (Adam's) or ``"factored"``: Adafactor's row and
      column means for every core and small leaf with two axes of at least 8
      entries (see `scale_by_core_adam`), the second moment's memory almost
      nothing. With ``mu_dtype="bfloat16"`` or ``"int8"``, the smallest state
      for the accuracy (``docs/benchmarks.md``, the frontier).
    multiply_by_parameter_scale: Multiplies each leaf's step by the leaf's root
      mean square (at least 1e-3), as ``optax.adafactor`` does by default
      (``optax.scale_by_param_block_rms``, before the decay): the learning
      rate becomes a step relative to each weight's size. Not AdamW's rate
      any more: retune it (the frontier's best were 3 to 30 times AdamW's).
      Needs ``params`` in ``update``.
    refresh_warmup_steps: Steps over which a refresh's new directions ramp up
      to full steps (``0``: at once); see `tensor_galore`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from tensor_galore_optax import tensor_galore_adamw
    >>> params = {'w': jnp.ones((64, 64, 16, 9), jnp.complex64), 'b': jnp.zeros(64)}
    >>> tx = tensor_galore_adamw(1e-3, rank=0.25)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> optax.apply_updates(params, updates)['w'].dtype
    dtype('complex64')

  References:
    George et al., [Tensor-GaLore: Memory-Efficient Training via Gradient
    Tensor Decomposition](https://arxiv.org/abs/2501.02379), 2025.

    Loshchilov & Hutter, [Decoupled Weight Decay Regularization](
    https://arxiv.org/abs/1711.05101), 2019.
  """
  if not isinstance(multiply_by_parameter_scale, bool):
    raise TypeError(
      f"multiply_by_parameter_scale must be True or False, got {multiply_by_parameter_scale!r}."
    )
  projected = tensor_galore(
    rank=rank,
    update_proj_gap=update_proj_gap,
    scale=scale,
    base_optimizer=scale_by_core_adam(
      b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, second_moment=second_moment
    ),
    min_size=min_size,
    spec=spec,
    residual_scale=residual_scale,
    refresh_warmup_steps=refresh_warmup_steps,
  )
  relative = [optax.scale_by_param_block_rms()] if multiply_by_parameter_scale else []
  return optax.chain(
    projected,
    *relative,
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
