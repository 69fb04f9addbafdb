"""Tensor-GaLore: Tucker-projected gradients as an optax transformation.

Implements "Tensor-GaLore: Memory-Efficient Training via Gradient Tensor
Decomposition" (George et al., https://arxiv.org/abs/2501.02379), which extends
GaLore (Zhao et al., https://arxiv.org/abs/2403.03507) from matrices to tensors
of any order, real or complex.

Each step, leaf by leaf: refresh the factors (every ``update_proj_gap`` steps),
project the gradient on its Tucker core, run the base optimizer on the cores,
back-project. Every per-leaf function below takes the leaf's `TuckerPlan`
(``None`` for a leaf that is not projected) and is mapped over the tree, so a
leaf's refresh and update depend on its own gradient only.
"""

import functools
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tensor_galore_optax import _moments, _refresh, _residual, _sharding, _tucker
from tensor_galore_optax._refresh import RefreshMethod
from tensor_galore_optax._state import TensorGaLoreState, as_state
from tensor_galore_optax._tucker import Rank, TuckerPlan, TuckerSpec

MomentPolicy = Literal["keep", "reset", "rotate"]
"""What the base optimizer's moments do when the factors change; see `tensor_galore`."""

MOMENT_POLICIES: tuple[str, ...] = typing.get_args(MomentPolicy)
"""The moment policies, the paper's (``"keep"``) first."""

MATCHED = "matched"
"""The ``scale`` that gives projected leaves full-size Adam's step length; see `tensor_galore`."""

# A single spec, a pytree of specs matching the params (None = not projected),
# or a callable of the params returning such a pytree.
SpecLike = TuckerSpec | optax.Params | Callable[[optax.Params], Any] | None


def _map_plans(fn: Callable, plans, tree, *rest):
  """``fn(plan, leaf, *subtrees)`` for every leaf of ``tree``.

  ``plans`` and ``rest`` hold one entry per leaf of ``tree`` (a plan or None,
  a tuple of factors, ...): ``tree`` leads, so None leaves in it stay empty.
  """
  return jax.tree.map(lambda leaf, plan, *r: fn(plan, leaf, *r), tree, plans, *rest)


def _path(path) -> str:
  return f"leaf {jax.tree_util.keystr(path)}"


def _per_leaf(treedef, tree, mismatch: str) -> list:
  """``tree``'s subtrees at the leaves of ``treedef``; ``mismatch`` leads the error."""
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{mismatch}: {e}") from e


# --- Static arguments and plans (plain Python, once per trace) -------------------------------


def _check_arguments(
  rank, update_proj_gap, min_size, refresh_method, moment_policy, factor_dtype, base_optimizer
):
  """Validates the static arguments of `tensor_galore`; returns the factor dtype."""
  _tucker.validate_rank(rank)
  if isinstance(update_proj_gap, bool) or not isinstance(update_proj_gap, int):
    raise TypeError(f"update_proj_gap must be an int, got {update_proj_gap!r}.")
  if update_proj_gap < 1:
    raise ValueError(f"update_proj_gap must be at least 1, got {update_proj_gap}.")
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"min_size must be a non-negative int, got {min_size!r}.")
  if refresh_method not in _refresh.REFRESH_METHODS:
    raise ValueError(
      f"refresh_method must be one of {_refresh.REFRESH_METHODS}, got {refresh_method!r}."
    )
  if moment_policy not in MOMENT_POLICIES:
    raise ValueError(f"moment_policy must be one of {MOMENT_POLICIES}, got {moment_policy!r}.")
  if not isinstance(base_optimizer, optax.GradientTransformation):
    raise TypeError(
      f"base_optimizer must be an optax.GradientTransformation, got {base_optimizer!r}."
    )
  if factor_dtype is None:
    return None
  try:
    dtype = jnp.dtype(factor_dtype)
  except TypeError as e:
    raise TypeError(f"factor_dtype must be a real floating dtype, got {factor_dtype!r}.") from e
  if dtype not in (jnp.float32, jnp.float64):
    raise ValueError(f"factor_dtype must be float32 or float64, got {factor_dtype!r}.")
  if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
    raise ValueError(
      "factor_dtype=float64 needs 64-bit JAX (jax.config.update('jax_enable_x64', True)); "
      "without it every float64 array is float32."
    )
  return dtype


def _default_spec(leaf, rank: Rank) -> TuckerSpec:
  """`TuckerSpec()` (see `resolve_ranks`), but one side of a matrix whatever the rank.

  A float rank already projects one side of a matrix, the smaller (GaLore's
  reference code's); an int rank would cut both. Projecting both sides makes
  the core at a refresh diagonal up to round-off, and Adam's first step would
  turn that round-off into full-size steps along every off-diagonal
  direction. A per-mode rank tuple says itself which modes are projected.
  """
  one_sided = leaf.ndim == 2 and isinstance(rank, (int, float))
  return TuckerSpec(num_projected=1) if one_sided else TuckerSpec()


def _plans(tree: optax.Params, spec: SpecLike, rank: Rank, min_size: int):
  """One `TuckerPlan` per leaf of ``tree`` (``None`` = not projected); shapes only."""
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in paths_and_leaves:
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      raise TypeError(
        f"{_path(path)} is a {type(leaf).__name__}, not an array; tensor_galore needs array leaves."
      )
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(
        f"{_path(path)} has shape {tuple(leaf.shape)} and dtype {leaf.dtype}; tensor_galore "
        "trains floating and complex parameters only. Keep integer and boolean arrays out of the "
        "optimized tree (e.g. nnx.split(model, nnx.Param, ...)) or wrap with optax.masked."
      )
  leaves = [leaf for _, leaf in paths_and_leaves]
  if spec is None or isinstance(spec, TuckerSpec):
    eligible = lambda leaf: leaf.ndim >= 2 and leaf.size >= min_size
    specs = [(spec or _default_spec(leaf, rank)) if eligible(leaf) else None for leaf in leaves]
  else:
    spec_tree = spec(tree) if callable(spec) else spec
    specs = _per_leaf(
      treedef, spec_tree, "spec does not match the params tree (a TuckerSpec or None per leaf)"
    )
    for (path, _), s in zip(paths_and_leaves, specs):
      if not (s is None or isinstance(s, TuckerSpec)):
        raise TypeError(f"spec for {_path(path)} is {s!r}; expected a TuckerSpec or None.")

  def plan(path, leaf, s):
    if s is None or leaf.size == 0:  # nothing to project in an empty leaf
      return None
    where = f"{_path(path)} with shape {tuple(leaf.shape)}"
    resolved = _tucker.make_plan(leaf.shape, s, rank, where)
    return resolved if resolved.projected_modes else None

  return treedef.unflatten(plan(p, leaf, s) for (p, leaf), s in zip(paths_and_leaves, specs))


def _factor_dtype(leaf_dtype, factor_dtype):
  """Decomposition dtype: at least float32, complex for complex leaves."""
  real = factor_dtype or jnp.promote_types(jnp.finfo(leaf_dtype).dtype, jnp.float32)
  if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
    return jnp.result_type(real, jnp.complex64)
  return jnp.dtype(real)


# --- The per-leaf steps ------------------------------------------------------------------------


def _init_factors(plan: TuckerPlan | None, param, factor_dtype):
  if plan is None:
    return ()
  return _refresh.initial_factors(plan.factor_shapes, _factor_dtype(param.dtype, factor_dtype))


def _core_struct(plan: TuckerPlan | None, leaf) -> jax.ShapeDtypeStruct:
  """The shape and dtype of what the base optimizer sees for ``leaf``."""
  return jax.ShapeDtypeStruct(leaf.shape if plan is None else plan.core_shape, leaf.dtype)


def _zeros(structs):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), structs)


def _as_tuple(held) -> tuple | None:
  """A per-leaf tuple of the state as a tuple, ``None`` if it is not one.

  Containers other than tuples are accepted (Flax NNX stores a tuple as a
  mapping from its positions).
  """
  try:
    return tuple(held[k] for k in range(len(held)))
  except (TypeError, KeyError):
    return None


def _shapes(arrays: tuple | None) -> tuple | None:
  return None if arrays is None else tuple(tuple(getattr(u, "shape", ())) for u in arrays)


def _held_factors(path, plan: TuckerPlan | None, grad, held) -> tuple:
  """The state's factors of one leaf as a tuple, checked against its gradient."""
  wanted = () if plan is None else plan.factor_shapes
  factors = _as_tuple(held)
  shapes = _shapes(factors)
  if shapes != tuple(wanted):
    raise ValueError(
      f"{_path(path)}: its gradient of shape {tuple(grad.shape)} needs factors {tuple(wanted)} "
      f"but the state holds {shapes if shapes is not None else held!r}; was the state "
      "initialised for other params?"
    )
  if factors and jnp.iscomplexobj(grad) and not jnp.iscomplexobj(factors[0]):
    raise TypeError(
      f"{_path(path)}: the gradient is complex ({grad.dtype}) but the state was initialised "
      f"for real params ({factors[0].dtype} factors); its imaginary part would be dropped. "
      "Initialise the optimizer with the complex params."
    )
  return factors


def _refresh_leaf(plan: TuckerPlan | None, grad, factors, *, method, now):
  """New factors at a refresh step, the held ones otherwise (one `lax.cond` per leaf)."""
  if plan is None:
    return factors
  refresh = lambda t, fs: _refresh.refresh_factors(t, fs, plan.projected_modes, method)
  # Stacked layers refresh one after the other: a decomposition's work arrays
  # are as large as the tensor, and this way exist for one layer at a time.
  refresh = _tucker.batched(refresh, len(plan.batch_shape), sequential=True)
  return jax.lax.cond(now, lambda: refresh(plan.to_tensor(grad), factors), lambda: factors)


def _project_leaf(plan: TuckerPlan | None, grad, factors):
  """The Tucker core of a gradient (the gradient itself if not projected)."""
  if plan is None:
    return grad
  tensor = plan.to_tensor(grad)
  work = jnp.result_type(tensor, *factors)
  return plan.project(tensor.astype(work), factors).astype(grad.dtype)


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


def _back_project_leaf(plan: TuckerPlan | None, update, factors, grad, *, scale):
  """The full-size update of a core update, times ``scale``, in the gradient's dtype.

  Leaves that are not projected pass through.
  """
  if plan is None:
    return update
  if isinstance(scale, str):
    scale = _matched_scale(plan)
  work = jnp.result_type(update, *factors)
  full = plan.back_project(update.astype(work), factors)
  return (scale * plan.from_tensor(full)).astype(grad.dtype)


def _has_residual(plan: TuckerPlan | None, residual_scale) -> bool:
  """Whether a leaf's residual trains: projected matrices (two modes), with a ``residual_scale``.

  A dense layer's gradient has at most the batch size for rank at each step,
  mostly outside any fixed subspace; the gradient of a convolution or FNO
  kernel, summed over every position, stays close to its factors' subspace,
  where the residual step measured no better and, on a conv net, less stable.
  """
  if plan is None or residual_scale is None or len(plan.mode_sizes) != 2:
    return False
  # Factors that span their whole mode hold every gradient exactly: the residual
  # would be round-off, whose normalised step depends on the CPU's kernels.
  return any(r < i for r, i in zip(plan.ranks, plan.mode_sizes) if r is not None)


def _init_residual_moments(plan: TuckerPlan | None, param, *, residual_scale, factor_dtype):
  if not _has_residual(plan, residual_scale):
    return ()
  # Real, in the factors' precision: the mean squares of complex entries are real.
  dtype = jnp.finfo(_factor_dtype(param.dtype, factor_dtype)).dtype
  return _residual.init_statistics(plan, dtype)


def _add_residual_leaf(
  plan: TuckerPlan | None, step, grad, core, factors, moments, *, count, residual_scale
):
  """``step`` plus the residual's step (see `_residual`), and the residual's new moments.

  Leaves without a residual (`_has_residual`) pass through.
  """
  if not _has_residual(plan, residual_scale):
    return step, moments
  work = jnp.result_type(step, *factors)
  term, moments = _residual.residual_step(
    plan,
    plan.to_tensor(grad).astype(work),
    core.astype(work),
    plan.to_tensor(step).astype(work),
    factors,
    moments,
    count,
    residual_scale,
  )
  return (step + plan.from_tensor(term)).astype(step.dtype), moments


def _held_residual_moments(path, plan: TuckerPlan | None, grad, moments, *, residual_scale):
  """The state's residual moments of one leaf, checked against the plan."""
  wanted = _residual.shapes(plan) if _has_residual(plan, residual_scale) else ()
  moments = _as_tuple(moments)
  held = None if moments is None else tuple(m.shape for m in moments)
  if held != wanted:
    raise ValueError(
      f"{_path(path)}: the state's residual moments have shapes {held}, this "
      f"transformation's have {wanted}: was the state initialised with another "
      "residual_scale, or by tensor_galore_optax 0.3 (which had none)? Initialise a new "
      "state with `init`."
    )
  return moments


def _transport_leaf(plan: TuckerPlan | None, moment, old, new, *, second_order):
  """A core moment expressed in the new factors' basis (``U_new^H U_old`` per mode).

  A second moment moves by the entrywise squared magnitude of that matrix,
  exact when the core's entries are uncorrelated; it stays non-negative.
  """
  if plan is None or isinstance(moment, optax.MaskedNode):
    return moment

  def transport(x, old, new):
    for n, u_old, u_new in zip(plan.projected_modes, old, new):
      change = u_new.conj().T @ u_old
      if second_order:  # real, like the moment
        change = jnp.abs(change) ** 2
      work = jnp.result_type(x, change)
      x = _tucker.mode_dot(x.astype(work), change.T.astype(work), n)
    return x

  return _tucker.batched(transport, len(plan.batch_shape))(moment, old, new).astype(moment.dtype)


# --- The transformation ------------------------------------------------------------------------


def tensor_galore(
  rank: Rank = 0.25,
  *,
  update_proj_gap: int = 200,
  scale: jax.typing.ArrayLike | Literal["matched"] = 1.0,
  base_optimizer: optax.GradientTransformation | None = None,
  min_size: int = 16_384,
  spec: SpecLike = None,
  refresh_method: RefreshMethod = "sthosvd",
  moment_policy: MomentPolicy = "keep",
  factor_dtype: jax.typing.DTypeLike | None = None,
  residual_scale: float | None = None,
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
  the size of the core \(C\), not of \(G\). With
  ``residual_scale``, the part of the gradient outside the subspace,
  \(G - C \times_1 U_1 \cdots \times_N U_N\), trains too (see below).
  Every ``update_proj_gap``
  steps, counting from step 0, the factors are recomputed from the current
  gradient (HOSVD: the leading left singular vectors of each mode-``n``
  unfolding) inside the jitted update, with one `jax.lax.cond` per leaf, so a
  leaf's refresh and update depend on its own gradient only. Projections use
  conjugate transposes, so complex weights (FNO spectral kernels) are handled
  exactly. Leaves that are not projected go through ``base_optimizer`` at
  full size.

  ``base_optimizer`` sees core-shaped arrays and no ``params``, so it must not
  need them: ``optax.adamw`` inside would decay the core, not the weight.
  Apply weight decay after this transformation, in the full space,

  ```py
  optax.chain(tensor_galore(...), optax.add_decayed_weights(wd),
              optax.scale_by_learning_rate(lr))
  ```

  which is `tensor_galore_adamw`. ``optax.chain(tensor_galore(...),
  optax.adamw(...))`` would not save memory: ``chain``'s ``init`` hands the
  full parameters to ``adamw``, which then keeps full-size moments.

  Complex parameters: ``jax.grad`` of a real loss returns the *conjugate* of
  the descent direction for complex parameters; conjugate complex gradients
  (``optax.tree.conj``) before ``update``, as for any optax optimizer.

  Args:
    rank: A float in (0, 1] is the fraction of a tensor's entries that its
      core keeps, about that much of Adam's memory: by default the fewest
      modes that reach it are projected (one, for most weights: the input
      channels of an FNO or convolution kernel, the smaller side of a
      matrix; see `TuckerSpec`), each of the ``N`` keeping
      ``ceil(I_n * rank ** (1 / N))``; a warning names a leaf whose modes
      are too short for it. An int is the rank of every projected mode. A
      mode that a scalar rank cannot cut (a 3 x 3 kernel's) stays
      unprojected, in its own coordinates; ``rank=1.0`` projects nothing. A
      tuple gives one entry per mode (an int, a float fraction of that mode,
      or ``None`` = not projected), each projected as given. Every mode, as
      in the paper: ``spec=TuckerSpec(num_projected="all")``.
    update_proj_gap: The factors are recomputed at every multiple of this
      many steps, starting at step 0, and at no other step.
    scale: Multiplies the back-projected update of projected leaves (the
      others are left as the base optimizer returns them, as in GaLore).
      ``"matched"``: per projected leaf, \(\sqrt{I / R}\), with \(I\) the
      leaf's entries and \(R\) its core's (per layer of a stacked leaf).
      Adam moves each core entry by about the learning rate, so a core step
      back-projected is about \(\sqrt{R / I}\) as long as Adam's step on
      the whole weight; ``"matched"`` gives projected weights the step
      length of full-size Adam, so that one learning rate suits projected
      and unprojected leaves alike (the default of `tensor_galore_adamw`;
      here 1.0, as the base optimizer may be any).
    base_optimizer: The transformation run on the cores; it must not need
      ``params``. Defaults to ``optax.scale_by_adam()``.
    min_size: With the default ``spec``, leaves with at least 2 dimensions and
      at least this many entries are projected, as ``rank`` says; smaller
      leaves (biases, norm scales) go through ``base_optimizer`` at full
      size.
    spec: Which leaves, and how each is seen as a tensor: a `TuckerSpec` for
      every eligible leaf (``ndim >= 2``, ``size >= min_size``), a pytree of
      specs matching the params (``None`` = not projected; explicit specs
      apply whatever the leaf's size), or a callable of the params returning
      such a pytree. Stacked layers name their layer axis with
      ``TuckerSpec(batch_axes=...)``. Leaves with no entries are never
      projected.
    refresh_method: How factors are recomputed: ``"svd"`` (exact HOSVD, the
      reference), ``"eigh"`` (Gram-matrix eigendecomposition: the fastest,
      but blind to directions below about 3e-4 of the leading one),
      ``"sthosvd"`` (sequentially truncated HOSVD through QR, as accurate as
      ``"svd"``; the default) or ``"subspace"`` (one warm-started subspace
      iteration from the previous factors), all from the current gradient.
    moment_policy: What happens to the base optimizer's per-leaf moments
      (every core-shaped tree in its state: ``mu``, ``nu``, ``nu_max``,
      ``trace``, ...) when the factors change: ``"keep"`` them as they are
      (GaLore), ``"reset"`` the base optimizer's whole state, or ``"rotate"``
      them into the new basis (first moments by ``U_new^H U_old`` per mode,
      fields named ``nu*`` by its entrywise squared magnitude).
    factor_dtype: Real precision of the factors and decompositions, a dtype
      or its name: float32 or float64 (which needs ``jax_enable_x64``).
      ``None`` uses float32, or float64 for float64 leaves. Complex leaves get
      complex factors of that precision.
    residual_scale: For projected matrices (leaves seen as two modes, per
      layer if stacked): ``None`` (GaLore's, the paper's) drops the part of
      each gradient outside its subspace: between refreshes only the
      factors' directions train. A number adds a step along it: each entry
      divided by the root of a factored running mean square (Adafactor's
      estimate, one vector per mode: ``sum(shape)`` numbers of state per
      leaf, no moment of the leaf's size), the whole scaled so that its root
      mean square is ``residual_scale`` times that of the projected step
      (per entry of the weight) times the fraction of the gradient outside
      the subspace (``|G - B(C)| / |G|``, so a gradient the factors hold
      whole adds nothing), per layer of a stacked leaf. Every entry of every
      such matrix then moves at every step. Tensors of three or more modes
      (convolution, FNO kernels), whose gradients are sums over positions and
      stay close to their subspace, never take it. `tensor_galore_adamw`
      uses 4.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``params`` is optional in
    its ``update``.

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
  if base_optimizer is None:
    base_optimizer = optax.scale_by_adam()
  factor_dtype = _check_arguments(
    rank, update_proj_gap, min_size, refresh_method, moment_policy, factor_dtype, base_optimizer
  )
  if isinstance(scale, str) and scale != MATCHED:
    raise ValueError(f"scale must be a number or {MATCHED!r}, got {scale!r}.")
  # `optax.inject_hyperparams` hands it over as an array: checked only as a Python number.
  if (
    residual_scale is not None
    and not isinstance(residual_scale, jax.Array)
    and not (
      isinstance(residual_scale, (int, float))
      and not isinstance(residual_scale, bool)
      and 0 < residual_scale < math.inf
    )
  ):
    raise ValueError(f"residual_scale must be None or a positive number, got {residual_scale!r}.")
  base = optax.with_extra_args_support(base_optimizer)
  plans_of = functools.partial(_plans, spec=spec, rank=rank, min_size=min_size)

  def init_fn(params):
    plans = plans_of(params)
    init_factors = functools.partial(_init_factors, factor_dtype=factor_dtype)
    cores = _zeros(_map_plans(_core_struct, plans, params))
    _check_base_optimizer(base, cores, jax.eval_shape(base.init, cores), moment_policy)
    base_state = _moments.real_second_moments(base.init, base.update, cores)(cores)
    init_residual = functools.partial(
      _init_residual_moments, residual_scale=residual_scale, factor_dtype=factor_dtype
    )
    return TensorGaLoreState(
      jnp.zeros([], jnp.int32),
      _map_plans(init_factors, plans, params),
      base_state,
      _map_plans(init_residual, plans, params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params  # The projection needs none; weight decay belongs outside.
    state = as_state(state)
    plans = plans_of(updates)
    held = _held_per_leaf(
      _held_factors,
      plans,
      updates,
      state.factors,
      "updates do not match the tree tensor_galore was initialised with",
    )
    cores_like = _map_plans(_core_struct, plans, updates)
    _moments.check_shapes(state.base_optimizer_state, cores_like)
    now = state.count % update_proj_gap == 0
    refresh = functools.partial(_refresh_leaf, method=refresh_method, now=now)
    factors = _map_plans(refresh, plans, updates, held)
    base_state = _carry_moments(
      moment_policy, state.base_optimizer_state, plans, held, factors, now, base, cores_like
    )
    cores = _map_plans(_project_leaf, plans, updates, factors)
    core_updates, base_state = base.update(cores, base_state, None, **extra_args)
    back_project = functools.partial(_back_project_leaf, scale=scale)
    new_updates = _map_plans(back_project, plans, core_updates, factors, updates)
    held_moments = state.residual_moments
    if held_moments is None:  # a state of 0.3, which had no residual
      held_moments = jax.tree.map(lambda _: (), updates)
    moments = _held_per_leaf(
      functools.partial(_held_residual_moments, residual_scale=residual_scale),
      plans,
      updates,
      held_moments,
      "updates do not match the state's residual moments",
    )
    add_residual = functools.partial(
      _add_residual_leaf, count=state.count, residual_scale=residual_scale
    )
    pairs = _map_plans(add_residual, plans, new_updates, updates, cores, factors, moments)
    new_updates = jax.tree.map(lambda _, pair: pair[0], updates, pairs)
    moments = jax.tree.map(lambda _, pair: pair[1], updates, pairs)
    count = optax.safe_increment(state.count)
    return new_updates, TensorGaLoreState(count, factors, base_state, moments)

  return optax.GradientTransformationExtraArgs(init_fn, _sharding.with_auto_axes(update_fn))


def _held_per_leaf(check: Callable, plans, updates, held, mismatch: str):
  """``check(path, plan, grad, held_leaf)`` for every leaf: the state's per-leaf entries, checked.

  ``mismatch`` leads the error when ``held`` does not have a subtree per leaf.
  """
  paths_and_grads, treedef = jax.tree_util.tree_flatten_with_path(updates)
  per_leaf = _per_leaf(treedef, held, mismatch)
  return treedef.unflatten(
    check(path, plan, grad, h)
    for (path, grad), plan, h in zip(paths_and_grads, treedef.flatten_up_to(plans), per_leaf)
  )


def _carry_moments(policy, base_state, plans, old, new, now, base, cores_like):
  """The base optimizer's state after the factors went from ``old`` to ``new``."""
  if policy == "reset":
    init = _moments.real_second_moments(base.init, base.update, cores_like)
    return jax.lax.cond(now, lambda: init(_zeros(cores_like)), lambda: base_state)
  if policy == "rotate":

    def rotate(name, moments):
      second_order = _moments.is_second_order(name)
      transport = functools.partial(_transport_leaf, second_order=second_order)
      return jax.lax.cond(
        now, lambda: _map_plans(transport, plans, moments, old, new), lambda: moments
      )

    return _moments.map_moments(rotate, base_state, cores_like)
  return base_state


def _check_base_optimizer(base, cores, base_state, moment_policy: str) -> None:
  """Fails early, and clearly, for base optimizers that cannot run on cores."""
  try:
    jax.eval_shape(lambda c, s: base.update(c, s, None), cores, base_state)
  except Exception as e:  # Any failure here means the base optimizer is unusable.
    raise ValueError(
      "base_optimizer failed when called on the cores without params; it must not need "
      "`params` (it sees core-shaped arrays). Use a gradient transformation such as "
      "optax.scale_by_adam(), and put weight decay after tensor_galore: "
      "optax.chain(tensor_galore(...), optax.add_decayed_weights(wd), "
      f"optax.scale_by_learning_rate(lr)). The base optimizer raised: {e}"
    ) from e
  if moment_policy == "rotate" and not _moments.find_moments(base_state, cores):
    raise ValueError(
      "moment_policy='rotate' transports the base optimizer's per-leaf moments, but its "
      "state has none; use moment_policy='keep' or 'reset'."
    )


def tensor_galore_adamw(
  learning_rate: optax.ScalarOrSchedule,
  rank: Rank = 0.25,
  *,
  update_proj_gap: int = 200,
  min_size: int = 16_384,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  scale: jax.typing.ArrayLike | Literal["matched"] = MATCHED,
  spec: SpecLike = None,
  refresh_method: RefreshMethod = "sthosvd",
  moment_policy: MomentPolicy = "keep",
  factor_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  residual_scale: float | None = 4.0,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW whose moments live on Tucker cores of the gradients (Tensor-GaLore).

  Equivalent to

  ```py
  optax.chain(
      tensor_galore(rank, base_optimizer=optax.scale_by_adam(b1, b2, eps,
                    eps_root, mu_dtype, nesterov=nesterov),
                    residual_scale=4.0, ...),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  ```

  Adam runs on the Tucker cores; for projected matrices, the part of each
  gradient outside the subspace is normalised per entry by a factored second
  moment (Adafactor's estimate, ``sum(shape)`` numbers per matrix) and added
  (``residual_scale``), so every entry of a dense layer moves at every step. Decoupled weight decay
  acts on the full weights, as in ``optax.adamw``. See `tensor_galore` for the
  projection, the ranks, the refresh and complex parameters.

  Args:
    learning_rate: A fixed learning rate or a schedule.
    rank: Projection rank; see `tensor_galore`.
    update_proj_gap: Steps between factor refreshes (at multiples of it).
    min_size: Smallest leaf (in entries) projected by default.
    b1: Adam's decay rate of the first moment.
    b2: Adam's decay rate of the second moment.
    eps: Added to the denominator, outside the square root.
    eps_root: Added to the denominator, inside the square root.
    mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16``); ``None``
      keeps the cores' dtype.
    weight_decay: Strength of the decoupled weight decay.
    mask: Which leaves get weight decay, as in ``optax.adamw``.
    scale: Multiplies the back-projected update of projected leaves:
      ``"matched"`` (the default here) gives them full-size Adam's step
      length, so that the learning rate tuned for AdamW suits them; ``1.0``
      is the paper's; see `tensor_galore`.
    spec: Which leaves are projected and how; see `tensor_galore`.
    refresh_method: How factors are recomputed; see `tensor_galore`.
    moment_policy: ``"keep"``, ``"reset"`` or ``"rotate"``; see `tensor_galore`.
    factor_dtype: ``None``, float32 or float64; see `tensor_galore`.
    nesterov: Whether to use Nesterov momentum in Adam.
    residual_scale: The step of the part of each projected gradient outside
      its subspace, relative to the projected step's; ``None`` drops it
      (GaLore, the paper); see `tensor_galore`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from tensor_galore_optax import tensor_galore_adamw
    >>> params = {'w': jnp.ones((64, 64, 16, 9), jnp.complex64), 'b': jnp.zeros(64)}
    >>> tx = tensor_galore_adamw(learning_rate=1e-3, rank=0.25)
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
  # As arrays, the decay rates take the same arithmetic whether they are
  # constants or injected (`optax.inject_hyperparams` traces them): from Python
  # floats, `1 - b2` would be rounded from double precision instead, which
  # moves Adam's step by about 1e-5 relative.
  # NumPy, not JAX, arrays: building the optimizer must not start the XLA
  # backend (`jax.distributed.initialize` may still have to run).
  # In JAX's default float dtype, so that `1 - b2` rounds as it does on a JAX array.
  dtype = jax.dtypes.canonicalize_dtype(np.float64)
  b1, b2 = np.asarray(b1, dtype), np.asarray(b2, dtype)
  return optax.chain(
    tensor_galore(
      rank,
      update_proj_gap=update_proj_gap,
      scale=scale,
      base_optimizer=optax.scale_by_adam(
        b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
      ),
      min_size=min_size,
      spec=spec,
      refresh_method=refresh_method,
      moment_policy=moment_policy,
      factor_dtype=factor_dtype,
      residual_scale=residual_scale,
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
