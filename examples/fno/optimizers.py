"""The optimizers the FNO example compares, by name: AdamW, matrix GaLore, Tensor-GaLore.

All are AdamW with the same hyper-parameters; they differ only in where Adam's
moments live for the spectral weights (complex ``(in, out, mx, my)`` tensors).
As in the Tensor-GaLore paper, only the spectral weights are projected; every
other leaf keeps full-size Adam moments.

* ``adamw``: ``optax.adamw``, full-size moments everywhere.
* ``galore``: matrix GaLore. Each spectral weight is seen as an
  ``(in, out * mx * my)`` matrix and one side is projected, the larger one,
  which is the side that gives the smaller state (factor ``a x r`` plus two
  moments ``b x r``: ``r (a + 2 b)`` is smallest with ``a >= b``), as
  ``optax.contrib.galore`` does. It is a `TuckerSpec` of `tensor_galore`, so
  it handles complex weights correctly. GaLore's reference code projects the
  other side, the input channels: that is ``tensor_galore_in_channels``.
* ``galore_matched``: ``galore`` with ``scale="matched"``: its update lengthened
  to full-size Adam's step, as in ``tensor_galore_matched``, so that it runs at
  the learning rate tuned for the others.
* ``tensor_galore``: every mode of each spectral weight projected (Tucker).
* ``tensor_galore_mixed``: Tensor-GaLore with ``core_basis="mixed"``: the same
  subspaces, the cores' coordinates rotated so that Adam does not normalise
  the leading singular directions one by one.
* ``tensor_galore_matched``: Tensor-GaLore with ``scale="matched"``: each
  projected weight's update lengthened to the step of full-size Adam (by
  ``sqrt(entries / core entries)``), so one learning rate suits projected and
  unprojected leaves.
* ``tensor_galore_channels``: ``tensor_galore_matched`` with only the two
  channel modes projected: each Fourier mode keeps its own coordinates, so
  Adam normalises every frequency on its own as it does at full size.
* ``tensor_galore_in_channels``: ``tensor_galore_matched`` with only the input
  channels projected: the core holds as many entries as ``tensor_galore_channels``'
  at the same rank (a quarter at rank 0.25), and Adam sees every output
  channel and every frequency in its own coordinates. It is also matrix GaLore
  as GaLore's reference code orients it (the smaller side of the
  ``(in, out * mx * my)`` matrix projected), with the matched step.
* ``tensor_galore_fira``: Tensor-GaLore with ``residual="scaled"``: the part of
  each gradient outside the subspace is added back, scaled by how much Adam
  lengthened the projected gradient (Fira).
* ``tensor_galore_factored``: Tensor-GaLore with Adam's normalisation kept in
  the weights' own coordinates: each gradient is first divided by the root of
  a per-mode factored mean square (`scale_by_factored_rms`), then projected,
  and only the first moment (an exponential average) lives on the core.
* ``tensor_galore_rms``: the same with a full-size running mean square
  (`optax.scale_by_rms`): more state than AdamW's second moment alone, a
  diagnostic of whether normalising in the weights' coordinates is what
  Tensor-GaLore lacks, not a memory saver.

`OPTIMIZERS` maps each name to a `Variant`; a new variant is one more entry,
and the command line's ``--optimizer`` offers it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import (
  TuckerSpec,
  optimizer_state_bytes,
  scale_by_factored_rms,
  tensor_galore,
  tensor_galore_adamw,
)

TUCKER = TuckerSpec()
MATRIX = TuckerSpec(modes=(0, (1, 2, 3)), num_projected=1)
# The two largest modes of an FNO kernel are its channels (the earlier ones
# among equal sizes): in the presets, 32 or 24 channels against 16 and 9 or
# 8 and 5 kept frequencies, 64 and 64 against 64 and 33 for NS-128.
CHANNELS = TuckerSpec(num_projected=2)
# The first of those: the input channels.
IN_CHANNELS = TuckerSpec(num_projected=1)

# ``make(learning_rate, rank, *, weight_decay, update_proj_gap, moment_policy,
# refresh_method) -> optimizer``.
Factory = Callable[..., optax.GradientTransformation]


def is_spectral(leaf) -> bool:
  """Spectral weights are the complex leaves of the FNO: 4-D, or 5-D when stacked."""
  return jnp.iscomplexobj(leaf) and leaf.ndim in (4, 5)


def spectral_mask(params):
  """`is_spectral` of every leaf: the mask of `optax.masked` for the spectral weights."""
  return jax.tree.map(is_spectral, params)


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


def adamw(learning_rate, rank, *, weight_decay, scale=1.0, **_) -> optax.GradientTransformation:
  """``optax.adamw``; the rank and the projection settings do not apply.

  ``scale`` multiplies Adam's update of the spectral weights, as it does the
  projected weights' in the other variants (before the weight decay), so that
  a longer step for the spectral weights alone can be compared fairly.
  """
  del rank
  if scale == 1.0:
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  return optax.chain(
    optax.scale_by_adam(),
    optax.masked(optax.scale(scale), spectral_mask),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


def projected(spec: TuckerSpec, **fixed) -> Factory:
  """A factory of `tensor_galore_adamw` projecting the spectral weights by ``spec``.

  Args:
    spec: How each spectral weight is projected.
    **fixed: Keyword arguments of `tensor_galore_adamw` that this variant
      fixes, overriding the run's (e.g. ``refresh_method="svd"``).

  Returns:
    ``make(learning_rate, rank, **settings) -> optimizer``.
  """

  def make(learning_rate, rank, *, weight_decay, scale=1.0, **settings):
    settings = {**settings, **fixed}
    if "scale" not in fixed or scale == 1.0:
      settings.setdefault("scale", scale)
      return tensor_galore_adamw(
        learning_rate, rank, spec=spectral_spec(spec), weight_decay=weight_decay, **settings
      )
    # The variant fixes its own scale ("matched"): the run's multiplies it, on
    # the spectral weights and before the decay, as `adamw`'s multiplies Adam's.
    return optax.chain(
      tensor_galore(
        rank, base_optimizer=optax.scale_by_adam(), spec=spectral_spec(spec), **settings
      ),
      optax.masked(optax.scale(scale), spectral_mask),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
    )

  return make


def normalized(spec: TuckerSpec, normalize: optax.GradientTransformation) -> Factory:
  """A factory that normalises gradients in the weights' own coordinates, then projects.

  ``optax.chain(normalize, tensor_galore(base_optimizer=optax.ema(0.9)),
  add_decayed_weights, scale_by_learning_rate)``: Adam's division by the root
  mean square happens before the projection, so only the first moment (an
  exponential average) lives on the core. The same decay rates and weight
  decay as the other variants.

  Args:
    spec: How each spectral weight is projected.
    normalize: Divides each gradient by (an estimate of) its root mean square.
  """

  def make(learning_rate, rank, *, weight_decay, **settings):
    return optax.chain(
      normalize,
      tensor_galore(rank, base_optimizer=optax.ema(0.9), spec=spectral_spec(spec), **settings),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
    )

  return make


class Variant(NamedTuple):
  """A named optimizer of the example.

  Attributes:
    make: ``make(learning_rate, rank, *, weight_decay, update_proj_gap,
      moment_policy, refresh_method)`` returns the optimizer.
    default_rank: What an unset rank becomes: ``"tensor_rank"`` (the run's
      Tensor-GaLore rank), ``"matched"`` (the int rank whose state is closest
      in bytes to ``tensor_galore``'s at the Tensor-GaLore rank, see
      `matched_rank`) or ``None`` (the optimizer has no rank).
  """

  make: Factory
  default_rank: str | None = "tensor_rank"


OPTIMIZERS: dict[str, Variant] = {
  "adamw": Variant(adamw, default_rank=None),
  "galore": Variant(projected(MATRIX), default_rank="matched"),
  "galore_matched": Variant(projected(MATRIX, scale="matched"), default_rank="matched"),
  "tensor_galore": Variant(projected(TUCKER)),
  "tensor_galore_mixed": Variant(projected(TUCKER, core_basis="mixed")),
  "tensor_galore_matched": Variant(projected(TUCKER, scale="matched")),
  "tensor_galore_channels": Variant(projected(CHANNELS, scale="matched")),
  "tensor_galore_in_channels": Variant(projected(IN_CHANNELS, scale="matched")),
  "tensor_galore_fira": Variant(projected(TUCKER, residual="scaled")),
  "tensor_galore_factored": Variant(normalized(TUCKER, scale_by_factored_rms(b2=0.999))),
  "tensor_galore_rms": Variant(
    normalized(TUCKER, optax.scale_by_rms(0.999, eps=1e-8, bias_correction=True))
  ),
}


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
  moment_policy: str = "keep",
  refresh_method: str = "sthosvd",
  scale: float = 1.0,
) -> optax.GradientTransformation:
  """One of `OPTIMIZERS`, all AdamW with the same hyper-parameters.

  Args:
    name: A key of `OPTIMIZERS`.
    learning_rate: Learning rate or schedule.
    rank: The projection rank: a float fraction of every projected mode, or an
      int; unused by ``adamw``.
    weight_decay: Decoupled weight decay (applied in the full space).
    update_proj_gap: Steps between factor refreshes.
    moment_policy: What Adam's moments do at a refresh (see `tensor_galore`).
    refresh_method: How factors are recomputed (see `tensor_galore`).
    scale: Multiplies the back-projected update of the projected weights
      (see `tensor_galore`); for ``adamw``, Adam's update of the spectral
      weights; for a variant with its own scale (``"matched"``), that
      scale's update of the spectral weights.

  Returns:
    The optimizer.

  Raises:
    ValueError: For an unknown name, or settings the optimizer rejects.
  """
  return _variant(name).make(
    learning_rate,
    rank,
    weight_decay=weight_decay,
    update_proj_gap=update_proj_gap,
    moment_policy=moment_policy,
    refresh_method=refresh_method,
    scale=scale,
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
