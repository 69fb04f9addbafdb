"""The train and evaluation steps of the benchmarks: pure functions, ready to jit.

The training harness (`benchmarks.train`) and the memory and speed benchmarks
share these steps, so that what the benchmarks measure is what the harness trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import losses


class Normalizer(NamedTuple):
  """Per-channel statistics of the training split, shaped ``(C,)``."""

  x_mean: jax.Array
  x_std: jax.Array
  y_mean: jax.Array
  y_std: jax.Array

  @classmethod
  def fit(cls, x: np.ndarray, y: np.ndarray) -> Normalizer:
    """Computes the mean and standard deviation of each channel of ``x`` and ``y``."""
    axes = (0, 1, 2)
    # A constant channel (e.g. a uniform coefficient) would divide by zero.
    std = lambda a: np.maximum(a.std(axes), 1e-6 * (np.abs(a).max(axes) + 1e-30))
    return cls(x.mean(axes), std(x), y.mean(axes), std(y))


def predict(
  graphdef: nnx.GraphDef, params: nnx.State, norm: Normalizer | None, x: jax.Array
) -> jax.Array:
  """The model's prediction in the data's units: it sees and predicts normalised fields.

  Args:
    graphdef: The model structure, from ``nnx.split(model)``.
    params: The parameters.
    norm: Input and output normalisation; ``None`` for none.
    x: Inputs, ``(B, H, W, C_in)``.

  Returns:
    Predictions, ``(B, H, W, C_out)``.
  """
  if norm is None:
    return nnx.merge(graphdef, params)(x)
  out = nnx.merge(graphdef, params)((x - norm.x_mean) / norm.x_std)
  return out * norm.y_std + norm.y_mean


@jax.custom_vjp
def conj_cotangent(x: jax.Array) -> jax.Array:
  """The identity, whose gradient is the conjugate of the incoming one.

  ``jax.grad`` of a real loss gives, for a complex parameter, the conjugate
  of the steepest-ascent direction, and optax expects the direction itself.
  Conjugating inside the backward pass, where each gradient is produced,
  rather than with ``optax.tree.conj`` on the finished gradients, lets XLA
  fuse the conjugation into the operation that writes the gradient: a
  separate pass would hold a conjugated copy of every complex gradient.
  """
  return x


conj_cotangent.defvjp(lambda x: (x, None), lambda _, g: (jnp.conj(g),))


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  norm: Normalizer | None = None,
  loss: str = "l2",
) -> Callable[[nnx.State, optax.OptState, jax.Array, jax.Array], tuple]:
  """Builds one optimisation step: forward, backward, optimizer, ``apply_updates``.

  Args:
    graphdef: The model structure, from ``nnx.split(model)``.
    optimizer: Any optax optimizer.
    norm: Input and output normalisation (see `Normalizer`); ``None`` for
      none.
    loss: A key of `losses.LOSSES`: the relative loss on the prediction in
      the data's units, averaged over the batch.

  Returns:
    ``train_step(params, opt_state, x, y) -> (params, opt_state, loss)``, to
    jit with the shardings of the run.
  """
  loss_fn = losses.LOSSES[loss]

  def loss_of(params, x, y):
    # For complex parameters (the spectral weights), jax.grad of a real loss
    # is the conjugate of the steepest-ascent direction: conjugate it so that
    # the optimizer descends.
    params = jax.tree.map(lambda p: conj_cotangent(p) if jnp.iscomplexobj(p) else p, params)
    return loss_fn(predict(graphdef, params, norm, x), y)

  def train_step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(loss_of)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, norm: Normalizer | None = None) -> Callable:
  """Builds ``eval_step(params, x, y) -> per-sample relative L2 errors``."""
  return lambda params, x, y: losses.per_sample_relative_lp(predict(graphdef, params, norm, x), y)
