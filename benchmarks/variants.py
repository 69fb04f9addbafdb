"""The optimizer variants the FNO benchmarks compare, by name.

All are AdamW with the same hyper-parameters; they differ only in where Adam's
moments live for the spectral weights (complex ``(in, out, mx, my)`` tensors).
As in the Tensor-GaLore paper, only the spectral weights are projected (but
by ``tensor_galore_defaults``); every other leaf keeps full-size Adam moments.

* ``adamw``: ``optax.adamw``, full-size moments everywhere.
* ``adafactor``: the memory peer, ``optax.adafactor(lr,
  min_dim_size_to_factor=8)``: a factored second moment and no first moment
  (it factors the small FNO's 16 x 9 modes too; its defaults factor nothing
  below 128 per dimension). No weight decay.
* ``galore``: matrix GaLore as ``optax.contrib.galore`` orients it: each
  spectral weight seen as an ``(in, out * mx * my)`` matrix, its larger side
  projected (the smaller state for a given rank). Its default rank is the int
  rank whose state matches ``tensor_galore``'s bytes.
* ``tensor_galore``: Tensor-GaLore as in the paper: every mode of each
  spectral weight projected (Tucker).
* ``tensor_galore_in_channels``: only the input
  channels projected; every output channel and every frequency keeps its own
  coordinates, so Adam normalises each of them as it does at full size. This is
  also matrix GaLore as GaLore's reference code orients it: the smaller side of
  the ``(in, out * mx * my)`` matrix projected.
* ``tensor_galore_compact``: the defaults with a factored second moment and a
  bfloat16 first moment (the frontier's ``compact`` setting).
* ``tensor_galore_int8_relative``: the defaults with a factored second moment, an
  int8 first moment and steps relative to each weight's size (the frontier's
  ``smallest_relative`` setting at ``--rank 0.2``).
* ``tensor_galore_defaults`` (the harness's default): `tensor_galore_adamw`
  with no spec: the library's defaults on every leaf large enough, whatever the model (the only
  projected variant for ``--preset cnn`` and ``mlp``, which have no spectral
  weights). On the small and darcy FNO presets it projects what
  ``tensor_galore_in_channels`` does (on ns128 also a projection MLP's kernel,
  which reaches ``min_size``).

The projected variants take the run's ``scale``: ``"matched"`` (the default)
gives their update the step length of full-size Adam, so all of them train at
the learning rate tuned for AdamW; a number is GaLore's ``alpha``, 1 the paper's.

`OPTIMIZERS` maps each name to a `Variant`; a new variant is one more entry,
and the command line's ``--optimizer`` offers it.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import TuckerSpec, optimizer_state_bytes, tensor_galore_adamw

# ``spec(rank) -> TuckerSpec`` for one (in, out, mx, my) spectral weight.
SpecOf = Callable[[Any], TuckerSpec]


def every_mode(rank) -> TuckerSpec:
  """Tensor-GaLore: all four modes projected, ``rank`` as the transformation reads it."""
  return TuckerSpec(rank=rank, num_projected="all")


def larger_side(rank) -> TuckerSpec:
  """Matrix GaLore on ``(in, out * mx * my)``, its larger side projected (optax's)."""
  return TuckerSpec(modes=(0, (1, 2, 3)), rank=(None, rank))


def input_channels(rank) -> TuckerSpec:
  """Only the input channels projected (GaLore's reference side of the same matrix)."""
  return TuckerSpec(rank=(rank, None, None, None))


def is_spectral(leaf) -> bool:
  """Spectral weights are the complex leaves of the FNO: 4-D, or 5-D when stacked."""
  return jnp.iscomplexobj(leaf) and leaf.ndim in (4, 5)


def stacked(spec: TuckerSpec) -> TuckerSpec:
  """``spec`` for the same weights stacked on a new leading layer axis.

  The layer axis is a batch axis: every layer keeps its own factors and core.
  """
  shift = lambda group: group + 1 if isinstance(group, int) else tuple(a + 1 for a in group)
  modes = None if spec.modes is None else tuple(shift(group) for group in spec.modes)
  return dataclasses.replace(spec, modes=modes, batch_axes=(0,))


def spectral_spec(spec: TuckerSpec):
  """A callable spec: ``spec`` on the spectral weights (`stacked` if 5-D), nothing elsewhere."""

  def leaf_spec(p):
    if not is_spectral(p):
      return None
    return stacked(spec) if p.ndim == 5 else spec

  return lambda params: jax.tree.map(leaf_spec, params)


class Variant(NamedTuple):
  """A named optimizer variant.

  Attributes:
    spec_of: ``spec_of(rank)`` is the `TuckerSpec` of each spectral weight;
      ``None`` for ``adamw``; `DEFAULTS` for the library's own choice on
      every leaf.
    default_rank: What an unset rank becomes: ``"tensor_rank"`` (the run's
      Tensor-GaLore rank), ``"matched"`` (the int rank whose state is closest
      in bytes to ``tensor_galore``'s at the Tensor-GaLore rank, see
      `matched_rank`) or ``None`` (the optimizer has no rank).
    options: More keyword arguments of `tensor_galore_adamw`.
  """

  spec_of: SpecOf | None
  default_rank: str | None = "tensor_rank"
  options: Mapping[str, Any] = types.MappingProxyType({})  # read-only: one shared default


DEFAULTS: SpecOf = lambda rank: None
"""`Variant.spec_of` of the library's defaults: no spec."""

OPTIMIZERS: dict[str, Variant] = {
  "adamw": Variant(None, default_rank=None),
  "adafactor": Variant(None, default_rank=None),
  "galore": Variant(larger_side, default_rank="matched"),
  "tensor_galore": Variant(every_mode),
  "tensor_galore_in_channels": Variant(input_channels),
  "tensor_galore_defaults": Variant(DEFAULTS),
  "tensor_galore_compact": Variant(
    DEFAULTS, options={"second_moment": "factored", "mu_dtype": "bfloat16"}
  ),
  "tensor_galore_int8_relative": Variant(
    DEFAULTS,
    options={
      "second_moment": "factored",
      "mu_dtype": "int8",
      "multiply_by_parameter_scale": True,
    },
  ),
}

DEFAULT = "tensor_galore_defaults"
"""The harness's default: the library's own choice, `tensor_galore_adamw` with no spec."""


PROJECTIONS = ("fewest", "all")
"""What ``tensor_galore_defaults`` projects: the library's default choice of modes (the fewest
that keep the rank's fraction), or every mode the rank can cut (``TuckerSpec(num_projected="all")``,
the paper's)."""


def spectral_only(name: str) -> bool:
  """Whether optimizer ``name`` projects the spectral weights only (nothing in a cnn or mlp)."""
  spec_of = _variant(name).spec_of
  return spec_of is not None and spec_of is not DEFAULTS


def spec(name: str, rank, projection: str = "fewest") -> Any:
  """The ``spec`` that optimizer ``name`` hands `tensor_galore_adamw` at ``rank``.

  ``projection`` (one of `PROJECTIONS`) applies to ``tensor_galore_defaults`` only.
  """
  spec_of = _variant(name).spec_of
  if spec_of is not DEFAULTS:
    return spectral_spec(spec_of(rank))
  if projection not in PROJECTIONS:
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
  return None if projection == "fewest" else TuckerSpec(num_projected="all")


def _variant(name: str) -> Variant:
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {tuple(OPTIMIZERS)}")
  return OPTIMIZERS[name]


def make_optimizer(
  name: str,
  learning_rate: optax.ScalarOrSchedule,
  *,
  rank: float | int | None,
  weight_decay: float = 1e-4,
  update_proj_gap: int = 200,
  scale: float | str = "matched",
  projection: str = "fewest",
  residual_scale: float = 4.0,
) -> optax.GradientTransformation:
  """One of `OPTIMIZERS`, all AdamW with the same hyper-parameters.

  Args:
    name: A key of `OPTIMIZERS`.
    learning_rate: Learning rate or schedule.
    rank: The projection rank: a float fraction of every projected mode, or an
      int; unused by ``adamw``.
    weight_decay: Decoupled weight decay (applied in the full space).
    update_proj_gap: Steps between factor refreshes.
    scale: The projected weights' step (see `tensor_galore`): ``"matched"``
      or a number multiplying the back-projected update; unused by ``adamw``.
    projection: Which modes ``tensor_galore_defaults`` projects (`PROJECTIONS`).
    residual_scale: The step of the part of each projected gradient outside
      its subspace (see `tensor_galore_adamw`); 0 drops it; unused by ``adamw``.

  Returns:
    The optimizer.

  Raises:
    ValueError: For an unknown name, or settings the optimizer rejects.
  """
  if name == "adafactor":
    return optax.adafactor(learning_rate, min_dim_size_to_factor=8)
  if _variant(name).spec_of is None:
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  return tensor_galore_adamw(
    learning_rate,
    rank=rank,
    spec=spec(name, rank, projection),
    weight_decay=weight_decay,
    update_proj_gap=update_proj_gap,
    scale=scale,
    residual_scale=residual_scale or None,
    **_variant(name).options,
  )


def matched_rank(name: str, params: Any, target_bytes: int, **settings) -> int:
  """The int rank of optimizer ``name`` whose state is closest to ``target_bytes``.

  The state grows with the rank, so a bisection over ``1..max`` finds it;
  every evaluation is shape-only (`optimizer_state_bytes`), nothing is
  allocated.

  Args:
    name: A key of `OPTIMIZERS` that takes an int rank.
    params: The model parameters (arrays or shape structs).
    target_bytes: The state size to match, e.g. Tensor-GaLore's.
    **settings: Passed to `make_optimizer`.

  Returns:
    The rank (at least 1).

  Raises:
    ValueError: If the model has no spectral weights.
  """
  spectral = [p for p in jax.tree.leaves(params) if is_spectral(p)]
  if not spectral:
    raise ValueError("the model has no spectral (complex 4-D) weights to project")
  # The largest side of one layer's (in, out * mx * my) matrix.
  largest = max(max(p.shape[-4], math.prod(p.shape[-3:])) for p in spectral)

  def state_bytes(rank: int) -> int:
    return optimizer_state_bytes(make_optimizer(name, 1e-3, rank=rank, **settings), params)

  low, high = 1, largest
  while low < high:
    mid = (low + high) // 2
    if state_bytes(mid) < target_bytes:
      low = mid + 1
    else:
      high = mid
  # `low` is the first rank at or above the target; its neighbour below may be closer.
  if low > 1 and abs(state_bytes(low - 1) - target_bytes) <= abs(state_bytes(low) - target_bytes):
    return low - 1
  return low


def build(
  name: str,
  learning_rate: optax.ScalarOrSchedule,
  params: Any,
  *,
  rank: float | int | None = None,
  tensor_rank: float = 0.25,
  **settings,
) -> tuple[optax.GradientTransformation, float | int | None]:
  """Makes optimizer ``name``, resolving an unset rank by its `Variant.default_rank`.

  Args:
    name: A key of `OPTIMIZERS`.
    learning_rate: Learning rate or schedule.
    params: The parameters, arrays or shape structs (for a matched rank).
    rank: The rank; ``None`` takes the variant's default.
    tensor_rank: Tensor-GaLore's rank: the default of ``"tensor_rank"``
      variants, and the memory target of ``"matched"`` ones.
    **settings: The other arguments of `make_optimizer`.

  Returns:
    The optimizer and its rank (``None`` for an optimizer without one).
  """
  default = _variant(name).default_rank
  if default is None:
    rank = None
  elif rank is None and default == "tensor_rank":
    rank = tensor_rank
  elif rank is None:
    target = optimizer_state_bytes(
      make_optimizer("tensor_galore", learning_rate, rank=tensor_rank, **settings), params
    )
    rank = matched_rank(name, params, target, **settings)
  return make_optimizer(name, learning_rate, rank=rank, **settings), rank
