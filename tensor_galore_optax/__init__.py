"""Tensor-GaLore for optax: memory-efficient optimizers for tensor-shaped weights."""

from tensor_galore_optax._factored import FactoredRmsState, scale_by_factored_rms
from tensor_galore_optax._memory import optimizer_state_bytes, tree_bytes
from tensor_galore_optax._refresh import REFRESH_METHODS, RefreshMethod
from tensor_galore_optax._sharding import optimizer_state_shardings
from tensor_galore_optax._transform import (
  CORE_BASES,
  MOMENT_POLICIES,
  RESIDUALS,
  CoreBasis,
  MomentPolicy,
  Residual,
  TensorGaLoreState,
  tensor_galore,
  tensor_galore_adamw,
)
from tensor_galore_optax._tucker import TuckerSpec

__version__ = "0.2.0"

__all__ = (
  "CORE_BASES",
  "MOMENT_POLICIES",
  "REFRESH_METHODS",
  "RESIDUALS",
  "CoreBasis",
  "FactoredRmsState",
  "MomentPolicy",
  "RefreshMethod",
  "Residual",
  "TensorGaLoreState",
  "TuckerSpec",
  "optimizer_state_bytes",
  "optimizer_state_shardings",
  "scale_by_factored_rms",
  "tensor_galore",
  "tensor_galore_adamw",
  "tree_bytes",
)
