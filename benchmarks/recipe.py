"""The FNO's memory recipe: rematerialisation, scanned blocks, chunked pointwise layers, bfloat16.

`RecipeFNO` is the example's `examples.fno.model.FNO` with four settings that
trade compute for memory without changing the function it computes (a seed
gives the same initial parameters):

* ``remat`` recomputes the activations of each block, and of the lifting and
  projection MLPs, in the backward pass instead of keeping them;
* ``scan_layers`` stores the blocks' parameters stacked on a leading layer axis
  (``blocks.spectral.weight`` is ``(n_layers, in, out, mx, my)``) and runs them
  with one ``nnx.scan``: the backward pass keeps one block's activations at a
  time, and XLA compiles one block, not ``n_layers``;
* ``pointwise_chunk`` runs the lifting and projection MLPs (the widest
  activations) on that many samples at a time; with ``remat``, their backward
  pass then holds one chunk's activations;
* ``dtype`` runs the pointwise layers and GELUs in a lower precision such as
  ``bfloat16``; the FFTs and spectral products stay in float32 / complex64 and
  the parameters in float32.

The memory benchmark (`benchmarks.memory`) compiles the train step with each
combination in `benchmarks.common.RECIPES`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from examples.fno import model

# What a rematerialised segment keeps from its forward pass (`jax.checkpoint_policies`);
# everything else is recomputed in the backward pass.
REMAT_POLICIES = {
  # Only the segment's inputs: the least memory, one more forward pass.
  "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
  # Also the outputs of matrix products without batch dimensions (the pointwise layers).
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  # Everything: the same memory as no remat (a baseline).
  "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def _block(block: model.FNOBlock, x: jax.Array, active: bool | jax.Array) -> jax.Array:
  """`model.FNOBlock` with its GELUs switched by ``active``, traced under a scan.

  The output keeps the input's dtype (the float32 spectral branch would promote
  a bfloat16 stream), as a scan's carry must.
  """
  if isinstance(active, bool):
    activation = jax.nn.gelu if active else lambda v: v
  else:
    activation = lambda v: jnp.where(active, jax.nn.gelu(v), v)
  z = activation(block.spectral(x) + block.skip(x))
  return activation(block.channel_mlp(z) + block.gate[...] * x).astype(x.dtype)


class RecipeFNO(model.FNO):
  """`examples.fno.model.FNO` with the memory recipe; see the module docstring."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    remat: bool = False,
    remat_policy: str = "nothing_saveable",
    scan_layers: bool = False,
    pointwise_chunk: int | None = None,
    dtype: jnp.dtype | None = None,
    **kwargs,
  ):
    """Initialises the model.

    Args:
      in_channels: Channels of the input field.
      out_channels: Channels of the output field.
      remat: Whether to rematerialise each block, the lifting and the projection.
      remat_policy: A key of `REMAT_POLICIES`: what a rematerialised segment keeps.
      scan_layers: Whether to stack the blocks and run them with ``nnx.scan``.
      pointwise_chunk: Samples per chunk of the lifting and projection MLPs.
      dtype: The computation dtype of the pointwise layers; ``None`` for float32.
      **kwargs: The arguments of `examples.fno.model.FNO`.

    Raises:
      ValueError: For an unknown ``remat_policy``.
    """
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"unknown remat_policy {remat_policy!r}; choose from {tuple(REMAT_POLICIES)}"
      )
    # The blocks are built one by one, as the plain model's, then stacked: a seed gives the
    # same parameters in both layouts.
    super().__init__(in_channels, out_channels, **kwargs)
    self.remat, self.remat_policy = remat, remat_policy
    self.scan_layers, self.pointwise_chunk = scan_layers, pointwise_chunk
    self.n_layers = len(self.blocks)
    if dtype is not None:
      for _, module in nnx.iter_modules(self):
        if isinstance(module, nnx.Linear):
          module.dtype = dtype
    if scan_layers:
      blocks = list(self.blocks)
      states = [nnx.state(block) for block in blocks]
      stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
      self.blocks = nnx.merge(nnx.graphdef(blocks[0]), stacked)

  def _checkpointed(self, fn, lift=nnx.remat):
    """``fn`` rematerialised with the model's policy, or ``fn`` itself without remat."""
    return lift(fn, policy=REMAT_POLICIES[self.remat_policy]) if self.remat else fn

  def _pointwise(self, mlp: model.ChannelMLP, x: jax.Array) -> jax.Array:
    """``mlp(x)``, rematerialised with the model, over ``pointwise_chunk`` samples at a time."""
    # A pure function of the MLP's state, which `jax.lax.map` can close over.
    graphdef, state = nnx.split(mlp)
    call = self._checkpointed(lambda state, x: nnx.merge(graphdef, state)(x), jax.checkpoint)
    if self.pointwise_chunk is None:
      return call(state, x)
    # The MLP acts on each pixel alone, so any split of the batch gives the same result.
    return jax.lax.map(lambda xs: call(state, xs), x, batch_size=self.pointwise_chunk)

  def _run_blocks(self, x: jax.Array) -> jax.Array:
    if not self.scan_layers:
      call = self._checkpointed(lambda block, x: _block(block, x, block.activate_output))
      for block in self.blocks:
        x = call(block, x)
      return x
    call = self._checkpointed(_block)
    # Every block but the last applies its GELUs.
    activate = jnp.arange(self.n_layers) < self.n_layers - 1
    scan = nnx.scan(call, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)
    return scan(self.blocks, x, activate)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``(B, H, W, in_channels)`` to float32 ``(B, H, W, out_channels)``."""
    if self.positional_embedding:
      x = model.grid_embedding(x)
    x = self._pointwise(self.lifting, x)
    x = self._run_blocks(x)
    return self._pointwise(self.projection, x).astype(jnp.float32)
