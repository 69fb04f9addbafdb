"""Tensor-GaLore: Tucker-projected gradients as an optax transformation.

Implements "Tensor-GaLore: Memory-Efficient Training via Gradient Tensor
Decomposition" (George et al., https://arxiv.org/abs/2501.02379), which extends
GaLore (Zhao et al., https://arxiv.org/abs/2403.03507) from matrices to tensors
of any order, real or complex.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import _refresh, _tucker
from tensor_galore_optax._tucker import Rank, TuckerPlan, TuckerSpec

MOMENT_POLICIES: tuple[str, ...] = ("keep", "reset", "rotate")
"""What the base optimizer's moments do when the factors change; see `tensor_galore`."""

# A single spec, a pytree of specs matching the params (None = not projected),
# or a callable of the params returning such a pytree.
SpecLike = TuckerSpec | optax.Params | Callable[[optax.Params], Any] | None

_FACTOR_DTYPES = {None: None, "float32": jnp.float32, "float64": jnp.float64}


class TensorGaLoreState(NamedTuple):
  """State of `tensor_galore`.

  Attributes:
    count: Number of updates taken so far (int32 scalar).
    factors: One entry per parameter leaf: a tuple holding the ``(I_n, R_n)``
      factor of each projected mode, ``()`` for leaves that are not projected.
    base_optimizer_state: The base optimizer's state on the tree of cores
      (projected leaves) and full gradients (the other leaves).
  """

  count: jax.Array
  factors: Any
  base_optimizer_state: optax.OptState


def _is_spec_leaf(x) -> bool:
  return x is None or isinstance(x, TuckerSpec)


def _factor_dtype(leaf_dtype, factor_dtype: str | None):
  """Decomposition dtype: at least float32, complex for complex leaves."""
  real = jnp.promote_types(jnp.finfo(leaf_dtype).dtype, jnp.float32)
  if factor_dtype is not None:
    real = _FACTOR_DTYPES[factor_dtype]
  real = jax.dtypes.canonicalize_dtype(real)
  if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
    return jnp.result_type(real, jnp.complex64)
  return real


def _plans(
  tree: optax.Params, spec: SpecLike, rank: Rank, min_size: int
) -> tuple[list[TuckerPlan | None], Any]:
  """Resolves one `TuckerPlan` (or None) per leaf of ``tree``; shapes only."""
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in paths_and_leaves:
    where = f"leaf {jax.tree_util.keystr(path)}"
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      raise TypeError(
        f"{where} is a {type(leaf).__name__}, not an array; tensor_galore needs array leaves."
      )
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(
        f"{where} has shape {tuple(leaf.shape)} and dtype {leaf.dtype}; tensor_galore trains "
        "floating and complex parameters only. Keep integer and boolean arrays out of the "
        "optimized tree (e.g. nnx.split(model, nnx.Param, ...)) or wrap with optax.masked."
      )

  def eligible(leaf) -> bool:
    return leaf.ndim >= 2 and leaf.size >= min_size

  if spec is None:
    specs = [_default_spec(leaf, rank) if eligible(leaf) else None for _, leaf in paths_and_leaves]
  elif isinstance(spec, TuckerSpec):
    specs = [spec if eligible(leaf) else None for _, leaf in paths_and_leaves]
  else:
    spec_tree = spec(tree) if callable(spec) else spec
    try:
      specs = treedef.flatten_up_to(spec_tree)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"spec does not match the params tree (a TuckerSpec or None per leaf): {e}"
      ) from e
    for (path, _), s in zip(paths_and_leaves, specs):
      if not _is_spec_leaf(s):
        raise TypeError(
          f"spec for leaf {jax.tree_util.keystr(path)} is {s!r}; expected a TuckerSpec or None."
        )

  plans = []
  for (path, leaf), s in zip(paths_and_leaves, specs):
    if s is None:
      plans.append(None)
      continue
    where = f"leaf {jax.tree_util.keystr(path)} with shape {tuple(leaf.shape)}"
    plans.append(_tucker.make_plan(leaf.shape, s, rank, where))
  return plans, treedef


def _default_spec(leaf, rank: Rank) -> TuckerSpec:
  """Every axis of a tensor; one side of a matrix (the larger one), as GaLore.

  Projecting both sides of a matrix makes the core at a refresh diagonal up to
  round-off, and Adam's first step would turn that round-off into full-size
  steps along every off-diagonal direction. A per-mode rank tuple says itself
  which modes are projected.
  """
  one_sided = leaf.ndim == 2 and isinstance(rank, (int, float))
  return TuckerSpec(num_projected=1) if one_sided else TuckerSpec()


def _map_moments(state, fn: Callable[[str, Any], Any]):
  """Applies ``fn(name, tree)`` to every ``mu``/``nu`` field found in ``state``."""
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    values = {
      f: fn(f, v) if f in ("mu", "nu") else _map_moments(v, fn)
      for f, v in zip(state._fields, state)
    }
    return type(state)(**values)
  if isinstance(state, (tuple, list)):
    return type(state)(_map_moments(s, fn) for s in state)
  return state


def _has_moments(state) -> bool:
  found = []
  _map_moments(state, lambda name, tree: found.append(name) or tree)
  return bool(found)


def tensor_galore(
  rank: Rank = 0.25,
  *,
  update_proj_gap: int = 200,
  scale: jax.typing.ArrayLike = 1.0,
  base_optimizer: optax.GradientTransformation | None = None,
  min_size: int = 16_384,
  spec: SpecLike = None,
  refresh_method: str = "sthosvd",
  moment_policy: str = "keep",
  factor_dtype: str | None = None,
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
  the size of the core \(C\), not of \(G\). Every ``update_proj_gap``
  steps, counting from step 0, the factors are recomputed from the current
  gradient (HOSVD: the leading left singular vectors of each mode-``n``
  unfolding) inside the jitted update with `jax.lax.cond`. Projections use
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
    rank: An int is the rank of every projected mode (clipped to the mode's
      size). A float in (0, 1] is the fraction of a tensor's entries that its
      core keeps at least: each of the ``N`` projected modes keeps
      ``ceil(I_n * rank ** (1 / N))``. A tuple gives one entry per mode (an
      int, a float fraction of that mode, or ``None`` = not projected).
    update_proj_gap: The factors are recomputed at every multiple of this
      many steps, starting at step 0, and at no other step.
    scale: Multiplies the back-projected update.
    base_optimizer: The transformation run on the cores; it must not need
      ``params``. Defaults to ``optax.scale_by_adam()``.
    min_size: With the default ``spec``, leaves with at least 2 dimensions and
      at least this many entries are projected: tensors on every axis,
      matrices on their larger side (as GaLore); smaller leaves (biases, norm
      scales) go through ``base_optimizer`` at full size.
    spec: Which leaves, and how each is seen as a tensor: a `TuckerSpec` for
      every eligible leaf (``ndim >= 2``, ``size >= min_size``), a pytree of
      specs matching the params (``None`` = not projected; explicit specs
      apply whatever the leaf's size), or a callable of the params returning
      such a pytree.
    refresh_method: How factors are recomputed: ``"svd"`` (exact HOSVD, the
      reference), ``"eigh"`` (Gram-matrix eigendecomposition), ``"sthosvd"``
      (sequentially truncated HOSVD, the default) or ``"subspace"`` (one
      warm-started subspace iteration from the previous factors).
    moment_policy: What happens to the base optimizer's moments (its ``mu``
      and ``nu`` fields) when the factors change: ``"keep"`` them as they are
      (GaLore), ``"reset"`` the base optimizer's whole state, or ``"rotate"``
      them into the new basis (``mu`` by ``U_new^H U_old`` per mode, ``nu`` by
      its entrywise squared magnitude).
    factor_dtype: Real precision of the factors and decompositions:
      ``"float32"`` or ``"float64"``. ``None`` uses float32, or float64 for
      float64 leaves. Complex leaves get complex factors of that precision.

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
    >>> [f.shape for f in state[0].factors['w']]
    [(16, 12), (16, 12), (8, 6), (5, 4)]
    >>> updates, state = tx.update(params, state)
    >>> updates['w'].shape, updates['w'].dtype
    ((16, 16, 8, 5), dtype('complex64'))

  References:
    George et al., [Tensor-GaLore: Memory-Efficient Training via Gradient
    Tensor Decomposition](https://arxiv.org/abs/2501.02379), 2025.

    Zhao et al., [GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection](https://arxiv.org/abs/2403.03507), 2024.
  """
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
  if factor_dtype not in _FACTOR_DTYPES:
    raise ValueError(f"factor_dtype must be None, 'float32' or 'float64', got {factor_dtype!r}.")
  if base_optimizer is None:
    base_optimizer = optax.scale_by_adam()
  if not isinstance(base_optimizer, optax.GradientTransformation):
    raise TypeError(
      f"base_optimizer must be an optax.GradientTransformation, got {base_optimizer!r}."
    )
  base = optax.with_extra_args_support(base_optimizer)

  def cores_like(plans, leaves):
    """Zeros shaped like the tree the base optimizer sees, one per leaf."""
    return [
      jnp.zeros(leaf.shape if p is None else p.core_shape, leaf.dtype)
      for p, leaf in zip(plans, leaves)
    ]

  def init_fn(params: optax.Params) -> TensorGaLoreState:
    count = jnp.zeros([], jnp.int32)
    if not jax.tree.leaves(params):
      # Empty trees, and optax.tree.map_params's placeholder.
      return TensorGaLoreState(count, params, base.init(params))
    plans, treedef = _plans(params, spec, rank, min_size)
    leaves = treedef.flatten_up_to(params)
    factors = [
      ()
      if p is None
      else tuple(
        jnp.eye(i, r, dtype=_factor_dtype(leaf.dtype, factor_dtype)) for i, r in p.factor_shapes
      )
      for p, leaf in zip(plans, leaves)
    ]
    cores = treedef.unflatten(cores_like(plans, leaves))
    base_state = base.init(cores)
    _check_base_optimizer(base, cores, base_state, moment_policy)
    return TensorGaLoreState(count, treedef.unflatten(factors), base_state)

  def update_fn(updates, state, params=None, **extra_args):
    del params  # The projection needs none; weight decay belongs outside.
    if _uses_explicit_axes((updates, state)):
      # Under explicit mesh axes, JAX asks every contraction of a sharded axis
      # (the refresh's Gram matrices, the projections) for an output sharding.
      # XLA's automatic propagation decides them instead; the results keep the
      # shardings of the inputs.
      out_shardings = jax.tree.map(lambda x: jax.typeof(x).sharding, (updates, state))
      return jax.sharding.auto_axes(
        lambda u, s: _update(u, s, **extra_args), out_sharding=out_shardings
      )(updates, state)
    return _update(updates, state, **extra_args)

  def _update(updates, state, **extra_args):
    if not jax.tree.leaves(updates):
      new_updates, base_state = base.update(updates, state.base_optimizer_state, None, **extra_args)
      return new_updates, TensorGaLoreState(
        optax.safe_increment(state.count), state.factors, base_state
      )
    plans, treedef = _plans(updates, spec, rank, min_size)
    grads = treedef.flatten_up_to(updates)
    _check_moment_shapes(updates, treedef, plans, state.base_optimizer_state)
    old_factors = [
      dict(zip(p.projected_modes, f)) if p is not None else {}
      for p, f in zip(plans, _factors_per_leaf(updates, treedef, plans, state.factors))
    ]
    tensors = [g if p is None else p.to_tensor(g) for p, g in zip(plans, grads)]

    def refresh():
      new_factors = [
        _refresh.refresh_factors(t, f, refresh_method, is_first=state.count == 0)
        if p is not None
        else {}
        for p, t, f in zip(plans, tensors, old_factors)
      ]
      base_state = state.base_optimizer_state
      if moment_policy == "reset":
        base_state = base.init(treedef.unflatten(cores_like(plans, grads)))
      elif moment_policy == "rotate":
        base_state = _rotate_moments(base_state, treedef, plans, old_factors, new_factors)
      return new_factors, base_state

    factors, base_state = jax.lax.cond(
      state.count % update_proj_gap == 0,
      refresh,
      lambda: (old_factors, state.base_optimizer_state),
    )
    cores = [
      t if p is None else _tucker.project(t.astype(_promote(t, f)), f).astype(t.dtype)
      for p, t, f in zip(plans, tensors, factors)
    ]
    core_updates, base_state = base.update(treedef.unflatten(cores), base_state, None, **extra_args)
    new_updates = []
    for p, u, f, g in zip(plans, treedef.flatten_up_to(core_updates), factors, grads):
      if p is not None:
        u = p.from_tensor(_tucker.back_project(u.astype(_promote(u, f)), f))
      new_updates.append((scale * u).astype(g.dtype))
    new_factors = [tuple(f[n] for n in sorted(f)) for f in factors]
    return treedef.unflatten(new_updates), TensorGaLoreState(
      optax.safe_increment(state.count), treedef.unflatten(new_factors), base_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _uses_explicit_axes(tree) -> bool:
  """Whether any array of ``tree`` is sharded over a mesh with explicit axes."""
  for leaf in jax.tree.leaves(tree):
    mesh = getattr(jax.typeof(leaf).sharding, "mesh", None)
    if mesh is not None and not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types:
      return True
  return False


def _factors_per_leaf(updates, treedef, plans, factors) -> list[tuple]:
  """The state's factors, one tuple per leaf, checked against the gradients."""
  try:
    per_leaf = treedef.flatten_up_to(factors)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"updates do not match the tree tensor_galore was initialised with: {e}"
    ) from e
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
  for (path, leaf), plan, leaf_factors in zip(paths_and_leaves, plans, per_leaf):
    wanted = () if plan is None else plan.factor_shapes
    held = tuple(tuple(u.shape) for u in leaf_factors)
    if tuple(wanted) != held:
      raise ValueError(
        f"leaf {jax.tree_util.keystr(path)}: its gradient of shape {tuple(leaf.shape)} needs "
        f"factors {tuple(wanted)} but the state holds {held}; was the state initialised for "
        "other params?"
      )
  return per_leaf


def _check_moment_shapes(updates, treedef, plans, base_state) -> None:
  """Checks the cores' shapes against the base optimizer's ``mu``/``nu`` (if any)."""
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(updates)[0]

  def check(name, tree):
    try:
      moments = treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
      return tree  # A field of another layout: not a per-leaf moment to check.
    for (path, leaf), plan, moment in zip(paths_and_leaves, plans, moments):
      core_shape = tuple(leaf.shape) if plan is None else plan.core_shape
      if hasattr(moment, "shape") and tuple(moment.shape) != core_shape:
        raise ValueError(
          f"leaf {jax.tree_util.keystr(path)}: its gradient of shape {tuple(leaf.shape)} has "
          f"a core of shape {core_shape} but the state's `{name}` holds {tuple(moment.shape)}; "
          "was the state initialised for other params?"
        )
    return tree

  _map_moments(base_state, check)


def _promote(x: jax.Array, factors: dict[int, jax.Array]):
  return jnp.result_type(x.dtype, *(u.dtype for u in factors.values()))


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
  if moment_policy == "rotate" and not _has_moments(base_state):
    raise ValueError(
      "moment_policy='rotate' transports the base optimizer's `mu`/`nu` fields, but its "
      "state has none; use moment_policy='keep' or 'reset'."
    )


def _rotate_moments(base_state, treedef, plans, old_factors, new_factors):
  """Transports ``mu`` by ``U_new^H U_old`` per mode, ``nu`` by ``|U_new^H U_old|^2``.

  The second moment's rule is exact when the core's entries are uncorrelated
  (a diagonal covariance), and keeps ``nu`` non-negative.
  """

  def transport(name, tree):
    leaves = treedef.flatten_up_to(tree)
    out = []
    for p, x, old, new in zip(plans, leaves, old_factors, new_factors):
      if p is not None:
        dtype = _promote(x, old)
        x32 = x.astype(dtype)
        for n in p.projected_modes:
          change = new[n].conj().T @ old[n]
          if name == "nu":
            change = jnp.abs(change) ** 2
          x32 = _tucker.mode_dot(x32, change.T.astype(dtype), n)
        x = x32.astype(x.dtype)
      out.append(x)
    return treedef.unflatten(out)

  return _map_moments(base_state, transport)


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
  mu_dtype: str | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  scale: jax.typing.ArrayLike = 1.0,
  spec: SpecLike = None,
  refresh_method: str = "sthosvd",
  moment_policy: str = "keep",
  factor_dtype: str | None = None,
  nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW whose moments live on Tucker cores of the gradients (Tensor-GaLore).

  Equivalent to

  ```py
  optax.chain(
      tensor_galore(rank, base_optimizer=optax.scale_by_adam(b1, b2, eps,
                    eps_root, mu_dtype, nesterov=nesterov), ...),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  ```

  Decoupled weight decay acts on the full weights, as in ``optax.adamw``;
  only Adam's moments are projected. See `tensor_galore` for the projection,
  the ranks, the refresh and complex parameters.

  Args:
    learning_rate: A fixed learning rate or a schedule.
    rank: Projection rank; see `tensor_galore`.
    update_proj_gap: Steps between factor refreshes (at multiples of it).
    min_size: Smallest leaf (in entries) projected by default.
    b1: Adam's decay rate of the first moment.
    b2: Adam's decay rate of the second moment.
    eps: Added to the denominator, outside the square root.
    eps_root: Added to the denominator, inside the square root.
    mu_dtype: dtype of the first moment, as a string (e.g. ``"bfloat16"``);
      ``None`` keeps the cores' dtype.
    weight_decay: Strength of the decoupled weight decay.
    mask: Which leaves get weight decay, as in ``optax.adamw``.
    scale: Multiplies the back-projected update.
    spec: Which leaves are projected and how; see `tensor_galore`.
    refresh_method: How factors are recomputed; see `tensor_galore`.
    moment_policy: ``"keep"``, ``"reset"`` or ``"rotate"``; see `tensor_galore`.
    factor_dtype: ``None``, ``"float32"`` or ``"float64"``.
    nesterov: Whether to use Nesterov momentum in Adam.

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
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
