"""Adam for Tucker cores: `tensor_galore`'s default base optimizer.

``optax.scale_by_adam``'s arithmetic, with what the cores of complex and
low-memory training need on top:

* second moments are real (``|g|^2`` has no imaginary part) and, with
  ``second_moment="factored"``, kept as Adafactor's row and column means
  (Shazeer & Stern, 2018) for arrays with two axes of at least
  ``min_dim_size_to_factor``;
* a first moment in a real low-precision ``mu_dtype`` keeps a complex
  moment's imaginary part, stored as a trailing axis of (real, imaginary)
  pairs (``optax.scale_by_adam`` casts the complex moment to the real dtype,
  which drops it); ``mu_dtype="int8"`` stores it in blocks of int8 values
  with one scale each, rounded stochastically (`Int8FirstMoment`).

Written here, not composed from optax: ``optax.scale_by_factored_rms`` takes
its shapes from ``params``, which a base optimizer on cores never receives,
and it neither debiases like Adam nor keeps a first moment.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

SecondMoment = Literal["full", "factored"]
SECOND_MOMENTS = ("full", "factored")


class FactoredSecondMoment(NamedTuple):
  """Adafactor's estimate of one array's second moment.

  For an array whose two largest axes are ``d0 >= d1`` (the later of equal
  sizes counts as larger),
  ``v_hat = mean_d0 * mean_d1 / mean(mean_d0 over d1)``, each factor broadcast
  along the axis it lacks (a matrix's row and column means, as in Adafactor).

  Attributes:
    mean_d0: Running mean of ``|g|^2`` over axis ``d0`` (the array's shape without ``d0``).
    mean_d1: Running mean of ``|g|^2`` over axis ``d1`` (the array's shape without ``d1``).
  """

  mean_d0: jax.Array
  mean_d1: jax.Array


INT8_BLOCK = 64
"""Entries per block of an int8 first moment: 1 + 4 / 64 bytes per real entry."""


class Int8FirstMoment(NamedTuple):
  """A first moment in blocks of int8 values, one float32 scale per block.

  The moment's entries (a complex entry as its real and imaginary parts), in
  memory order, padded with zeros to whole blocks of `INT8_BLOCK`. Each block
  is stored over its largest magnitude, on a grid of 255 levels, and rounded
  to it stochastically at every step: the rounding is unbiased, so entries far
  smaller than their block's largest still move on average (rounded to the
  nearest level they would stay at zero; 8-bit optimizers, Dettmers et al.,
  2022, use a non-linear grid for the same reason).

  Attributes:
    values: ``(blocks, INT8_BLOCK)`` int8, each entry over its block's scale.
    scales: ``(blocks,)`` float32, each block's largest magnitude over 127.
  """

  values: jax.Array
  scales: jax.Array


def _is_int8(mu_dtype) -> bool:
  return mu_dtype is not None and jnp.dtype(mu_dtype) == jnp.int8


def _flat_real(x: jax.Array) -> jax.Array:
  """``x`` flat and real: a complex array as its (real, imaginary) pairs."""
  if jnp.iscomplexobj(x):
    x = jnp.stack([x.real, x.imag], axis=-1)
  return x.reshape(-1)


def _init_int8(update) -> Int8FirstMoment:
  entries = update.size * (2 if jnp.iscomplexobj(update) else 1)
  blocks = -(-entries // INT8_BLOCK)
  return Int8FirstMoment(
    jnp.zeros((blocks, INT8_BLOCK), jnp.int8), jnp.zeros((blocks,), jnp.float32)
  )


def _load_int8(stored: Int8FirstMoment, update) -> jax.Array:
  real = jnp.finfo(update.dtype).dtype
  flat = (stored.values.astype(real) * stored.scales[:, None].astype(real)).reshape(-1)
  if jnp.iscomplexobj(update):
    pairs = flat[: 2 * update.size].reshape(*update.shape, 2)
    return jax.lax.complex(pairs[..., 0], pairs[..., 1])
  return flat[: update.size].reshape(update.shape)


def _store_int8(mu, stored: Int8FirstMoment, key) -> Int8FirstMoment:
  blocks, block = stored.values.shape
  flat = _flat_real(mu).astype(jnp.float32)
  flat = jnp.pad(flat, (0, blocks * block - flat.size)).reshape(blocks, block)
  scales = jnp.max(jnp.abs(flat), axis=1) / 127
  scaled = flat / jnp.where(scales > 0, scales, 1)[:, None]
  # floor(x + u), u uniform in [0, 1): x itself on average, within one level of it.
  rounded = jnp.floor(scaled + jax.random.uniform(key, scaled.shape))
  return Int8FirstMoment(jnp.clip(rounded, -127, 127).astype(jnp.int8), scales)


def factored_axes(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
  """The two largest axes ``(d0, d1)`` of ``shape`` if both reach the size, else ``None``."""
  if len(shape) < 2:
    return None
  d1, d0 = sorted(range(len(shape)), key=lambda axis: (shape[axis], axis))[-2:]
  if shape[d1] < min_dim_size_to_factor:
    return None
  return d0, d1


def _stores_pairs(update: jax.Array, mu_dtype) -> bool:
  """Whether a complex first moment is stored as real (re, im) pairs of ``mu_dtype``."""
  return (
    mu_dtype is not None
    and jnp.iscomplexobj(update)
    and not jnp.issubdtype(mu_dtype, jnp.complexfloating)
  )


def _init_mu(update, mu_dtype):
  if _is_int8(mu_dtype):
    return _init_int8(update)
  if _stores_pairs(update, mu_dtype):
    return jnp.zeros((*update.shape, 2), mu_dtype)
  return jnp.zeros(update.shape, update.dtype if mu_dtype is None else mu_dtype)


def _load_mu(stored, update):
  if isinstance(stored, Int8FirstMoment):
    return _load_int8(stored, update)
  if stored.shape == update.shape:
    return stored  # as optax does: the stored dtype takes part in the arithmetic
  real = jnp.finfo(update.dtype).dtype
  return jax.lax.complex(stored[..., 0].astype(real), stored[..., 1].astype(real))


def _store_mu(mu, stored, key=None):
  if isinstance(stored, Int8FirstMoment):
    return _store_int8(mu, stored, key)
  if stored.shape == mu.shape:
    return mu.astype(stored.dtype)
  return jnp.stack([mu.real, mu.imag], axis=-1).astype(stored.dtype)


def _init_nu(update, second_moment, min_dim_size_to_factor):
  real = jnp.finfo(update.dtype).dtype
  axes = factored_axes(update.shape, min_dim_size_to_factor)
  if second_moment == "full" or axes is None:
    return jnp.zeros(update.shape, real)
  d0, d1 = axes
  without = lambda axis: tuple(size for a, size in enumerate(update.shape) if a != axis)
  return FactoredSecondMoment(jnp.zeros(without(d0), real), jnp.zeros(without(d1), real))


def _update_nu(update, nu, b2, min_dim_size_to_factor):
  """The running second moment and its full-shape estimate (before debiasing)."""
  if not isinstance(nu, FactoredSecondMoment):
    nu = optax.tree.update_moment_per_elem_norm(update, nu, b2, 2)
    return nu, nu
  d0, d1 = factored_axes(update.shape, min_dim_size_to_factor)
  squared = (update * jnp.conj(update)).real if jnp.iscomplexobj(update) else update**2
  mean_d0 = (1 - b2) * jnp.mean(squared, axis=d0) + b2 * nu.mean_d0
  mean_d1 = (1 - b2) * jnp.mean(squared, axis=d1) + b2 * nu.mean_d1
  # ``mean_d0`` lacks d0, so d1 sits one place earlier in it when it comes after d0.
  total = jnp.mean(mean_d0, axis=d1 - (d1 > d0), keepdims=True)
  estimate = jnp.expand_dims(mean_d0 / jnp.where(total > 0, total, 1), d0) * jnp.expand_dims(
    mean_d1, d1
  )
  return FactoredSecondMoment(mean_d0, mean_d1), estimate


def scale_by_core_adam(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  *,
  nesterov: bool = False,
  second_moment: SecondMoment = "full",
  min_dim_size_to_factor: int = 8,
) -> optax.GradientTransformation:
  r"""Adam with real, optionally factored, second moments; `tensor_galore`'s default.

  ``optax.scale_by_adam``'s update (the same arithmetic: with the defaults the
  two agree bit for bit on real arrays), needing no ``params``, with

  * second moments stored real for complex arrays (half the bytes);
  * ``second_moment="factored"``: an array whose two largest axes ``d0, d1``
    both have at least ``min_dim_size_to_factor`` entries keeps only the
    running means of \(|g|^2\) over ``d0`` and over ``d1`` (Adafactor's
    statistics) and estimates \(\hat v = r\,c / \bar r\), debiased like Adam;
    other arrays keep the full second moment. A core of shape ``(6, 24, 8, 5)``
    then holds 960 numbers of second moment instead of 5 760;
  * ``mu_dtype``: the first moment's dtype. A real dtype (``jnp.bfloat16``)
    stores a complex moment as a trailing axis of (real, imaginary) pairs, so
    complex weights keep the imaginary part of their momentum. ``"int8"``
    stores it in blocks of 64 int8 values with a float32 scale each, rounded
    stochastically (`Int8FirstMoment`): a quarter of float32's bytes.

  Args:
    b1: Decay rate of the first moment.
    b2: Decay rate of the second moment (or of its row and column means).
    eps: Added to the denominator, outside the square root.
    eps_root: Added to the denominator, inside the square root.
    mu_dtype: dtype of the first moment; ``None`` keeps the updates';
      ``"int8"`` (or ``jnp.int8``): int8 blocks with a scale each.
    nesterov: Whether to use Nesterov momentum.
    second_moment: ``"full"`` or ``"factored"``.
    min_dim_size_to_factor: With ``"factored"``, the smallest size of both
      factored axes.

  Returns:
    An `optax.GradientTransformation` whose state is an
    ``optax.ScaleByAdamState``; a factored array's ``nu`` is a
    `FactoredSecondMoment`, an int8 ``mu`` an `Int8FirstMoment`.

  References:
    Kingma & Ba, [Adam: A Method for Stochastic Optimization](
    https://arxiv.org/abs/1412.6980), 2014.

    Shazeer & Stern, [Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost](https://arxiv.org/abs/1804.04235), 2018.
  """
  if second_moment not in SECOND_MOMENTS:
    raise ValueError(f"second_moment must be one of {SECOND_MOMENTS}, got {second_moment!r}.")
  if mu_dtype is not None:
    try:
      mu_dtype = jnp.dtype(mu_dtype)
    except TypeError as e:
      raise TypeError(f"mu_dtype must be None or a dtype, got {mu_dtype!r}.") from e
    if not (jnp.issubdtype(mu_dtype, jnp.inexact) or _is_int8(mu_dtype)):
      raise TypeError(f"mu_dtype must be a floating or complex dtype, or int8, got {mu_dtype!r}.")
  # Arrays made at use, not at construction: building an optimizer must not start the XLA
  # backend. As arrays, the rates take the same arithmetic whether constants or injected.
  as_array = lambda rate: rate if isinstance(rate, jax.Array) else jnp.asarray(rate)

  def init_fn(params):
    mu = jax.tree.map(lambda p: _init_mu(p, mu_dtype), params)
    nu = jax.tree.map(lambda p: _init_nu(p, second_moment, min_dim_size_to_factor), params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    beta1, beta2 = as_array(b1), as_array(b2)
    count = optax.safe_increment(state.count)
    is_nu = lambda x: isinstance(x, FactoredSecondMoment)
    # Tree by tree, in optax.scale_by_adam's order, so that XLA sees the same computation.
    loaded = jax.tree.map(lambda g, stored: _load_mu(stored, g), updates, state.mu)
    mu = optax.tree.update_moment(updates, loaded, beta1, 1)
    nu_and_estimate = jax.tree.map(
      lambda g, nu: _update_nu(g, nu, beta2, min_dim_size_to_factor),
      updates,
      state.nu,
      is_leaf=is_nu,
    )
    nu = jax.tree.map(lambda _, pair: pair[0], updates, nu_and_estimate)
    estimate = jax.tree.map(lambda _, pair: pair[1], updates, nu_and_estimate)
    if nesterov:
      mu_hat = jax.tree.map(
        lambda m, g: beta1 * m + (1 - beta1) * g,
        optax.tree.bias_correction(mu, beta1, optax.safe_increment(count)),
        optax.tree.bias_correction(updates, beta1, count),
      )
    else:
      mu_hat = optax.tree.bias_correction(mu, beta1, count)
    nu_hat = optax.tree.bias_correction(estimate, beta2, count)
    steps = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
    if _is_int8(mu_dtype):
      # A fresh draw per step and leaf: rounding errors average out over the steps.
      leaves, treedef = jax.tree.flatten(mu)
      key = jax.random.fold_in(jax.random.key(0), count)
      keys = treedef.unflatten([jax.random.fold_in(key, n) for n in range(len(leaves))])
      mu = jax.tree.map(_store_mu, mu, state.mu, keys)
    else:
      mu = jax.tree.map(_store_mu, mu, state.mu)
    return steps, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
