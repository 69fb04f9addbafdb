"""A 2-D Fourier Neural Operator (FNO) in Flax NNX.

The architecture follows the reference ``FNO`` of the ``neuraloperator``
library: a grid positional embedding, a lifting MLP, ``n_layers`` Fourier
blocks and a projection MLP. Every tensor is channels-last, ``(B, H, W, C)``.

The spectral weights are stored as single ``complex64`` parameters of shape
``(in, out, mx, my // 2 + 1)`` so that an optimizer sees them as the complex
4-D tensors they are (Tensor-GaLore projects exactly these tensors).

Training with plain optax uses the functional split of the module::

  model = PRESETS["small"].make(1, 1, resolution=(64, 64), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  optimizer = optax.adamw(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(params):
      return losses.relative_lp(apply(graphdef, params, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    # For complex parameters jax.grad returns the conjugate of the ascent
    # direction; conjugate it back before handing it to the optimizer.
    grads = optax.tree.conj(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

The model holds nothing but ``nnx.Param`` variables, so ``nnx.split(model)``
returns exactly ``(graphdef, params)``.

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
  """Returns the number of Fourier coefficients kept along each FFT axis.

  ``modes`` uses neuraloperator's convention: each entry counts frequencies of
  both signs. Along the first axis the full FFT is used, so all ``mx``
  frequencies are stored; along the last axis the real FFT only holds the
  non-negative half, so ``my`` frequencies of both signs correspond to
  ``my // 2 + 1`` coefficients.

  Args:
    modes: ``(mx, my)`` as passed to the model.

  Returns:
    ``(mx, my // 2 + 1)``, the trailing shape of the spectral weight.
  """
  mx, my = modes
  return mx, my // 2 + 1


def clip_modes(modes: Sequence[int], resolution: Sequence[int]) -> Modes:
  """Clips ``modes`` to what an ``(H, W)`` grid can represent.

  Args:
    modes: ``(mx, my)`` in neuraloperator's convention (see `kept_modes`).
    resolution: The grid size ``(H, W)``.

  Returns:
    ``(min(mx, H), min(my, W))``, which guarantees ``mx <= H`` and
    ``my // 2 + 1 <= W // 2 + 1``.
  """
  (mx, my), (h, w) = modes, resolution
  return min(mx, h), min(my, w)


def _low_frequencies(a: jax.Array, n: int, axis: int) -> jax.Array:
  """Keeps the ``n`` lowest-|frequency| entries of an FFT axis.

  The ``n - n // 2`` non-negative frequencies sit at the start of the axis and
  the ``n // 2`` negative ones at its end; both blocks are returned in FFT
  order. Stored spectral weights use the same layout, so this slices both
  spectra and weights.

  Args:
    a: The array to slice.
    n: How many frequencies to keep, at most ``a.shape[axis]``.
    axis: An axis in FFT order.

  Returns:
    ``a`` with ``axis`` reduced to length ``n``.
  """
  size = a.shape[axis]
  n_neg = n // 2
  # Explicit bounds rather than ``a[-n_neg:]``, which would keep everything
  # when ``n_neg == 0``.
  return jnp.concatenate(
    [
      jax.lax.slice_in_dim(a, 0, n - n_neg, axis=axis),
      jax.lax.slice_in_dim(a, size - n_neg, size, axis=axis),
    ],
    axis=axis,
  )


class SpectralConv2d(nnx.Module):
  """Multiplies the low Fourier modes of a field by learned complex weights.

  The input is transformed with ``rfft2`` (``norm="forward"``), the centred
  block of ``mx`` frequencies along ``H`` (``mx // 2`` negative,
  ``mx - mx // 2`` non-negative) and the first ``my // 2 + 1`` real-FFT
  frequencies along ``W`` are mixed across channels, all other modes are
  zeroed, and the result is transformed back to the input grid.

  On a grid too coarse for the stored modes, only the modes the grid supports
  are used (the weight is sliced with the same centred layout), as in
  neuraloperator.

  Attributes:
    weight: ``complex64`` parameter of shape ``(in, out, mx, my // 2 + 1)``;
      along axis 2 the non-negative frequencies come first, then the negative
      ones, as in an FFT.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    modes: Sequence[int],
    *,
    rngs: nnx.Rngs,
  ):
    """Initialises the layer.

    Args:
      in_channels: Number of input channels.
      out_channels: Number of output channels.
      modes: ``(mx, my)`` in neuraloperator's convention (see `kept_modes`).
      rngs: Random number generators; the ``params`` stream is used.
    """
    shape = (in_channels, out_channels, *kept_modes(modes))
    # Glorot-like scale, neuraloperator's default: with norm="forward" the
    # low-mode coefficients of a smooth unit-variance field carry O(1) energy,
    # so the output has O(1) variance. (White noise spreads its energy over
    # all H * W modes and only the kept fraction passes.) A complex standard
    # normal has E|z|^2 = 1, split evenly between real and imaginary parts.
    std = math.sqrt(2.0 / (in_channels + out_channels))
    self.weight = nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.complex64))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the spectral convolution.

    Args:
      x: Real array of shape ``(B, H, W, in_channels)``.

    Returns:
      Real array of shape ``(B, H, W, out_channels)``.
    """
    with jax.named_scope("spectral"):
      return self._apply(x)

  def _apply(self, x: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    # FFTs run in float32 / complex64 whatever the activations' dtype.
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

  def __init__(
    self,
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    *,
    dtype: jnp.dtype | None = None,
    rngs: nnx.Rngs,
  ):
    """Initialises the layers.

    Args:
      in_channels: Number of input channels.
      hidden_channels: Width of the hidden layer.
      out_channels: Number of output channels.
      dtype: The dtype the layers compute in (their parameters stay
        float32); ``None`` for the inputs' dtype.
      rngs: Random number generators; the ``params`` stream is used.
    """
    self.fc1 = nnx.Linear(in_channels, hidden_channels, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_channels, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(..., in_channels)`` to ``(..., out_channels)``."""
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class FNOBlock(nnx.Module):
  """One Fourier layer with neuraloperator's post-activation ordering.

  With ``a`` the GELU (skipped in the last block) and ``x`` the block input::

    z = a(spectral(x) + skip(x))
    out = a(channel_mlp(z) + gate * x)

  As in neuraloperator, the soft-gating skip is taken from the block input,
  which gives every block an identity path around both sub-layers.
  """

  def __init__(
    self,
    width: int,
    modes: Sequence[int],
    *,
    activate_output: bool,
    dtype: jnp.dtype | None = None,
    rngs: nnx.Rngs,
  ):
    """Initialises the block.

    Args:
      width: Number of channels in and out.
      modes: ``(mx, my)`` for the spectral convolution.
      activate_output: Whether to apply the GELUs; ``False`` for the last
        block, whose output goes straight to the projection.
      dtype: The dtype of the pointwise layers' computation (see
        `ChannelMLP`); the spectral convolution always runs in float32.
      rngs: Random number generators; the ``params`` stream is used.
    """
    self.spectral = SpectralConv2d(width, width, modes, rngs=rngs)
    self.skip = nnx.Linear(width, width, use_bias=False, dtype=dtype, rngs=rngs)
    # neuraloperator's channel MLP has an expansion ratio of 0.5.
    self.channel_mlp = ChannelMLP(width, round(width / 2), width, dtype=dtype, rngs=rngs)
    self.gate = nnx.Param(jnp.ones((width,), jnp.float32))
    self.activate_output = activate_output

  def __call__(self, x: jax.Array, activate: bool | jax.Array | None = None) -> jax.Array:
    """Maps ``(B, H, W, width)`` to ``(B, H, W, width)``.

    Args:
      x: The block input.
      activate: Overrides ``activate_output``; a traced boolean where the
        blocks run under a scan, in which only the last one skips the GELUs.
    """
    active = self.activate_output if activate is None else activate

    def activation(v):
      if isinstance(active, bool):
        return jax.nn.gelu(v) if active else v
      return jnp.where(active, jax.nn.gelu(v), v)

    z = activation(self.spectral(x) + self.skip(x))
    # The output keeps the input's dtype (the float32 spectral branch would
    # promote a bfloat16 stream), as a scan's carry must.
    return activation(self.channel_mlp(z) + self.gate[...] * x).astype(x.dtype)


# Rematerialisation policies by name (`jax.checkpoint_policies`): what a
# rematerialised segment keeps from its forward pass; everything else is
# recomputed in the backward pass.
REMAT_POLICIES = {
  # Only the segment's inputs: the least memory, one more forward pass.
  "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
  # Also the outputs of matrix products without batch dimensions (the
  # pointwise layers); the GELUs and FFTs are recomputed.
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  # Everything: the same memory as no remat (a baseline for the benchmarks).
  "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def grid_embedding(x: jax.Array) -> jax.Array:
  """Appends the coordinates of a regular grid on ``[0, 1)^2`` as 2 channels.

  The coordinates are ``linspace(0, 1, s + 1)[:-1]`` per axis, i.e. those of
  a periodic grid, and depend only on the relative position, so the same
  model can be evaluated at any resolution.

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


def _stack(blocks: Sequence[FNOBlock]) -> FNOBlock:
  """One `FNOBlock` whose every parameter stacks those of ``blocks`` on a leading axis."""
  states = [nnx.state(block) for block in blocks]
  return nnx.merge(nnx.graphdef(blocks[0]), jax.tree.map(lambda *a: jnp.stack(a), *states))


class FNO(nnx.Module):
  """A 2-D Fourier Neural Operator on channels-last fields.

  ``x -> [grid embedding] -> lifting MLP -> n_layers x FNOBlock ->
  projection MLP``.

  Three settings trade compute for memory without changing the function the
  model computes (the initial parameters are the same for a given seed):

  * ``remat`` recomputes the activations of each block, and of the lifting
    and projection MLPs, in the backward pass instead of keeping them;
  * ``scan_layers`` stores the blocks' parameters stacked, with a leading
    layer axis (``blocks.spectral.weight`` is ``(n_layers, in, out, mx,
    my)``), and runs them with one ``nnx.scan``: the backward pass keeps one
    block's activations at a time, and XLA compiles one block, not
    ``n_layers``;
  * ``dtype`` runs the pointwise layers (lifting, skips, channel MLPs,
    projection) and GELUs in a lower precision such as ``bfloat16``; the FFTs
    and spectral products stay in float32 / complex64 and the parameters in
    float32.
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
    remat: bool = False,
    remat_policy: str = "nothing_saveable",
    scan_layers: bool = False,
    dtype: jnp.dtype | None = None,
    pointwise_chunk: int | None = None,
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
      lifting_ratio: Hidden width of the lifting MLP, as a multiple of
        ``width``.
      projection_ratio: Hidden width of the projection MLP, as a multiple of
        ``width``.
      positional_embedding: Whether to append the 2 grid-coordinate channels
        to the input.
      remat: Whether to rematerialise each block, the lifting and the
        projection in the backward pass, trading compute for memory.
      remat_policy: A key of `REMAT_POLICIES`: what a rematerialised segment
        keeps.
      scan_layers: Whether to stack the blocks and run them with
        ``nnx.scan``.
      dtype: The computation dtype of the pointwise layers; ``None`` for
        float32.
      pointwise_chunk: If set, the lifting and projection MLPs (the widest
        activations) run on this many samples at a time, one chunk after the
        other; with ``remat``, their backward pass then holds one chunk's
        activations rather than the whole batch's.
      rngs: Random number generators; the ``params`` stream is used.

    Raises:
      ValueError: For an unknown ``remat_policy``.
    """
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"unknown remat_policy {remat_policy!r}; choose from {tuple(REMAT_POLICIES)}"
      )
    self.positional_embedding = positional_embedding
    self.remat = remat
    self.remat_policy = remat_policy
    self.scan_layers = scan_layers
    self.dtype = dtype
    self.pointwise_chunk = pointwise_chunk
    lifting_in = in_channels + (2 if positional_embedding else 0)
    self.lifting = ChannelMLP(lifting_in, lifting_ratio * width, width, dtype=dtype, rngs=rngs)
    # The blocks are built one by one in both layouts, so that a seed gives
    # the same parameters whether or not they are stacked.
    blocks = [
      FNOBlock(width, modes, activate_output=i < n_layers - 1, dtype=dtype, rngs=rngs)
      for i in range(n_layers)
    ]
    self.n_layers = n_layers
    self.blocks = _stack(blocks) if scan_layers else nnx.List(blocks)
    self.projection = ChannelMLP(
      width, projection_ratio * width, out_channels, dtype=dtype, rngs=rngs
    )

  def _checkpointed(self, fn):
    """``fn`` rematerialised with the model's policy, or ``fn`` itself without remat."""
    if not self.remat:
      return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[self.remat_policy])

  def _pointwise(self, mlp: ChannelMLP, x: jax.Array) -> jax.Array:
    """``mlp(x)``, rematerialised with the model, over ``pointwise_chunk`` samples at a time."""
    # A pure function of the MLP's state, which `jax.lax.map` can close over.
    graphdef, state = nnx.split(mlp)
    call = lambda state, x: nnx.merge(graphdef, state)(x)
    if self.remat:
      call = jax.checkpoint(call, policy=REMAT_POLICIES[self.remat_policy])
    if self.pointwise_chunk is None:
      return call(state, x)
    # The MLP acts on each pixel alone, so any split of the batch gives the
    # same result; `lax.map` runs the chunks one after the other.
    return jax.lax.map(lambda xs: call(state, xs), x, batch_size=self.pointwise_chunk)

  def _run_blocks(self, x: jax.Array) -> jax.Array:
    """Applies the Fourier blocks in order."""
    call = self._checkpointed(lambda block, x, activate=None: block(x, activate))
    if not self.scan_layers:
      for block in self.blocks:
        x = call(block, x)
      return x
    # Every block but the last applies its GELUs.
    activate = jnp.arange(self.n_layers) < self.n_layers - 1
    scan = nnx.scan(call, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)
    return scan(self.blocks, x, activate)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(B, H, W, in_channels)`` to ``(B, H, W, out_channels)``."""
    if self.positional_embedding:
      x = grid_embedding(x)
    x = self._pointwise(self.lifting, x)
    x = self._run_blocks(x)
    x = self._pointwise(self.projection, x)
    return x.astype(jnp.float32)


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
    **recipe,
  ) -> FNO:
    """Builds the model.

    Args:
      in_channels: Channels of the input field.
      out_channels: Channels of the output field.
      resolution: If given, ``(H, W)`` of the training grid; the modes are
        clipped with `clip_modes` so no weight is allocated for frequencies
        the grid cannot represent.
      rngs: Random number generators; the ``params`` stream is used.
      **recipe: How the model trades compute for memory: ``remat``,
        ``remat_policy``, ``scan_layers`` and ``dtype`` of `FNO`.

    Returns:
      A freshly initialised `FNO`.
    """
    modes = self.modes
    if resolution is not None:
      modes = clip_modes(modes, resolution)
    return FNO(
      in_channels,
      out_channels,
      modes=modes,
      width=self.width,
      n_layers=self.n_layers,
      lifting_ratio=self.lifting_ratio,
      projection_ratio=self.projection_ratio,
      positional_embedding=self.positional_embedding,
      rngs=rngs,
      **recipe,
    )


PRESETS: dict[str, FNOConfig] = {
  # Trains on 64x64 Navier-Stokes (~1000 samples) in minutes on a CPU.
  "small": FNOConfig(modes=(16, 16), width=32),
  # Navier-Stokes at 128x128 as in the Tensor-GaLore paper: spectral
  # weights of shape (64, 64, 64, 33).
  "ns128": FNOConfig(modes=(64, 64), width=64, projection_ratio=4),
  # Darcy flow: spectral weights of shape (24, 24, 8, 5).
  "darcy": FNOConfig(modes=(8, 8), width=24),
}


def apply(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array) -> jax.Array:
  """Evaluates a split model, for use inside ``jax.jit`` / ``jax.grad``.

  Args:
    graphdef: The static structure from ``nnx.split(model)``.
    params: The parameter state from ``nnx.split(model)``.
    x: Input of shape ``(B, H, W, in_channels)``.

  Returns:
    The model output of shape ``(B, H, W, out_channels)``.
  """
  return nnx.merge(graphdef, params)(x)


def count_params(params: nnx.Module | nnx.State) -> int:
  """Counts real parameters, a complex entry counting as two.

  Args:
    params: A model or its parameter state.

  Returns:
    The number of real scalars in its ``nnx.Param`` variables.
  """
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return sum(leaf.size * (2 if jnp.iscomplexobj(leaf) else 1) for leaf in jax.tree.leaves(params))
