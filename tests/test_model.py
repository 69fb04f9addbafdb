"""Tests for the FNO example model and its losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples.fno import losses, model


def _rngs(seed):
  # Compiling threefry for every new parameter shape dominates these small
  # tests; "rbg" keys compile several times faster.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _normal(seed, shape):
  # Drawn with numpy: eager jax.random compiles anew for every shape.
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


@nnx.jit
def _call(module, x):
  # One compilation per test instead of one per eagerly dispatched op.
  return module(x)


def _tiny_fno(remat=False, **kwargs):
  config = dict(modes=(6, 6), width=8, n_layers=2)
  config.update(kwargs)
  return model.FNO(2, 3, remat=remat, rngs=_rngs(0), **config)


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
  np.testing.assert_allclose(_call(conv, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("resolution", [(8, 6), (7, 5)])
def test_spectral_conv_with_all_modes_and_identity_weight_is_identity(resolution):
  channels = 3
  conv = model.SpectralConv2d(channels, channels, resolution, rngs=_rngs(0))
  identity = jnp.eye(channels, dtype=jnp.complex64)[:, :, None, None]
  conv.weight[...] = jnp.broadcast_to(identity, conv.weight.shape)
  x = _normal(0, (2, *resolution, channels))
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
    return jax.value_and_grad(lambda p: losses.relative_lp(model.apply(graphdef, p, x), y))(params)

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


def test_remat_matches_plain():
  x = _normal(0, (2, 16, 16, 2))
  y = _normal(1, (2, 16, 16, 3))
  plain, remat = _tiny_fno(remat=False), _tiny_fno(remat=True)

  def jaxpr(fno):
    graphdef, params = nnx.split(fno)
    return str(jax.make_jaxpr(lambda p: model.apply(graphdef, p, x))(params))

  # jax.checkpoint appears in a jaxpr as a ``remat`` primitive.
  assert "remat" in jaxpr(remat)
  assert "remat" not in jaxpr(plain)
  np.testing.assert_allclose(_call(remat, x), _call(plain, x), atol=1e-6)
  loss_plain, grads_plain = _loss_and_grads(plain, x, y)
  loss_remat, grads_remat = _loss_and_grads(remat, x, y)
  np.testing.assert_allclose(loss_remat, loss_plain, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_remat, grads_plain)


def _unstacked(grads):
  """The gradients of a scanned model (a pure dict) in the layout of the unrolled one."""
  blocks = grads.pop("blocks")
  n = jax.tree.leaves(blocks)[0].shape[0]
  grads["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(n)}
  return grads


@pytest.mark.parametrize(
  "recipe",
  [
    dict(scan_layers=True),
    dict(scan_layers=True, remat=True),
    dict(scan_layers=True, remat=True, pointwise_chunk=1),
    dict(remat=True, pointwise_chunk=1, remat_policy="dots_with_no_batch_dims_saveable"),
  ],
  ids=lambda r: "+".join(f"{k}={v}" for k, v in r.items()),
)
def test_memory_recipes_compute_the_same_function_and_gradients(recipe):
  x = _normal(0, (2, 16, 16, 2))
  y = _normal(1, (2, 16, 16, 3))
  # Three blocks, so that the scan has inner blocks (with GELUs) and a last
  # one (without).
  plain, other = _tiny_fno(n_layers=3), _tiny_fno(n_layers=3, **recipe)
  if recipe.get("scan_layers"):
    assert other.blocks.spectral.weight.shape == (3, 8, 8, 6, 4)
  np.testing.assert_allclose(_call(other, x), _call(plain, x), atol=1e-5)
  loss_plain, grads_plain = _loss_and_grads(plain, x, y)
  loss_other, grads_other = _loss_and_grads(other, x, y)
  np.testing.assert_allclose(loss_other, loss_plain, rtol=1e-5)
  grads_other = nnx.to_pure_dict(grads_other)
  if recipe.get("scan_layers"):
    grads_other = _unstacked(grads_other)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    grads_other,
    nnx.to_pure_dict(grads_plain),
  )


def test_bfloat16_pointwise_layers_keep_float32_parameters_and_output():
  x = _normal(0, (2, 16, 16, 2))
  plain, low = _tiny_fno(), _tiny_fno(dtype=jnp.bfloat16, scan_layers=True)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(low, nnx.Param))} == {
    np.dtype(np.float32),
    np.dtype(np.complex64),
  }
  out, reference = _call(low, x), _call(plain, x)
  assert out.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: a relative error of a few 1e-3.
  error = np.linalg.norm(out - reference) / np.linalg.norm(reference)
  assert 1e-5 < error < 3e-2


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat_policy"):
    _tiny_fno(remat=True, remat_policy="sometimes")


def test_relative_lp():
  y = jnp.array([[3.0, 4.0], [1.0, 0.0]])
  pred = jnp.array([[0.0, 4.0], [1.0, 2.0]])
  # Errors (3, 2) over target norms (5, 1).
  np.testing.assert_allclose(losses.relative_lp(pred, y), (3 / 5 + 2) / 2, rtol=1e-6)
  # p = 1: errors (3, 2) over target norms (7, 1).
  np.testing.assert_allclose(losses.relative_lp(pred, y, p=1), (3 / 7 + 2) / 2, rtol=1e-6)
  # Every non-batch axis is reduced.
  np.testing.assert_allclose(
    losses.relative_lp(pred.reshape(2, 1, 2, 1), y.reshape(2, 1, 2, 1)), (3 / 5 + 2) / 2, rtol=1e-6
  )


def test_relative_h1():
  n, offset = 16, 0.5
  grid = jnp.arange(n) / n
  u, v = jnp.meshgrid(grid, grid, indexing="ij")
  y = jnp.sin(2 * jnp.pi * u) + jnp.cos(4 * jnp.pi * v)
  # A periodic central difference of sin(2 pi k x) with spacing h is
  # sin(2 pi k h) / h * cos(2 pi k x); each mode has mean square 1/2.
  norm_sq = (
    n * n / 2 * (2 + (n * math.sin(2 * math.pi / n)) ** 2 + (n * math.sin(4 * math.pi / n)) ** 2)
  )
  # A constant error has no derivative.
  expected = math.sqrt(n * n * offset**2 / norm_sq)
  y, pred = y[None, ..., None], (y + offset)[None, ..., None]
  np.testing.assert_allclose(losses.relative_h1(pred, y), expected, rtol=1e-5)
  # The loss is the batch mean; a prediction of 0 has relative error 1.
  np.testing.assert_allclose(
    losses.relative_h1(jnp.concatenate([pred, 0 * y]), jnp.concatenate([y, y])),
    (expected + 1) / 2,
    rtol=1e-5,
  )
