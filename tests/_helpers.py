"""Helpers shared by the tests: random tensors, Tucker tensors with a spectral gap, usage errors."""

from __future__ import annotations

import functools
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


def smooth_fields(rng: np.random.Generator, n: int, size: int = 16, cutoff: int = 4) -> np.ndarray:
  """Random fields with only low Fourier modes, so that an FNO can fit maps of them."""
  spectrum = np.fft.rfft2(rng.standard_normal((n, size, size)))
  spectrum[:, cutoff:-cutoff] = 0
  spectrum[:, :, cutoff:] = 0
  return (10 * np.fft.irfft2(spectrum, s=(size, size))).astype(np.float32)


def write_tiny_npz(path, **extra) -> None:
  """32 train and 8 test samples of a shift-plus-square map on a 16 x 16 grid, as ``.npz``."""
  rng = np.random.default_rng(0)
  x = smooth_fields(rng, 40)
  y = np.roll(x, 2, axis=1) + 0.3 * x**2
  np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:], **extra)


def rbg_rngs(seed: int):
  """Flax ``Rngs`` of "rbg" keys: they compile several times faster than threefry's for the
  small models of the tests."""
  from flax import nnx

  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def numpy_normal(seed: int, shape) -> np.ndarray:
  """Standard normal float32 entries drawn with NumPy: eager jax.random compiles anew per shape."""
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


@functools.cache
def _jitted_call():
  from flax import nnx

  return nnx.jit(lambda module, x: module(x))


def jit_call(module, x):
  """``module(x)`` under ``nnx.jit``: one compilation per shape, not one per eager op."""
  return _jitted_call()(module, x)
