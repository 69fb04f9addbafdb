"""Tensor-GaLore for optax: memory-efficient optimizers for tensor-shaped weights."""

from tensor_galore_optax._memory import optimizer_state_bytes, tree_bytes
from tensor_galore_optax._refresh import REFRESH_METHODS, RefreshMethod
from tensor_galore_optax._report import LeafPlan, ProjectionPlan, projection_plan
from tensor_galore_optax._sharding import optimizer_state_shardings
from tensor_galore_optax._state import TensorGaLoreState
from tensor_galore_optax._transform import (
  MOMENT_POLICIES,
  MomentPolicy,
  tensor_galore,
  tensor_galore_adamw,
)
from tensor_galore_optax._tucker import TuckerSpec

__version__ = "0.4.0"

__all__ = (
  "MOMENT_POLICIES",
  "REFRESH_METHODS",
  "LeafPlan",
  "MomentPolicy",
  "ProjectionPlan",
  "RefreshMethod",
  "TensorGaLoreState",
  "TuckerSpec",
  "optimizer_state_bytes",
  "optimizer_state_shardings",
  "projection_plan",
  "tensor_galore",
  "tensor_galore_adamw",
  "tree_bytes",
)
