"""Tensor-GaLore for optax: memory-efficient optimizers for tensor-shaped weights."""

from tensor_galore_optax._adam import scale_by_core_adam
from tensor_galore_optax._memory import optimizer_state_bytes
from tensor_galore_optax._report import LeafPlan, ProjectionPlan, projection_plan
from tensor_galore_optax._sharding import optimizer_state_shardings
from tensor_galore_optax._state import TensorGaLoreState
from tensor_galore_optax._transform import tensor_galore, tensor_galore_adamw
from tensor_galore_optax._tucker import TuckerSpec

__version__ = "1.2.0"

__all__ = (
  "LeafPlan",
  "ProjectionPlan",
  "TensorGaLoreState",
  "TuckerSpec",
  "optimizer_state_bytes",
  "optimizer_state_shardings",
  "projection_plan",
  "scale_by_core_adam",
  "tensor_galore",
  "tensor_galore_adamw",
)
