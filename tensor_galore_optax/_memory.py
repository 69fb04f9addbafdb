"""Memory accounting: bytes held by optimizer states and parameter trees."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax


def tree_bytes(tree: Any) -> int:
  """Total bytes of the array leaves of ``tree`` (arrays or shape structs).

  Examples:
    >>> import jax.numpy as jnp
    >>> tree_bytes({'w': jnp.zeros((4, 4), jnp.complex64), 'b': jnp.zeros(4)})
    144
  """
  return sum(
    int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    for leaf in jax.tree.leaves(tree)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
  )


def optimizer_state_bytes(optimizer: optax.GradientTransformation, params: Any) -> int:
  """Bytes of ``optimizer.init(params)``, computed from shapes, allocating nothing.

  Args:
    optimizer: Any optax transformation.
    params: The parameters (arrays or ``jax.ShapeDtypeStruct`` leaves).

  Returns:
    The summed bytes of every array in the optimizer state.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.zeros((64, 64, 16, 9), jnp.complex64)}
    >>> optimizer_state_bytes(optax.adam(1e-3), params)
    9437188
  """
  return tree_bytes(jax.eval_shape(optimizer.init, params))
