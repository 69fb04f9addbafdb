"""Candidate levers below a tenth of AdamW's optimizer state, composed from existing parts.

Each factory returns an optax optimizer built from `tensor_galore_optax.tensor_galore`
and optax; `benchmarks.frontier` names them in its optimizer table by the exact
call. None of them is part of the library: a lever that wins is reported as the
keyword argument of `tensor_galore_adamw` that would expose it.

* `scale_by_factored_adam`: Adam whose second moment is Adafactor's row and
  column statistics (Shazeer & Stern, 2018) wherever a leaf has two axes of at
  least ``min_dim_size_to_factor``, with an optional mask of the leaves that keep
  a first moment. Unlike `optax.scale_by_factored_rms` it takes the shapes from
  the updates, not from ``params`` (inside `tensor_galore` the base optimizer
  sees core-shaped updates and no parameters), keeps real statistics for
  complex leaves, and debiases like Adam.
* `factored_core`: `tensor_galore` with `scale_by_factored_adam` on its cores and
  on the leaves it leaves whole (lever i; with ``mu_dtype``, lever ii too).
* `adafactor_core_momentum`: Adafactor with its momentum moved into a Tucker
  core (lever iv, the composition of ``/work/shared/DESIGN.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import tensor_galore


class ScaleByFactoredAdamState(NamedTuple):
  """State of `scale_by_factored_adam`.

  Attributes:
    count: Steps taken.
    mu: First moments; a ``(0,)`` placeholder for masked-out leaves.
    v_row: Per-leaf row statistics (or the full second moment where a leaf is
      not factored).
    v_col: Per-leaf column statistics (a ``(0,)`` placeholder where not factored).
  """

  count: jax.Array
  mu: Any
  v_row: Any
  v_col: Any


def _factored_axes(shape: tuple[int, ...], min_dim: int) -> tuple[int, int] | None:
  """The two largest axes ``(d0, d1)`` if both are at least ``min_dim``, else ``None``."""
  if len(shape) < 2:
    return None
  d1, d0 = sorted(range(len(shape)), key=lambda a: (shape[a], a))[-2:]
  if shape[d0] < min_dim or shape[d1] < min_dim:
    return None
  return d0, d1


def _real_dtype(dtype) -> jnp.dtype:
  """The real dtype of ``dtype`` (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


def scale_by_factored_adam(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  *,
  min_dim_size_to_factor: int = 8,
  mu_dtype=None,
  momentum_mask: Any = None,
) -> optax.GradientTransformation:
  r"""Adam with Adafactor's factored second moment; no ``params`` needed.

  For a leaf whose two largest axes ``d0, d1`` are both at least
  ``min_dim_size_to_factor``, the second moment keeps only its means over
  ``d0`` and over ``d1`` (running, with decay ``b2``) and estimates
  \(\hat v = r\, c / \bar r\); other leaves keep the full second moment. The
  step is \(\hat m / (\sqrt{\hat v} + \epsilon)\) with Adam's bias corrections,
  \(\hat m\) the first moment, or the gradient itself where ``momentum_mask``
  is ``False``.

  Args:
    b1: Decay of the first moment.
    b2: Decay of the second-moment statistics.
    eps: Added to the root of the second moment.
    min_dim_size_to_factor: Smallest size of both factored axes.
    mu_dtype: dtype of the first moment (``None``: the update's).
    momentum_mask: A pytree of bools like the updates (or a callable
      returning one): which leaves keep a first moment; ``None`` for all.

  Returns:
    An `optax.GradientTransformation`.
  """

  def mask_of(tree):
    if momentum_mask is None:
      return jax.tree.map(lambda _: True, tree)
    return momentum_mask(tree) if callable(momentum_mask) else momentum_mask

  def init_leaf_mu(u, keep):
    dtype = u.dtype if mu_dtype is None else mu_dtype
    if (
      jnp.iscomplexobj(u)
      and mu_dtype is not None
      and not jnp.issubdtype(mu_dtype, jnp.complexfloating)
    ):
      dtype = jnp.complex64  # a real mu_dtype cannot hold a complex moment
    return jnp.zeros(u.shape if keep else (0,), dtype)

  def init_leaf_v(u):
    real = _real_dtype(u.dtype)
    axes = _factored_axes(u.shape, min_dim_size_to_factor)
    if axes is None:
      return jnp.zeros(u.shape, real), jnp.zeros((0,), real)
    d0, d1 = axes
    return (
      jnp.zeros(tuple(s for a, s in enumerate(u.shape) if a != d0), real),
      jnp.zeros(tuple(s for a, s in enumerate(u.shape) if a != d1), real),
    )

  def init_fn(params):
    mask = mask_of(params)
    mu = jax.tree.map(init_leaf_mu, params, mask)
    vs = jax.tree.map(init_leaf_v, params)
    is_pair = lambda x: isinstance(x, tuple)
    v_row = jax.tree.map(lambda p: p[0], vs, is_leaf=is_pair)
    v_col = jax.tree.map(lambda p: p[1], vs, is_leaf=is_pair)
    return ScaleByFactoredAdamState(jnp.zeros([], jnp.int32), mu, v_row, v_col)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    mask = mask_of(updates)

    def leaf(g, keep, mu, v_row, v_col):
      sq = jnp.real(g * jnp.conj(g)).astype(v_row.dtype)
      axes = _factored_axes(g.shape, min_dim_size_to_factor)
      if axes is None:
        v_row = b2 * v_row + (1 - b2) * sq
        v_hat = v_row
      else:
        d0, d1 = axes
        v_row = b2 * v_row + (1 - b2) * jnp.mean(sq, axis=d0)
        v_col = b2 * v_col + (1 - b2) * jnp.mean(sq, axis=d1)
        # v_row lacks d0; its mean over d1 (shifted where d1 > d0) normalises the product.
        d1_in_row = d1 - 1 if d1 > d0 else d1
        mean = jnp.mean(v_row, axis=d1_in_row, keepdims=True)
        v_hat = jnp.expand_dims(v_row / jnp.where(mean > 0, mean, 1), d0) * jnp.expand_dims(
          v_col, d1
        )
      v_hat = optax.tree.bias_correction(v_hat, b2, count)
      if keep:
        mu = (b1 * mu + (1 - b1) * g).astype(mu.dtype)
        m_hat = optax.tree.bias_correction(mu.astype(g.dtype), b1, count)
      else:
        m_hat = g
      return m_hat / (jnp.sqrt(v_hat) + eps).astype(g.dtype), mu, v_row, v_col

    out = jax.tree.map(leaf, updates, mask, state.mu, state.v_row, state.v_col)
    is_quad = lambda x: isinstance(x, tuple) and len(x) == 4
    pick = lambda i: jax.tree.map(lambda q: q[i], out, is_leaf=is_quad)
    return pick(0), ScaleByFactoredAdamState(count, pick(1), pick(2), pick(3))

  return optax.GradientTransformation(init_fn, update_fn)


def projected_mask(params, *, min_size: int = 16_384):
  """``True`` for the leaves `tensor_galore`'s default plan projects (>= 2-D, ``min_size``)."""
  return jax.tree.map(lambda p: p.ndim >= 2 and p.size >= min_size, params)


def factored_core(
  learning_rate,
  params,
  *,
  rank: float = 0.1,
  small_leaf_momentum: bool = True,
  mu_dtype=None,
  residual_scale: float | None = 4.0,
  weight_decay: float = 1e-4,
  min_dim_size_to_factor: int = 8,
) -> optax.GradientTransformation:
  """`tensor_galore` with `scale_by_factored_adam` as its base optimizer, then AdamW's decay.

  Args:
    learning_rate: The learning rate or schedule.
    params: The parameters (or shape structs): which leaves are projected.
    rank: `tensor_galore`'s rank.
    small_leaf_momentum: Whether the leaves left whole keep a first moment.
    mu_dtype: dtype of the first moments.
    residual_scale: `tensor_galore`'s residual step.
    weight_decay: Decoupled weight decay, as `tensor_galore_adamw`'s.
    min_dim_size_to_factor: Smallest axes the second moment factors.
  """
  mask = None if small_leaf_momentum else projected_mask(params)
  base = scale_by_factored_adam(
    min_dim_size_to_factor=min_dim_size_to_factor, mu_dtype=mu_dtype, momentum_mask=mask
  )
  return optax.chain(
    tensor_galore(rank=rank, base_optimizer=base, residual_scale=residual_scale),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


def adafactor_core_momentum(
  learning_rate,
  params,
  *,
  rank: float = 0.1,
  small_leaf_momentum: bool = True,
  min_dim_size_to_factor: int = 8,
  weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
  """Adafactor (`optax.adafactor`'s chain) with its momentum in a Tucker core.

  The composition of ``DESIGN.md``: factored RMS scaling, block-RMS clipping,
  the learning rate, parameter-scale multiplication, then `tensor_galore` with
  an un-debiased EMA as its base optimizer, decay, and the sign.

  Args:
    learning_rate: The learning rate or schedule.
    params: The parameters (or shape structs): which leaves are projected.
    rank: `tensor_galore`'s rank.
    small_leaf_momentum: Whether the leaves left whole keep a momentum.
    min_dim_size_to_factor: Smallest axes the second moment factors.
    weight_decay: Decoupled weight decay.
  """
  ema = optax.ema(0.9, debias=False)
  if not small_leaf_momentum:
    ema = optax.masked(ema, projected_mask(params))
  return optax.chain(
    optax.scale_by_factored_rms(min_dim_size_to_factor=min_dim_size_to_factor),
    optax.clip_by_block_rms(1.0),
    optax.scale_by_learning_rate(learning_rate, flip_sign=False),
    optax.scale_by_param_block_rms(),
    tensor_galore(rank=rank, base_optimizer=ema, residual_scale=4.0),
    optax.add_decayed_weights(weight_decay),
    optax.scale(-1.0),
  )
