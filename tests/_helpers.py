"""Helpers shared by the tests: random tensors, Tucker tensors with a spectral gap, usage errors."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensor_galore_optax import _tucker


def normal(key, shape, dtype=jnp.complex64) -> jax.Array:
  """Standard normal entries; complex ones have independent real and imaginary parts."""
  real, imag = jax.random.normal(key, (2, *shape))
  if jnp.issubdtype(dtype, jnp.complexfloating):
    return (real + 1j * imag).astype(dtype)
  return real.astype(dtype)


def orthonormal(key, size: int, rank: int, dtype=jnp.complex64) -> jax.Array:
  """A random ``(size, rank)`` matrix with orthonormal columns."""
  return jnp.linalg.qr(normal(key, (size, rank), dtype))[0]


def tucker_tensor(
  key, shape: Sequence[int], ranks: Sequence[int], dtype=jnp.complex64, noise: float = 1e-3
) -> jax.Array:
  """A tensor of multilinear rank ``ranks`` plus ``noise`` times a normal tensor.

  The core's entries are standard normal, so its singular values are of order
  one and the gap to the noise is about ``1 / noise``: a projection cut at
  ``ranks`` is well conditioned, as real gradients' are.
  """
  keys = jax.random.split(key, len(shape) + 2)
  t = normal(keys[0], ranks, dtype)
  for n, (i, r) in enumerate(zip(shape, ranks)):
    t = _tucker.mode_dot(t, orthonormal(keys[n + 1], i, r, dtype).T, n)
  return (t + noise * normal(keys[-1], shape, dtype)).astype(dtype)


def hosvd_by_svd(tensor, ranks: Sequence[int], modes: Sequence[int]) -> tuple[np.ndarray, ...]:
  """The reference factors: each mode's leading left singular vectors, by NumPy in float64."""
  t = np.asarray(tensor).astype(np.complex128)
  factors = []
  for n, r in zip(modes, ranks):
    unfolded = np.moveaxis(t, n, 0).reshape(t.shape[n], -1)
    factors.append(np.linalg.svd(unfolded, full_matrices=True)[0][:, :r])
  return tuple(factors)


def projector(u) -> np.ndarray:
  """The orthogonal projector on the span of ``u``'s columns."""
  u = np.asarray(u)
  return u @ u.conj().T


def raises_naming(error: type[Exception], *words: str):
  """``pytest.raises`` whose message must contain every one of ``words``, literally."""
  return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))
