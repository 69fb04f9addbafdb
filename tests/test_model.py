"""Tests of the FNO of the example, `examples.fno.model`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import jit_call, numpy_normal, rbg_rngs
from flax import nnx

from examples.fno import model

_rngs = rbg_rngs


_normal = numpy_normal


_call = jit_call


def _tiny_fno(**kwargs):
  config = dict(modes=(6, 6), width=8, n_layers=2)
  config.update(kwargs)
  return model.FNO(2, 3, rngs=_rngs(0), **config)


def _spectral_conv_reference(x, weight):
  """Spectral convolution written frequency by frequency with numpy.

  Frequency ``kx`` along H is stored in the weight at index ``kx`` if
  ``kx >= 0`` and at ``mx + kx`` otherwise. With ``m = min(mx, H)``, the
  frequencies ``-(m // 2), ..., m - m // 2 - 1`` are kept along H and the
  first ``min(my, W // 2 + 1)`` real-FFT frequencies along W.
  """
  _, h, w, _ = x.shape
  mx, my = weight.shape[2:]
  m = min(mx, h)
  x_ft = np.fft.rfft2(x, axes=(1, 2), norm="forward")
  out_ft = np.zeros(x_ft.shape[:3] + (weight.shape[1],), np.complex128)
  for kx in range(-(m // 2), m - m // 2):
    for ky in range(min(my, w // 2 + 1)):
      w_k = weight[:, :, kx if kx >= 0 else mx + kx, ky]
      out_ft[:, kx % h, ky] = x_ft[:, kx % h, ky] @ w_k
  return np.fft.irfft2(out_ft, s=(h, w), axes=(1, 2), norm="forward")


@pytest.mark.parametrize("resolution", [(16, 16), (24, 20), (13, 9)])
def test_fno_output_shape(resolution):
  x = jnp.ones((2, *resolution, 2))
  y = _call(_tiny_fno(), x)
  assert y.shape == (2, *resolution, 3)
  assert y.dtype == jnp.float32


def test_spectral_weight_is_one_complex_param():
  fno = nnx.eval_shape(
    lambda: model.FNO(1, 1, modes=(16, 16), width=8, n_layers=2, rngs=nnx.Rngs(0))
  )
  spectral = fno.blocks[0].spectral
  assert isinstance(spectral.weight, nnx.Param)
  assert spectral.weight.dtype == jnp.complex64
  assert spectral.weight.shape == (8, 8, 16, 9)


@pytest.mark.parametrize(
  "name, weight_shape, num_params",
  [
    ("small", (32, 32, 16, 9), 1_192_673),
    ("ns128", (64, 64, 64, 33), 69_265_089),
    ("darcy", (24, 24, 8, 5), 191_785),
  ],
)
def test_presets(name, weight_shape, num_params):
  # Abstract initialisation keeps the 69M-parameter ns128 model cheap.
  fno = nnx.eval_shape(lambda: model.PRESETS[name].make(1, 1, rngs=nnx.Rngs(0)))
  for block in fno.blocks:
    assert block.spectral.weight.shape == weight_shape
    assert block.spectral.weight.dtype == jnp.complex64
  assert model.count_params(fno) == num_params


def test_clip_modes():
  assert model.clip_modes((16, 16), (64, 64)) == (16, 16)
  assert model.clip_modes((64, 64), (32, 48)) == (32, 48)
  # An odd grid of 63 keeps 63 // 2 + 1 = 32 real-FFT frequencies.
  assert model.kept_modes(model.clip_modes((64, 64), (63, 63))) == (63, 32)
  fno = nnx.eval_shape(
    lambda: model.PRESETS["ns128"].make(1, 1, resolution=(32, 32), rngs=nnx.Rngs(0))
  )
  assert fno.blocks[0].spectral.weight.shape == (64, 64, 32, 17)


@pytest.mark.parametrize(
  "modes, resolution",
  [
    ((6, 6), (12, 10)),  # Even mode counts.
    ((5, 7), (12, 11)),  # Odd mode counts.
    ((1, 2), (8, 8)),  # No negative frequencies along H.
    ((9, 12), (6, 7)),  # Grid coarser than the weight: modes are clipped.
  ],
)
def test_spectral_conv_matches_numpy_reference(modes, resolution):
  conv = model.SpectralConv2d(3, 4, modes, rngs=_rngs(1))
  x = _normal(0, (2, *resolution, 3))
  expected = _spectral_conv_reference(
    np.asarray(x, np.float64), np.asarray(conv.weight[...], np.complex128)
  )
  # float32 FFTs of log2(n) ~ 4 stages and a channel contraction against a float64 reference:
  # a few eps32 (1.2e-7) times log n and the channel count, relative to entries of order one:
  # ~1e-5; rtol 1e-4 / atol 1e-5 leave a factor of about ten.
  np.testing.assert_allclose(_call(conv, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("resolution", [(8, 6), (7, 5)])
def test_spectral_conv_with_all_modes_and_identity_weight_is_identity(resolution):
  channels = 3
  conv = model.SpectralConv2d(channels, channels, resolution, rngs=_rngs(0))
  identity = jnp.eye(channels, dtype=jnp.complex64)[:, :, None, None]
  conv.weight[...] = jnp.broadcast_to(identity, conv.weight.shape)
  x = _normal(0, (2, *resolution, channels))
  # A float32 FFT and its inverse: about eps32 * log2(n) * |x|, 1e-6 for |x| <= 4; 1e-5 bounds it.
  np.testing.assert_allclose(_call(conv, x), x, atol=1e-5)


def test_spectral_conv_init_scale():
  conv = model.SpectralConv2d(16, 16, (8, 8), rngs=_rngs(0))
  weight = conv.weight[...]
  # 10240 samples: both estimates have a relative spread of 1-2%.
  np.testing.assert_allclose(jnp.mean(jnp.abs(weight) ** 2), 2 / 32, rtol=0.05)
  np.testing.assert_allclose(jnp.var(weight.real), jnp.var(weight.imag), rtol=0.1)
  # On a smooth unit-variance field the output has an O(1) scale.
  grid = jnp.linspace(0, 1, 33)[:-1]
  u, v = jnp.meshgrid(grid, grid, indexing="ij")
  field = jnp.sin(2 * jnp.pi * u) + jnp.cos(2 * jnp.pi * (u + 2 * v))
  mix = _normal(1, (16,))
  x = (field[None, :, :, None] * mix) / jnp.std(field[..., None] * mix)
  assert 0.3 < jnp.std(_call(conv, x)) < 3.0


@pytest.mark.parametrize("positional_embedding, tolerance", [(False, 1e-4), (True, 3e-2)])
def test_discretisation_invariance(positional_embedding, tolerance):
  """Outputs on 32^2 and 64^2 grids agree on the shared points.

  The modes stay below both Nyquist limits and all other layers act
  pointwise, so only aliasing of the harmonics created by the pointwise
  layers separates the two grids. For smooth fields these are tiny; the grid
  coordinates, however, jump from 1 to 0 across the periodic boundary, and
  the aliasing of that jump decays only like 1 / resolution.
  """
  fno = _tiny_fno(modes=(8, 8), width=16, n_layers=3, positional_embedding=positional_embedding)

  def field(n):
    grid = jnp.linspace(0, 1, n + 1)[:-1]
    u, v = jnp.meshgrid(grid, grid, indexing="ij")
    a = jnp.sin(2 * jnp.pi * u) + 0.5 * jnp.cos(2 * jnp.pi * (u + 2 * v))
    b = jnp.cos(2 * jnp.pi * v) * jnp.sin(2 * jnp.pi * 2 * u)
    return jnp.stack([a, b], axis=-1)[None]

  coarse = _call(fno, field(32))
  fine = _call(fno, field(64))[:, ::2, ::2]
  rel_diff = jnp.linalg.norm(fine - coarse) / jnp.linalg.norm(coarse)
  assert rel_diff < tolerance


def _loss_and_grads(fno, x, y):
  graphdef, params = nnx.split(fno)

  @jax.jit
  def loss_and_grads(params):
    def loss(params):
      pred = nnx.merge(graphdef, params)(x)
      return jnp.mean(jnp.sum((pred - y) ** 2, axis=(1, 2, 3)) / jnp.sum(y**2, axis=(1, 2, 3)))

    return jax.value_and_grad(loss)(params)

  return loss_and_grads(params)


def test_complex_weight_gradient():
  fno = _tiny_fno()
  x = _normal(0, (2, 16, 16, 2))
  y = _normal(1, (2, 16, 16, 3))
  loss, grads = _loss_and_grads(fno, x, y)
  grad = grads["blocks"][0]["spectral"]["weight"][...]
  assert grad.dtype == jnp.complex64
  assert jnp.all(jnp.isfinite(grad))
  assert jnp.any(grad.imag != 0)

  # JAX returns dL/dRe - i dL/dIm; its conjugate is the ascent direction.
  fno.blocks[0].spectral.weight[...] -= 1e-2 * jnp.conj(grad)
  new_loss, _ = _loss_and_grads(fno, x, y)
  assert new_loss < loss
