"""Shardings of an optimizer state from the shardings of its parameters.

The rule, for the state of any optax optimizer (``tensor_galore`` and chains
containing it included):

* Tensor-GaLore factors ``(I_n, R_n)`` are replicated: they are small, and
  every device needs all of them to project its part of a gradient. So are the
  residual's running mean squares, one vector per mode, and the novelty of the
  factor columns, one vector per projected mode.
* A subtree with the parameters' tree structure (Adam's ``mu``/``nu``, the
  accumulator of ``optax.MultiSteps``, ...) is mapped leaf by leaf against its
  parameter. A leaf of the parameter's shape gets the parameter's sharding. A
  leaf with the parameter's number of dimensions and no larger size on any of
  them (a Tucker core, projected per axis) follows the parameter's
  `PartitionSpec` axis by axis, keeping a mesh axis only where the core's size
  on that dimension stays divisible by the mesh axis size, else that dimension
  is replicated. A complex core's first moment stored as (real, imaginary)
  pairs (a trailing dimension of 2) follows the same rule on its other
  dimensions. Any other leaf (a core of grouped modes, whose dimensions are
  not the parameter's) is replicated. Shapes are all the helper sees: a core
  of modes that permute the axes is matched by position.
* Everything else (step counts, hyper-parameters, scalars) is replicated.

A projected dimension of a core indexes rank components, not rows of the
parameter, so keeping it sharded trades communication for memory: the moments
are split over the mesh, but the projection and back-projection then contract
a sharded dimension. ``shard_projected_axes=False`` replicates those
dimensions instead (see ``docs/scaling.md`` for measured collectives).

Shardings decide the layout only, never the values: a leaf replicated where it
could have been sharded costs memory, one sharded where it need not be costs
communication, neither changes the result beyond floating-point reordering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from tensor_galore_optax._state import TensorGaLoreState


def _uses_explicit_axes(tree) -> bool:
  """Whether any array of ``tree`` is sharded over a mesh with explicit axes."""
  for leaf in jax.tree.leaves(tree):
    mesh = getattr(jax.typeof(leaf).sharding, "mesh", None)
    if mesh is not None and not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types:
      return True
  return False


def with_auto_axes(update_fn: Callable) -> Callable:
  """``update_fn`` run under `jax.sharding.auto_axes` when its inputs use explicit mesh axes.

  Under explicit axes (``jax.make_mesh``'s default), JAX asks every contraction
  of a sharded axis (a refresh's decompositions, the projections) for an output
  sharding. XLA's automatic propagation decides them instead; the results keep
  the shardings of the inputs.
  """

  def wrapped(updates, state, params=None, **extra_args):
    if not _uses_explicit_axes((updates, state)):
      return update_fn(updates, state, params, **extra_args)
    out_shardings = jax.tree.map(lambda x: jax.typeof(x).sharding, (updates, state))
    return jax.sharding.auto_axes(
      lambda u, s: update_fn(u, s, None, **extra_args), out_sharding=out_shardings
    )(updates, state)

  return wrapped


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _axis_size(mesh, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[name] for name in names)


def _core_sharding(
  shape, param_shape, sharding: NamedSharding, shard_projected_axes: bool
) -> NamedSharding:
  """The sharding of a state leaf of ``shape`` kept for a parameter of ``param_shape``."""
  mesh = sharding.mesh
  if tuple(shape) == tuple(param_shape):
    return sharding
  if len(shape) == len(param_shape) + 1 and shape[-1] == 2:
    # A complex moment stored as (real, imaginary) pairs: the pairs stay together.
    return _core_sharding(shape[:-1], param_shape, sharding, shard_projected_axes)
  if len(shape) != len(param_shape) or any(s > p for s, p in zip(shape, param_shape)):
    # Grouped modes: the core's dimensions are not the parameter's.
    return NamedSharding(mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
  entries = []
  # A spec shorter than the rank leaves the trailing dimensions replicated.
  for size, param_size, entry in zip(shape, param_shape, sharding.spec):
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
      entries.append(entry)
    elif size < param_size and not shard_projected_axes:
      entries.append(None)
    else:
      entries.append(entry if size % _axis_size(mesh, entry) == 0 else None)
  while entries and entries[-1] is None:
    entries.pop()  # P('x', None) and P('x') mean the same; keep the short form.
  return NamedSharding(mesh, PartitionSpec(*entries), memory_kind=sharding.memory_kind)


def optimizer_state_shardings(
  optimizer: optax.GradientTransformation,
  params: Any,
  param_shardings: Any = None,
  *,
  shard_projected_axes: bool = True,
) -> Any:
  """Shardings for ``optimizer.init(params)``, computed from shapes only.

  Factors are replicated; subtrees shaped like the parameters (Adam's moments,
  cores included) follow the parameters' shardings, core dimensions keeping a
  mesh axis only where they stay divisible by its size; everything else is
  replicated (see the module docstring for the full rule). The state is
  evaluated with `jax.eval_shape`: nothing is allocated. Works for any optax
  optimizer; for plain ones the moments simply get the parameters'
  shardings.

  ``optax.tree.map_params`` cannot do this for `tensor_galore`: ``init`` puts
  the parameters' placeholder where the factors and the cores sit, so it maps
  over the factors and over the core-shaped moments as if they were
  parameters.

  Args:
    optimizer: Any optax transformation, e.g. `tensor_galore_adamw` or a chain
      containing `tensor_galore`.
    params: The parameters: arrays or ``jax.ShapeDtypeStruct`` leaves.
    param_shardings: A `jax.sharding.NamedSharding` per parameter leaf (a
      pytree with the structure of ``params``), or one for every leaf. ``None``
      takes each leaf's own ``.sharding``. All must be on one mesh (a
      ``jax.sharding.AbstractMesh`` is fine for planning).
    shard_projected_axes: Whether a core dimension that the projection shrank
      keeps the parameter's mesh axis (when divisible). ``True`` splits the
      moments over the mesh; ``False`` replicates those dimensions, so that the
      projection does not contract a sharded rank dimension (less
      communication, more memory per device).

  Returns:
    A pytree of `jax.sharding.NamedSharding` with the structure of
    ``optimizer.init(params)``, usable as ``out_shardings`` of a jitted
    ``init`` or train step.

  Raises:
    TypeError: if a parameter's sharding is not a ``NamedSharding``.
    ValueError: if the shardings do not match ``params``, use more than one
      mesh, or there are none to take the mesh from.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> from tensor_galore_optax import optimizer_state_shardings, tensor_galore_adamw
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ('fsdp',))
    >>> params = {'w': jnp.ones((16, 16, 8, 5), jnp.complex64), 'b': jnp.ones(16)}
    >>> shardings = {'w': NamedSharding(mesh, P('fsdp')), 'b': NamedSharding(mesh, P())}
    >>> tx = tensor_galore_adamw(1e-3, rank=0.25, min_size=1000)
    >>> state_shardings = optimizer_state_shardings(tx, params, shardings)
    >>> galore = state_shardings[0]
    >>> galore.factors['w'][0].spec, galore.base_optimizer_state.mu['w'].spec
    (P(), P('fsdp',))
    >>> state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    >>> state[0].base_optimizer_state.nu['w'].sharding == galore.base_optimizer_state.nu['w']
    True
  """
  params_leaves, params_treedef = jax.tree.flatten(params)
  if param_shardings is None:
    shardings = [getattr(leaf, "sharding", None) for leaf in params_leaves]
  elif isinstance(param_shardings, jax.sharding.Sharding):
    shardings = [param_shardings] * len(params_leaves)
  else:
    try:
      shardings = params_treedef.flatten_up_to(param_shardings)
    except (ValueError, TypeError) as e:
      raise ValueError(f"param_shardings do not match the params tree {params_treedef}: {e}") from e
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for path, sharding in zip(paths, shardings):
    if not isinstance(sharding, NamedSharding):
      raise TypeError(
        f"the sharding of parameter {path} is {sharding!r}; optimizer_state_shardings "
        "needs a jax.sharding.NamedSharding per parameter."
      )
  if not shardings:
    raise ValueError(
      "optimizer_state_shardings needs at least one parameter to take the mesh from."
    )
  meshes = {s.mesh for s in shardings}
  if len(meshes) != 1:
    raise ValueError(
      "optimizer_state_shardings needs every parameter sharding on one mesh, got "
      f"{len(meshes)} meshes."
    )
  mesh = shardings[0].mesh
  replicated = NamedSharding(mesh, PartitionSpec())
  shapes = [tuple(leaf.shape) for leaf in params_leaves]

  def params_shaped(x) -> bool:
    # optax.masked puts MaskedNode where a leaf is masked out; it is still a
    # per-parameter tree.
    return jax.tree.structure(x, is_leaf=_is_masked) == params_treedef

  def per_parameter(tree):
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_masked)
    out = [
      leaf
      if _is_masked(leaf)
      else _core_sharding(leaf.shape, shape, sharding, shard_projected_axes)
      for leaf, shape, sharding in zip(leaves, shapes, shardings)
    ]
    return treedef.unflatten(out)

  def assign(tree):
    def visit(x):
      if isinstance(x, TensorGaLoreState):
        return TensorGaLoreState(
          count=replicated,
          factors=jax.tree.map(lambda _: replicated, x.factors),
          base_optimizer_state=assign(x.base_optimizer_state),
          residual_moments=jax.tree.map(lambda _: replicated, x.residual_moments),
          novelty=jax.tree.map(lambda _: replicated, x.novelty),
        )
      if params_shaped(x):
        return per_parameter(x)
      return replicated

    return jax.tree.map(
      visit, tree, is_leaf=lambda x: isinstance(x, TensorGaLoreState) or params_shaped(x)
    )

  return assign(jax.eval_shape(optimizer.init, params))
