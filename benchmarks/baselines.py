"""Two non-spectral models of the same fields, for layers other than the FNO's.

* `ConvNet`: a plain convolutional network, channels-last, Flax's kernel layout
  ``(kh, kw, in, out)``: a 3 x 3 convolution to ``width`` channels, ``depth``
  residual blocks of two 3 x 3 convolutions ``(3, 3, width, width)`` with
  GELUs, a 1 x 1 convolution to the output channels.
* `MLP`: the whole field flattened, ``depth`` dense layers of ``width`` with
  GELUs, then back to the field: its weights are matrices
  ``(H * W * in, width)``, ``(width, width)`` and ``(width, H * W * out)``.

Both take and return ``(B, H, W, C)`` fields like `model.FNO`, and their
configurations have its ``make`` signature, so the harness (`benchmarks.train`)
trains them with ``--preset cnn`` or ``--preset mlp`` and every optimizer. They hold only
``nnx.Param`` variables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv(a: int, b: int, size: int, rngs) -> nnx.Conv:
  return nnx.Conv(a, b, (size, size), padding="SAME", rngs=rngs)


class _Residual(nnx.Module):
  """``x + conv(gelu(conv(x)))``, two 3 x 3 convolutions of ``width`` channels."""

  def __init__(self, width: int, rngs):
    self.first, self.second = _conv(width, width, 3, rngs), _conv(width, width, 3, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.second(jax.nn.gelu(self.first(x)))


class ConvNet(nnx.Module):
  """3 x 3 convolutions with residual connections; see the module docstring."""

  def __init__(self, in_channels: int, out_channels: int, *, width: int, depth: int, rngs):
    self.lift = _conv(in_channels, width, 3, rngs)
    self.blocks = nnx.List([_Residual(width, rngs) for _ in range(depth)])
    self.project = _conv(width, out_channels, 1, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.gelu(self.lift(x))
    for block in self.blocks:
      x = block(x)
    return self.project(jax.nn.gelu(x))


class MLP(nnx.Module):
  """Dense layers on the flattened field; see the module docstring."""

  def __init__(
    self, in_channels: int, out_channels: int, *, resolution, width: int, depth: int, rngs
  ):
    size = math.prod(resolution)
    self.out_shape = (*resolution, out_channels)
    sizes = [size * in_channels] + [width] * depth + [size * out_channels]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = jax.nn.gelu(layer(x))
    return self.layers[-1](x).reshape(x.shape[0], *self.out_shape)


def _no_recipe(name: str, recipe: dict) -> None:
  """Refuses the FNO's memory recipe, which these models do not implement."""
  asked = {
    k: v for k, v in recipe.items() if v not in (False, None, "nothing_saveable", jnp.float32)
  }
  if asked:
    raise ValueError(f"the {name} preset has no memory recipe; got {sorted(asked)}")


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
  """Hyper-parameters of a `ConvNet`."""

  width: int = 64
  depth: int = 2

  def make(self, in_channels, out_channels, *, resolution=None, rngs, **recipe) -> ConvNet:
    """Builds the model (the ``make`` of `model.FNOConfig`; ``resolution`` is unused)."""
    _no_recipe("cnn", recipe)
    return ConvNet(in_channels, out_channels, width=self.width, depth=self.depth, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """Hyper-parameters of an `MLP`."""

  width: int = 512
  depth: int = 2

  def make(
    self, in_channels, out_channels, *, resolution: Sequence[int] | None = None, rngs, **recipe
  ) -> MLP:
    """Builds the model (the ``make`` of `model.FNOConfig`); it needs the ``resolution``."""
    _no_recipe("mlp", recipe)
    if resolution is None:
      raise ValueError("the mlp preset needs the grid's resolution")
    return MLP(
      in_channels,
      out_channels,
      resolution=tuple(resolution),
      width=self.width,
      depth=self.depth,
      rngs=rngs,
    )


PRESETS = {"cnn": ConvNetConfig(), "mlp": MLPConfig()}
"""The presets of these models, beside the FNO's (`model.PRESETS`)."""
