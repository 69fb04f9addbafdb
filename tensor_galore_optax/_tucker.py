"""Tucker algebra: a leaf seen as a tensor, mode products and rank resolution.

A parameter of shape ``(I_1, ..., I_d)`` is seen as a tensor with one *mode* per
group of axes (by default one mode per axis). Each projected mode ``n`` carries
a factor ``U_n`` of shape ``(I_n, R_n)`` with orthonormal columns; the core of a
tensor ``G`` is ``G x_1 U_1^H ... x_N U_N^H`` and the back-projection of a core
``C`` is ``C x_1 U_1 ... x_N U_N``. Everything that decides a shape is plain
Python here, so it runs once per trace and never inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

# An int: the rank of every projected mode. A float in (0, 1]: the fraction of
# the tensor's entries that the core keeps at least. A tuple: one entry per
# mode, an int (rank), a float (fraction of that mode) or None (not projected).
Rank = int | float | Sequence[int | float | None]

# How many modes a scalar rank projects: None (the fewest that reach a float's
# budget), "all" (every mode it can cut) or at most that many.
NumProjected = int | Literal["all"] | None


@dataclasses.dataclass(frozen=True)
class TuckerSpec:
  """How one parameter is seen as a tensor, and which of its modes are projected.

  Matrix GaLore is a spec: group the axes into two modes and project one of
  them, e.g. ``TuckerSpec(modes=(0, (1, 2, 3)), num_projected=1)`` sees an
  ``(in, out, mx, my)`` weight as an ``(in, out * mx * my)`` matrix and
  projects its smaller side, the input channels, as GaLore's reference code
  does; it updates exactly as mode 0 alone,
  ``TuckerSpec(rank=(r, None, None, None))``. ``optax.contrib.galore``
  projects the larger side: ``TuckerSpec(modes=(0, (1, 2, 3)), rank=(None, r))``.

  Stacked layers (a scanned model's ``(L, in, out, mx, my)`` weight) have their
  layer axis as a batch axis: each layer then gets its own factors and its own
  core, exactly as ``L`` separate leaves would. By default (``batch_axes=None``)
  the leading axis of a leaf of three or more axes is taken for a layer axis
  when it is shorter than every other axis (``(4, 32, 32, 16, 9)``,
  ``(12, 768, 3072)``; not a ``(3, 3, in, out)`` convolution kernel); name it
  with ``batch_axes=0`` where that rule does not see it (a stack of more layers
  than the weight's shortest axis), or ``batch_axes=()`` for none.

  Attributes:
    modes: Groups of axes, one group (an int or a sequence of ints) per mode,
      together naming every axis that is not a batch axis exactly once;
      negative axes count from the end. ``None`` makes every such axis a mode
      of its own.
    rank: The rank for this leaf, in any form the transformation's ``rank``
      takes; ``None`` uses the transformation's ``rank``.
    num_projected: Which modes are projected. ``None`` (the default): with a
      float rank, the fewest modes whose core keeps about that fraction of
      the entries, the first in axis order (a mode longer than the rest of
      the tensor, such as the long side of a matrix, last; see
      `preferred_modes`); with an int rank, every mode it cuts. ``"all"``:
      every mode the rank can cut, as in the Tensor-GaLore paper. An int:
      that many modes, in that order. A mode that a scalar rank cannot cut
      is never projected.
    batch_axes: Axes that index independent tensors (stacked layers): the
      projection is computed separately for every index along them. ``None``
      (the default): the leading axis when it is a layer axis by the rule
      above, and only with ``modes=None`` and a scalar rank; ``()`` for none.

  Raises:
    TypeError, ValueError: at construction, for a field of the wrong form
      (the message names the field).
  """

  modes: Sequence[int | Sequence[int]] | None = None
  rank: Rank | None = None
  num_projected: NumProjected = None
  batch_axes: int | Sequence[int] | None = None

  def __post_init__(self):
    if self.modes is not None:
      if isinstance(self.modes, (str, bytes)) or not isinstance(self.modes, Sequence):
        raise TypeError(
          f"TuckerSpec.modes must be None or a sequence of axis groups, got {self.modes!r}."
        )
      groups = tuple(_axis_group(g, "TuckerSpec.modes") for g in self.modes)
      object.__setattr__(self, "modes", groups)
    if self.rank is not None:
      object.__setattr__(self, "rank", canonical_rank(self.rank, "TuckerSpec.rank"))
    _check_num_projected(self.num_projected, "TuckerSpec")
    if self.batch_axes is not None:
      batch_axes = self.batch_axes
      if isinstance(batch_axes, numbers.Integral) and not isinstance(batch_axes, bool):
        batch_axes = (batch_axes,)
      object.__setattr__(
        self, "batch_axes", _axis_group(batch_axes, "TuckerSpec.batch_axes", empty_ok=True)
      )


def _is_int(x) -> bool:
  """An integer, NumPy's included, but not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _axis_group(group, field: str, empty_ok: bool = False) -> int | tuple[int, ...]:
  """Checks one group of axes: an int, or a sequence of ints."""
  if _is_int(group):
    return int(group)
  if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
    raise TypeError(f"{field}: an axis group is an int or a sequence of ints, got {group!r}.")
  for a in group:
    if not _is_int(a):
      raise TypeError(f"{field}: axes are ints, got {a!r} in {tuple(group)!r}.")
  if not group and not empty_ok:
    raise ValueError(f"{field}: empty group of axes.")
  return tuple(int(a) for a in group)


def unfold(tensor: jax.Array, mode: int) -> jax.Array:
  """Mode-``mode`` unfolding: an ``(I_mode, prod(other sizes))`` matrix."""
  return jnp.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def mode_dot(tensor: jax.Array, matrix: jax.Array, mode: int) -> jax.Array:
  """Contracts axis ``mode`` of ``tensor`` with the first axis of ``matrix``.

  The result has ``matrix.shape[1]`` entries along ``mode``: with
  ``matrix = U.conj()`` this is ``tensor x_mode U^H``, with ``matrix = U.T``
  it is ``tensor x_mode U``.
  """
  # Along the first or the last axis the product is one matrix product on the
  # tensor as it is laid out; along an inner axis XLA transposes the tensor.
  if mode == 0:
    return jnp.tensordot(matrix, tensor, axes=(0, 0))
  if mode == tensor.ndim - 1:
    return jnp.tensordot(tensor, matrix, axes=(mode, 0))
  return jnp.moveaxis(jnp.tensordot(tensor, matrix, axes=(mode, 0)), -1, mode)


def _contraction_order(
  sizes: Sequence[tuple[int, int]], modes: Sequence[int], ndim: int
) -> list[int]:
  """The order in which `project` contracts the modes, as indices into ``modes``.

  The most compressing modes (smallest ``R_n / I_n``) go first, so that each
  product runs on the smallest tensor available; but the first product, the
  only one on the full-size tensor, is moved to an outer axis (the first or
  the last) when one is projected, so that the full-size tensor is never
  transposed. `back_project` uses the reverse order, so that its last product
  writes the full-size tensor in place.

  Args:
    sizes: ``(I_n, R_n)`` per projected mode.
    modes: The projected modes.
    ndim: The tensor's number of axes.
  """
  order = sorted(range(len(modes)), key=lambda k: sizes[k][1] / sizes[k][0])
  outer = [k for k in order if modes[k] in (0, ndim - 1)]
  if outer:
    order.remove(outer[0])
    order.insert(0, outer[0])
  return order


def project(tensor: jax.Array, factors: Sequence[jax.Array], modes: Sequence[int]) -> jax.Array:
  """The core ``tensor x_n U_n^H`` over ``modes`` (conjugate transposes).

  ``factors[k]`` is the ``(I_n, R_n)`` factor of mode ``n = modes[k]``.
  """
  for k in _contraction_order([f.shape for f in factors], modes, tensor.ndim):
    tensor = mode_dot(tensor, factors[k].conj(), modes[k])
  return tensor


def back_project(core: jax.Array, factors: Sequence[jax.Array], modes: Sequence[int]) -> jax.Array:
  """The full-size tensor ``core x_n U_n`` over ``modes``."""
  for k in reversed(_contraction_order([f.shape for f in factors], modes, core.ndim)):
    core = mode_dot(core, factors[k].T, modes[k])
  return core


def batched(fn: Callable, batch_ndim: int, *, sequential: bool = False) -> Callable:
  """``fn`` mapped over ``batch_ndim`` leading axes of every argument and output.

  Args:
    fn: A function of arrays.
    batch_ndim: How many leading axes to map over.
    sequential: Map with ``jax.lax.map`` (one index after the other, so the
      temporaries of ``fn`` exist for one index at a time) rather than
      ``jax.vmap`` (all indices at once).
  """
  for _ in range(batch_ndim):
    fn = _one_after_another(fn) if sequential else jax.vmap(fn)
  return fn


def _one_after_another(fn: Callable) -> Callable:
  """``fn`` mapped over the leading axis of its arguments with ``jax.lax.map``."""
  return lambda *args: jax.lax.map(lambda a: fn(*a), args)


@dataclasses.dataclass(frozen=True)
class TuckerPlan:
  """A leaf's resolved view: static shapes only, computed once per trace.

  The leaf is seen as a tensor of shape ``batch_shape + mode_sizes``: its batch
  axes first, then one axis per mode. Every array of the projection (tensor,
  factors, core) carries the batch axes in front.

  Attributes:
    shape: The leaf's shape.
    permutation: Axis order that puts the batch axes first and makes each
      mode's axes adjacent.
    batch_shape: Sizes of the batch axes (``()`` for an ordinary leaf).
    mode_sizes: ``I_n`` for every mode.
    ranks: ``R_n`` for every mode, ``None`` where the mode is not projected.
  """

  shape: tuple[int, ...]
  permutation: tuple[int, ...]
  batch_shape: tuple[int, ...]
  mode_sizes: tuple[int, ...]
  ranks: tuple[int | None, ...]

  @property
  def projected_modes(self) -> tuple[int, ...]:
    """The projected modes, in order; ``factors[k]`` belongs to the ``k``-th."""
    return tuple(n for n, r in enumerate(self.ranks) if r is not None)

  @property
  def core_shape(self) -> tuple[int, ...]:
    modes = tuple(i if r is None else r for i, r in zip(self.mode_sizes, self.ranks))
    return self.batch_shape + modes

  @property
  def factor_shapes(self) -> tuple[tuple[int, ...], ...]:
    return tuple(
      self.batch_shape + (self.mode_sizes[n], self.ranks[n]) for n in self.projected_modes
    )

  def to_tensor(self, leaf: jax.Array) -> jax.Array:
    """The leaf as a tensor with the batch axes first, then one axis per mode."""
    return jnp.transpose(leaf, self.permutation).reshape(self.batch_shape + self.mode_sizes)

  def from_tensor(self, tensor: jax.Array) -> jax.Array:
    """Inverse of `to_tensor`."""
    permuted_shape = tuple(self.shape[a] for a in self.permutation)
    inverse = tuple(sorted(range(len(self.shape)), key=self.permutation.__getitem__))
    return jnp.transpose(tensor.reshape(permuted_shape), inverse)

  def project(self, tensor: jax.Array, factors: Sequence[jax.Array]) -> jax.Array:
    """The core of a tensor (as `to_tensor` returns it)."""
    fn = lambda t, fs: project(t, fs, self.projected_modes)
    return batched(fn, len(self.batch_shape))(tensor, tuple(factors))

  def back_project(self, core: jax.Array, factors: Sequence[jax.Array]) -> jax.Array:
    """The full-size tensor of a core."""
    fn = lambda c, fs: back_project(c, fs, self.projected_modes)
    return batched(fn, len(self.batch_shape))(core, tuple(factors))


def _normalize_axes(
  modes: Sequence[int | Sequence[int]] | None,
  batch_axes: Sequence[int],
  ndim: int,
  where: str,
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
  """Checks that batch axes and ``modes`` partition the axes; non-negative axes."""

  def axis(a) -> int:
    if not -ndim <= a < ndim:
      raise ValueError(f"{where}: axis {a!r} is out of range for ndim {ndim}.")
    return a % ndim

  batch = tuple(axis(a) for a in batch_axes)
  rest = [a for a in range(ndim) if a not in batch]
  if modes is None:
    groups = tuple((a,) for a in rest)
  else:
    groups = tuple(tuple(axis(a) for a in ((g,) if isinstance(g, int) else g)) for g in modes)
  flat = list(batch) + [a for g in groups for a in g]
  if len(flat) != len(set(flat)):
    raise ValueError(
      f"{where}: modes={modes!r} and batch_axes={tuple(batch_axes)!r} name an axis more than once."
    )
  if sorted(flat) != list(range(ndim)):
    missing = sorted(set(range(ndim)) - set(flat))
    raise ValueError(f"{where}: modes={modes!r} leave axes {missing} out; every axis needs a mode.")
  if not groups:
    raise ValueError(f"{where}: batch_axes={tuple(batch_axes)!r} leave no axis to project.")
  return batch, groups


def _check_num_projected(num_projected, where: str) -> None:
  if num_projected is not None and num_projected != "all":
    _check_int(num_projected, "num_projected", where, also='None or "all"')


def _check_int(value, name: str, where: str, also: str = "") -> None:
  if not _is_int(value):
    raise TypeError(
      f"{where}: {name} must be an int{' or ' + also if also else ''}, got {value!r}."
    )
  if value <= 0:
    raise ValueError(f"{where}: {name} must be positive, got {value}.")


def canonical_rank(rank, where: str = "tensor_galore") -> Rank:
  """``rank`` checked (shape-independent checks only), in Python numbers.

  Integers of any kind (``numpy.int64`` from a config or a sweep) become
  ``int``, other reals ``float``, sequences tuples.
  """
  if _is_int(rank):
    _check_int(rank, "rank", where)
    return int(rank)
  if isinstance(rank, numbers.Real) and not isinstance(rank, bool):
    if not 0.0 < rank <= 1.0:
      raise ValueError(
        f"{where}: a float rank is the fraction of the entries kept, in (0, 1]; got {rank}."
      )
    return float(rank)
  if isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)):
    return tuple(None if entry is None else canonical_rank(entry, where) for entry in rank)
  raise TypeError(f"{where}: rank must be an int, a float or a tuple, got {rank!r}.")


def _mode_rank(entry: int | float, size: int) -> int:
  """A mode's rank: an int clipped to its size, or a float fraction of it rounded up."""
  if isinstance(entry, float):
    # The tiny offset keeps exact products (0.5 * 64) from rounding up.
    entry = math.ceil(size * entry - 1e-9)
  return max(1, min(entry, size))


def preferred_modes(mode_sizes: Sequence[int]) -> list[int]:
  """The modes in the order they are picked for projection.

  In axis order (the input channels of an FNO, ``(in, out, mx, my)``, or of a
  Flax convolution, ``(kh, kw, in, out)``, before their output channels),
  except that a mode longer than the rest of the tensor together (the long
  side of a matrix) comes last: its factor, ``I_n x R_n``, would hold more
  entries than the core it saves.
  """
  total = math.prod(mode_sizes)
  return sorted(range(len(mode_sizes)), key=lambda n: (mode_sizes[n] ** 2 > total, n))


# A float rank's core keeps "about" the fraction asked for when it keeps at most
# this many times it (ceil rounds up); past the second, the plan carries a note.
_ABOUT, _WARN = 1.25, 1.5


def resolve_ranks(
  rank: Rank, mode_sizes: Sequence[int], num_projected: NumProjected, where: str
) -> tuple[int | None, ...]:
  """Per-mode ranks ``R_n`` (``None`` = not projected) for one tensor.

  A mode's rank is clipped to the mode's size. With a scalar ``rank``, a mode
  that it cannot cut (its rank would be its size) stays unprojected: rotated
  whole it would save nothing, and Adam would normalise in a rotated basis.
  With ``num_projected=None``, the fewest modes, in the order of
  `preferred_modes`: a float's, the fewest whose core keeps about ``rank`` of
  the entries (at most 1.25 times it; if no choice does, the closest); an
  int's, the first mode it cuts. A tensor of two modes (a matrix) projects
  one side either way: cutting both makes the core at a refresh diagonal up
  to round-off, and Adam's first step would turn that round-off into
  full-size steps along every off-diagonal direction. ``"all"`` cuts every
  mode the rank can; an int, that many modes in that order. A tuple keeps
  its exact meaning: every entry that is not ``None`` is projected.
  """
  n_modes = len(mode_sizes)
  rank = canonical_rank(rank, where)
  if isinstance(rank, tuple):
    if num_projected is not None:
      raise ValueError(f"{where}: give either a per-mode rank tuple or num_projected, not both.")
    if len(rank) != n_modes:
      raise ValueError(
        f"{where}: rank={rank!r} has {len(rank)} entries but the tensor has "
        f"{n_modes} modes of sizes {tuple(mode_sizes)}."
      )
    return tuple(None if r is None else _mode_rank(r, i) for r, i in zip(rank, mode_sizes))
  _check_num_projected(num_projected, where)
  order = preferred_modes(mode_sizes)
  if num_projected is None and n_modes == 2:
    num_projected = 1
  if isinstance(num_projected, int):
    if num_projected > n_modes:
      raise ValueError(
        f"{where}: num_projected={num_projected} exceeds the {n_modes} modes of sizes "
        f"{tuple(mode_sizes)}."
      )
    order = order[:num_projected]
  if num_projected is not None:
    return _cut(rank, mode_sizes, set(order))
  if isinstance(rank, int):
    first = next((n for n in order if rank < mode_sizes[n]), None)
    return _cut(rank, mode_sizes, set() if first is None else {first})
  # Every choice of modes, the fewest first, each in the order of `preferred_modes`.
  options = [
    _cut(rank, mode_sizes, set(modes))
    for k in range(1, n_modes + 1)
    for modes in itertools.combinations(order, k)
  ]
  kept = lambda ranks: fraction_kept(ranks, mode_sizes) / rank
  return next(
    (r for r in options if kept(r) <= _ABOUT), min(options, key=lambda r: abs(math.log(kept(r))))
  )


def fraction_kept(ranks: Sequence[int | None], mode_sizes: Sequence[int]) -> float:
  """The fraction of a tensor's entries that a core of these ranks keeps."""
  return math.prod(r or i for r, i in zip(ranks, mode_sizes)) / math.prod(mode_sizes)


def _cut(rank: int | float, mode_sizes: Sequence[int], chosen: set[int]) -> tuple[int | None, ...]:
  """Ranks of the ``chosen`` modes that ``rank`` cuts; ``None`` for the others."""
  while chosen:
    # Each of the N projected modes keeps rank**(1/N) of its size, so the core
    # keeps at least `rank` of the entries.
    per_mode = rank ** (1.0 / len(chosen)) if isinstance(rank, float) else rank
    ranks = {n: _mode_rank(per_mode, mode_sizes[n]) for n in chosen}
    cut = {n for n in chosen if ranks[n] < mode_sizes[n]}
    if cut == chosen or not cut:
      return tuple(ranks[n] if n in cut else None for n in range(len(mode_sizes)))
    chosen = cut  # the budget of the modes left whole goes to the others
  return (None,) * len(mode_sizes)


def stacked_axes(shape: Sequence[int]) -> tuple[int, ...]:
  """``(0,)`` if the leading axis looks like a stack of layers, else ``()``.

  A leaf of three or more axes whose leading axis is shorter than every other
  one: ``nnx.scan``/``nnx.vmap`` stacks put the layer axis first, and weights
  themselves rarely lead with their shortest axis (a Flax convolution kernel
  ``(3, 3, in, out)`` leads with one of two equal ones).
  """
  stacked = len(shape) >= 3 and 2 <= shape[0] and all(shape[0] < s for s in shape[1:])
  return (0,) if stacked else ()


def make_plan(shape: Sequence[int], spec: TuckerSpec, default_rank: Rank, where: str) -> TuckerPlan:
  """Resolves ``spec`` for a leaf of ``shape`` into a `TuckerPlan`."""
  shape = tuple(int(s) for s in shape)
  if not shape:
    raise ValueError(f"{where}: a scalar leaf has no modes to project.")
  rank = canonical_rank(default_rank if spec.rank is None else spec.rank, where)
  batch_axes = spec.batch_axes
  if batch_axes is None:
    automatic = spec.modes is None and not isinstance(rank, tuple)
    batch_axes = stacked_axes(shape) if automatic else ()
  batch, groups = _normalize_axes(spec.modes, batch_axes, len(shape), where)
  mode_sizes = tuple(math.prod(shape[a] for a in g) for g in groups)
  ranks = resolve_ranks(rank, mode_sizes, spec.num_projected, where)
  return TuckerPlan(
    shape=shape,
    permutation=batch + tuple(a for g in groups for a in g),
    batch_shape=tuple(shape[a] for a in batch),
    mode_sizes=mode_sizes,
    ranks=ranks,
  )
