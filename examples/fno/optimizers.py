"""The optimizers the FNO example compares: AdamW, matrix GaLore, Tensor-GaLore.

All three are AdamW with the same hyper-parameters; they differ only in where
Adam's moments live for the spectral weights (complex ``(in, out, mx, my)``
tensors). As in the Tensor-GaLore paper, only the spectral weights are
projected; every other leaf keeps full-size Adam moments.

* ``adamw``: ``optax.adamw``, full-size moments everywhere.
* ``galore``: matrix GaLore. Each spectral weight is seen as an
  ``(in, out * mx * my)`` matrix and one side is projected, the larger one,
  which is the side that gives the smaller state (factor ``a x r`` plus two
  moments ``b x r``: ``r (a + 2 b)`` is smallest with ``a >= b``). It is a
  `TuckerSpec` of `tensor_galore`, so it handles complex weights correctly.
* ``tensor_galore``: every mode of each spectral weight projected (Tucker).
"""

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import TuckerSpec, optimizer_state_bytes, tensor_galore_adamw

OPTIMIZERS = ("adamw", "galore", "tensor_galore")

TUCKER = TuckerSpec()
MATRIX = TuckerSpec(modes=(0, (1, 2, 3)), num_projected=1)


def is_spectral(leaf) -> bool:
  """Spectral weights are the complex 4-D leaves of the FNO."""
  return jnp.iscomplexobj(leaf) and leaf.ndim == 4


def spectral_spec(spec: TuckerSpec):
  """A callable spec: ``spec`` on the spectral weights, nothing elsewhere."""
  return lambda params: jax.tree.map(lambda p: spec if is_spectral(p) else None, params)


def make_optimizer(
  name: str,
  learning_rate: optax.ScalarOrSchedule,
  *,
  rank: float | int,
  weight_decay: float = 1e-4,
  update_proj_gap: int = 200,
  moment_policy: str = "keep",
  refresh_method: str = "sthosvd",
) -> optax.GradientTransformation:
  """One of `OPTIMIZERS`, all AdamW with the same hyper-parameters.

  Args:
    name: ``"adamw"``, ``"galore"`` or ``"tensor_galore"``.
    learning_rate: Learning rate or schedule.
    rank: The projection rank: a float fraction for ``tensor_galore``, an int
      (or float fraction of the projected side) for ``galore``; unused by
      ``adamw``.
    weight_decay: Decoupled weight decay (applied in the full space).
    update_proj_gap: Steps between factor refreshes.
    moment_policy: What Adam's moments do at a refresh (see `tensor_galore`).
    refresh_method: How factors are recomputed (see `tensor_galore`).

  Returns:
    The optimizer.
  """
  if name == "adamw":
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
  return tensor_galore_adamw(
    learning_rate,
    rank,
    update_proj_gap=update_proj_gap,
    weight_decay=weight_decay,
    spec=spectral_spec(TUCKER if name == "tensor_galore" else MATRIX),
    moment_policy=moment_policy,
    refresh_method=refresh_method,
  )


def matched_galore_rank(params, target_bytes: int, **kwargs) -> int:
  """The int GaLore rank whose optimizer state is closest to ``target_bytes``.

  The state grows with the rank, so a bisection over ``1..max`` finds it;
  every evaluation is shape-only (`optimizer_state_bytes`), nothing is
  allocated.

  Args:
    params: The model parameters (arrays or shape structs).
    target_bytes: The state size to match, e.g. Tensor-GaLore's.
    **kwargs: Passed to `make_optimizer`.

  Returns:
    The rank (at least 1).
  """
  spectral = [p for p in jax.tree.leaves(params) if is_spectral(p)]
  if not spectral:
    raise ValueError("the model has no spectral (complex 4-D) weights to project")
  largest = max(max(p.shape[0], p.size // p.shape[0]) for p in spectral)

  def state_bytes(rank: int) -> int:
    return optimizer_state_bytes(make_optimizer("galore", 1e-3, rank=rank, **kwargs), params)

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
