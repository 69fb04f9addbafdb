"""A 2-D Fourier Neural Operator (FNO) in Flax NNX.

The architecture follows the reference ``FNO`` of the ``neuraloperator``
library: a grid positional embedding, a lifting MLP, ``n_layers`` Fourier
blocks and a projection MLP. Every tensor is channels-last, ``(B, H, W, C)``.

The spectral weights are single ``complex64`` parameters of shape
``(in, out, mx, my // 2 + 1)``, so that an optimizer sees them as the complex
4-D tensors they are (Tensor-GaLore projects exactly these tensors). The model
holds nothing but ``nnx.Param`` variables: ``nnx.split(model)`` returns
``(graphdef, params)``. `examples.fno.train` trains it.

This module imports only third-party packages, so it can be imported both as
``examples.fno.model`` and, from its own directory, as ``model``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Modes = tuple[int, int]


def kept_modes(modes: Sequence[int]) -> Modes:
  """The trailing shape ``(mx, my // 2 + 1)`` of the spectral weight for ``modes = (mx, my)``.

  ``modes`` uses neuraloperator's convention: each entry counts frequencies of
  both signs. Along the first axis the full FFT holds all ``mx`` of them; along
  the last axis the real FFT holds the non-negative half, ``my // 2 + 1``.
  """
  mx, my = modes
  return mx, my // 2 + 1


def clip_modes(modes: Sequence[int], resolution: Sequence[int]) -> Modes:
  """``(min(mx, H), min(my, W))``: the modes an ``(H, W)`` grid can represent."""
  (mx, my), (h, w) = modes, resolution
  return min(mx, h), min(my, w)


def _low_frequencies(a: jax.Array, n: int, axis: int) -> jax.Array:
  """Keeps the ``n`` lowest-|frequency| entries of an FFT axis, in FFT order.

  The ``n - n // 2`` non-negative frequencies sit at the start of the axis and
  the ``n // 2`` negative ones at its end. Stored spectral weights use the same
  layout, so this slices both spectra and weights.
  """
  size = a.shape[axis]
  n_neg = n // 2
  # Explicit bounds rather than ``a[-n_neg:]``, which would keep everything when n_neg == 0.
  return jnp.concatenate(
    [
      jax.lax.slice_in_dim(a, 0, n - n_neg, axis=axis),
      jax.lax.slice_in_dim(a, size - n_neg, size, axis=axis),
    ],
    axis=axis,
  )


class SpectralConv2d(nnx.Module):
  """Multiplies the low Fourier modes of a field by learned complex weights.

  The input is transformed with ``rfft2`` (``norm="forward"``); the centred
  block of ``mx`` frequencies along ``H`` and the first ``my // 2 + 1``
  real-FFT frequencies along ``W`` are mixed across channels, all other modes
  are zeroed, and the result is transformed back. On a grid too coarse for the
  stored modes, only the modes the grid supports are used, as in
  neuraloperator.

  Attributes:
    weight: ``complex64`` parameter of shape ``(in, out, mx, my // 2 + 1)``;
      along axis 2 the non-negative frequencies come first, then the negative
      ones, as in an FFT.
  """

  def __init__(self, in_channels: int, out_channels: int, modes: Sequence[int], *, rngs: nnx.Rngs):
    """Initialises the layer.

    Args:
      in_channels: Number of input channels.
      out_channels: Number of output channels.
      modes: ``(mx, my)`` in neuraloperator's convention (see `kept_modes`).
      rngs: Random number generators; the ``params`` stream is used.
    """
    shape = (in_channels, out_channels, *kept_modes(modes))
    # Glorot-like scale, neuraloperator's default: with norm="forward" the low modes of a
    # smooth unit-variance field carry O(1) energy, so the output has O(1) variance. A
    # complex standard normal has E|z|^2 = 1.
    std = math.sqrt(2.0 / (in_channels + out_channels))
    self.weight = nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.complex64))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps a real ``(B, H, W, in_channels)`` field to ``(B, H, W, out_channels)``."""
    h, w = x.shape[1:3]
    # The FFTs run in float32 / complex64 whatever the activations' dtype.
    x = x.astype(jnp.float32)
    weight = self.weight[...]
    mx = min(weight.shape[2], h)
    my = min(weight.shape[3], w // 2 + 1)
    weight = _low_frequencies(weight[..., :my], mx, axis=2)

    # XLA's FFT acts on the trailing axes, so work channels-first.
    x_ft = jnp.fft.rfft2(jnp.moveaxis(x, -1, 1), norm="forward")
    x_ft = _low_frequencies(x_ft[..., :my], mx, axis=2)
    y_ft = jnp.einsum("bixy,ioxy->boxy", x_ft, weight)

    n_pos = mx - mx // 2
    out_ft = jnp.zeros((*y_ft.shape[:2], h, w // 2 + 1), y_ft.dtype)
    out_ft = out_ft.at[:, :, :n_pos, :my].set(y_ft[:, :, :n_pos])
    out_ft = out_ft.at[:, :, h - mx // 2 :, :my].set(y_ft[:, :, n_pos:])
    y = jnp.fft.irfft2(out_ft, s=(h, w), norm="forward")
    return jnp.moveaxis(y, 1, -1)


class ChannelMLP(nnx.Module):
  """Two pointwise linear layers with a GELU between them."""

  def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_channels, hidden_channels, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_channels, out_channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(..., in_channels)`` to ``(..., out_channels)``."""
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class FNOBlock(nnx.Module):
  """One Fourier layer with neuraloperator's post-activation ordering.

  With ``a`` the GELU (skipped in the last block) and ``x`` the block input::

    z = a(spectral(x) + skip(x))
    out = a(channel_mlp(z) + gate * x)

  The soft-gating skip is taken from the block input, which gives every block
  an identity path around both sub-layers.
  """

  def __init__(self, width: int, modes: Sequence[int], *, activate_output: bool, rngs: nnx.Rngs):
    """Initialises the block.

    Args:
      width: Number of channels in and out.
      modes: ``(mx, my)`` for the spectral convolution.
      activate_output: Whether to apply the GELUs; ``False`` for the last
        block, whose output goes straight to the projection.
      rngs: Random number generators; the ``params`` stream is used.
    """
    self.spectral = SpectralConv2d(width, width, modes, rngs=rngs)
    self.skip = nnx.Linear(width, width, use_bias=False, rngs=rngs)
    # neuraloperator's channel MLP has an expansion ratio of 0.5.
    self.channel_mlp = ChannelMLP(width, round(width / 2), width, rngs=rngs)
    self.gate = nnx.Param(jnp.ones((width,), jnp.float32))
    self.activate_output = activate_output

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(B, H, W, width)`` to ``(B, H, W, width)``."""
    activation = jax.nn.gelu if self.activate_output else lambda v: v
    z = activation(self.spectral(x) + self.skip(x))
    return activation(self.channel_mlp(z) + self.gate[...] * x)


def grid_embedding(x: jax.Array) -> jax.Array:
  """Appends the coordinates ``linspace(0, 1, s + 1)[:-1]`` of each axis as 2 channels.

  The coordinates are those of a periodic grid on ``[0, 1)^2`` and depend only
  on the relative position, so the model can be evaluated at any resolution.

  Args:
    x: Array of shape ``(B, H, W, C)``.

  Returns:
    Array of shape ``(B, H, W, C + 2)``; channel ``C`` varies along ``H`` and
    channel ``C + 1`` along ``W``.
  """
  b, h, w, _ = x.shape
  gx = jnp.linspace(0.0, 1.0, h + 1, dtype=x.dtype)[:-1]
  gy = jnp.linspace(0.0, 1.0, w + 1, dtype=x.dtype)[:-1]
  grid = jnp.stack(jnp.meshgrid(gx, gy, indexing="ij"), axis=-1)
  return jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)


class FNO(nnx.Module):
  """A 2-D Fourier Neural Operator on channels-last fields.

  ``x -> [grid embedding] -> lifting MLP -> n_layers x FNOBlock -> projection MLP``.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    modes: Sequence[int] = (16, 16),
    width: int = 32,
    n_layers: int = 4,
    lifting_ratio: int = 2,
    projection_ratio: int = 2,
    positional_embedding: bool = True,
    rngs: nnx.Rngs,
  ):
    """Initialises the model.

    Args:
      in_channels: Channels of the input field.
      out_channels: Channels of the output field.
      modes: ``(mx, my)`` Fourier modes per block in neuraloperator's
        convention; the spectral weights have shape
        ``(width, width, mx, my // 2 + 1)``.
      width: Channels of the hidden representation.
      n_layers: Number of Fourier blocks.
      lifting_ratio: Hidden width of the lifting MLP, as a multiple of ``width``.
      projection_ratio: Hidden width of the projection MLP, as a multiple of
        ``width``.
      positional_embedding: Whether to append the 2 grid-coordinate channels
        to the input.
      rngs: Random number generators; the ``params`` stream is used.
    """
    self.positional_embedding = positional_embedding
    lifting_in = in_channels + (2 if positional_embedding else 0)
    self.lifting = ChannelMLP(lifting_in, lifting_ratio * width, width, rngs=rngs)
    self.blocks = nnx.List(
      [FNOBlock(width, modes, activate_output=i < n_layers - 1, rngs=rngs) for i in range(n_layers)]
    )
    self.projection = ChannelMLP(width, projection_ratio * width, out_channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(B, H, W, in_channels)`` to ``(B, H, W, out_channels)``."""
    if self.positional_embedding:
      x = grid_embedding(x)
    x = self.lifting(x)
    for block in self.blocks:
      x = block(x)
    return self.projection(x)


@dataclasses.dataclass(frozen=True)
class FNOConfig:
  """Hyper-parameters of an `FNO`; see `FNO.__init__` for their meaning."""

  modes: Modes = (16, 16)
  width: int = 32
  n_layers: int = 4
  lifting_ratio: int = 2
  projection_ratio: int = 2
  positional_embedding: bool = True

  def make(
    self,
    in_channels: int,
    out_channels: int,
    *,
    resolution: Sequence[int] | None = None,
    rngs: nnx.Rngs,
    **kwargs,
  ) -> FNO:
    """Builds the model, its modes clipped to ``resolution`` ``(H, W)`` if given.

    ``kwargs`` go to the model's class: ``cls`` (default `FNO`) and its other
    arguments.
    """
    modes = self.modes if resolution is None else clip_modes(self.modes, resolution)
    cls = kwargs.pop("cls", FNO)
    fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "modes"}
    return cls(in_channels, out_channels, modes=modes, rngs=rngs, **fields, **kwargs)


PRESETS: dict[str, FNOConfig] = {
  # Trains on 64x64 Navier-Stokes (1000 samples) in minutes on a CPU: spectral weights
  # (32, 32, 16, 9).
  "small": FNOConfig(modes=(16, 16), width=32),
  # Navier-Stokes at 128x128 as in the Tensor-GaLore paper: spectral weights (64, 64, 64, 33).
  "ns128": FNOConfig(modes=(64, 64), width=64, projection_ratio=4),
  # Darcy flow: spectral weights (24, 24, 8, 5).
  "darcy": FNOConfig(modes=(8, 8), width=24),
}


def count_params(params: nnx.Module | nnx.State) -> int:
  """The number of real scalars in a model's (or state's) parameters, a complex one counting 2."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return sum(leaf.size * (2 if jnp.iscomplexobj(leaf) else 1) for leaf in jax.tree.leaves(params))
