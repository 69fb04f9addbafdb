"""The frontier benchmark's tasks: generated data, a model, a loss.

Each task is a `Task`: its data (generated once and cached under
``~/.cache/tensor_galore_optax/frontier``), a model built from a seed, and the
training protocol (epochs, batch, learning-rate grid). `benchmarks.frontier`
trains every optimizer on a task with the same protocol.

* ``darcy16``: the FNO of `examples.fno.model` (width 24, 8x8 modes, 4 layers;
  complex spectral weights ``(24, 24, 8, 5)``) on generated Darcy flow at 16 x 16
  (`examples.fno.data`), 1000 training and 100 test samples.
* ``burgers``: a small pre-norm transformer (flax NNX; attention q/k/v/out and a
  4x MLP, width 128, 4 blocks) whose tokens are 32 grid points of a 1-D
  viscous Burgers equation: it maps ``u(x, 0)`` to ``u(x, 0.5)``. The solver
  (`solve_burgers`) is pseudo-spectral, with an integrating factor for the
  viscous term.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CACHE = pathlib.Path(
  os.environ.get("FRONTIER_CACHE", "~/.cache/tensor_galore_optax/frontier")
).expanduser()


@dataclasses.dataclass(frozen=True)
class Task:
  """A benchmark task.

  Attributes:
    name: The task's name on the command line.
    description: One line for the table.
    data: Returns ``(x_train, y_train, x_test, y_test)`` float32 arrays, batch first.
    model: Builds the model from a seed: an ``nnx.Module`` mapping a batch of
      ``x`` to a batch shaped as ``y``.
    epochs: Passes over the training set.
    batch_size: Samples per step.
    lrs: The base learning-rate grid (AdamW's); each optimizer family scales it
      (`benchmarks.frontier.FAMILY_LR_SCALE`).
    settings: Everything else that determines a run's result (data and model
      parameters), part of every run's cache key.
    extra_seeds: The seeds trained at the best rate after seed 0's sweep.
    note: What the results table says of the task's protocol, if it differs.
  """

  name: str
  description: str
  data: Callable[[], tuple[np.ndarray, ...]]
  model: Callable[[int], nnx.Module]
  epochs: int
  batch_size: int
  lrs: tuple[float, ...]
  settings: dict[str, Any]
  extra_seeds: tuple[int, ...] = (1, 2)
  note: str = ""


def _cached(name: str, params: dict, make: Callable[[], tuple[np.ndarray, ...]]):
  """``make()``'s arrays, stored once per ``params`` in `CACHE` (an ``.npz``)."""
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  path = CACHE / f"{name}-{key}.npz"
  if path.exists():
    with np.load(path) as f:
      return tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
  arrays = make()
  CACHE.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
  np.savez(tmp, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays, strict=True)))
  tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
  return arrays


# --------------------------------------------------------------------------
# Darcy 16 x 16 with the FNO example's model
# --------------------------------------------------------------------------

DARCY16 = dict(n_train=1000, n_test=100, resolution=16, seed=0)
FNO16 = dict(modes=(8, 8), width=24, n_layers=4)


def darcy16_data() -> tuple[np.ndarray, ...]:
  """Generated Darcy flow at 16 x 16 (`examples.fno.data.generate`), channels last."""
  from examples.fno import data

  def make():
    ds = data.generate("darcy", verbose=False, **DARCY16)
    return tuple(np.asarray(a, np.float32)[..., None] for a in ds)

  return _cached("darcy16", DARCY16, make)


def fno16(seed: int) -> nnx.Module:
  """The example's FNO (width 24, 8x8 modes, 4 layers), one input and one output channel."""
  from examples.fno.model import FNO

  return FNO(1, 1, rngs=nnx.Rngs(seed), **FNO16)


MLP16 = dict(width=512, depth=2)
CNN16 = dict(width=64, depth=2)


def mlp16(seed: int) -> nnx.Module:
  """The results page's MLP on the flattened field: ``(256, 512), (512, 512), (512, 256)``."""
  from benchmarks.baselines import MLP

  return MLP(1, 1, resolution=(DARCY16["resolution"],) * 2, rngs=nnx.Rngs(seed), **MLP16)


def cnn16(seed: int) -> nnx.Module:
  """The results page's conv net: 3 x 3 convolutions, width 64, two residual blocks."""
  from benchmarks.baselines import ConvNet

  return ConvNet(1, 1, rngs=nnx.Rngs(seed), **CNN16)


NS64 = dict(n_train=1000, n_test=200, resolution=64)
FNO64 = dict(modes=(16, 16), width=32, n_layers=4)


def ns64_data() -> tuple[np.ndarray, ...]:
  """The FNO example's Navier-Stokes 64 x 64 data (`examples.fno.data`, cached there)."""
  from examples.fno import data

  ds = data.load_or_generate("navier_stokes", verbose=False, **NS64)
  return tuple(np.asarray(a, np.float32)[..., None] for a in ds)


def fno64(seed: int) -> nnx.Module:
  """The FNO example's default model (width 32, 16 x 16 modes, 4 layers)."""
  from examples.fno.model import FNO

  return FNO(1, 1, rngs=nnx.Rngs(seed), **FNO64)


# --------------------------------------------------------------------------
# 1-D viscous Burgers with a small transformer
# --------------------------------------------------------------------------

BURGERS = dict(
  n_train=1000,
  n_test=100,
  tokens=32,
  solve_resolution=256,
  viscosity=0.02,
  t_final=0.5,
  dt=5e-4,
  seed=0,
)
TRANSFORMER = dict(width=128, n_blocks=4, n_heads=4, mlp_ratio=4)


def burgers_initial(rng: np.random.Generator, n_samples: int, n: int) -> np.ndarray:
  """Periodic random fields on ``[0, 1)``: the FNO paper's ``N(0, 625 (-lap + 25 I)^-2)``.

  Args:
    rng: NumPy random generator.
    n_samples: Number of fields.
    n: Grid points.

  Returns:
    ``(n_samples, n)`` float64 fields, zero mean.
  """
  k = np.fft.rfftfreq(n, 1.0 / n)
  sqrt_eig = 25.0 * (4 * np.pi**2 * k**2 + 25.0) ** -1.0
  sqrt_eig[0] = 0.0
  # A real white noise's rfft has E|xi_k|^2 = n, and irfft divides by n: sqrt(n) xi_k makes
  # the field's k-th Fourier coefficient sqrt_eig_k times a unit complex Gaussian.
  xi = np.fft.rfft(rng.standard_normal((n_samples, n)), axis=-1)
  return np.fft.irfft(np.sqrt(n) * sqrt_eig * xi, n=n, axis=-1)


def solve_burgers(u0: np.ndarray, *, viscosity: float, t_final: float, dt: float) -> np.ndarray:
  """Solves ``u_t + (u^2 / 2)_x = viscosity u_xx`` on the periodic ``[0, 1)`` to ``t_final``.

  Pseudo-spectral in space with the 2/3 rule against aliasing; in time, RK4 on
  ``v = exp(viscosity k^2 t) u_hat`` (the integrating factor: the viscous term is
  exact, only the advection limits ``dt``).

  Args:
    u0: ``(batch, n)`` initial fields on the grid ``arange(n) / n``.
    viscosity: The viscosity.
    t_final: The final time; ``dt`` is shortened to divide it into whole steps.
    dt: The largest time step.

  Returns:
    ``(batch, n)`` float64 fields at ``t_final``.
  """
  n = u0.shape[-1]
  k = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n)
  keep = np.abs(np.fft.rfftfreq(n, 1.0 / n)) < n / 3  # the 2/3 rule
  steps = int(np.ceil(t_final / dt))
  h = t_final / steps
  decay_half = np.exp(-viscosity * k**2 * h / 2)

  def advection(u_hat):
    u = np.fft.irfft(u_hat, n=n, axis=-1)
    return -0.5j * k * keep * np.fft.rfft(u * u, axis=-1)

  u_hat = np.fft.rfft(u0, axis=-1)
  for _ in range(steps):
    a = advection(u_hat)
    b = advection(decay_half * (u_hat + h / 2 * a))
    c = advection(decay_half * u_hat + h / 2 * b)
    d = advection(decay_half**2 * u_hat + h * decay_half * c)
    u_hat = decay_half**2 * u_hat + h / 6 * (decay_half**2 * a + 2 * decay_half * (b + c) + d)
  return np.fft.irfft(u_hat, n=n, axis=-1)


def burgers_data() -> tuple[np.ndarray, ...]:
  """``(u(x, 0), u(x, t_final))`` pairs at `BURGERS`'s tokens, ``(N, tokens, 1)`` float32."""
  p = BURGERS

  def make():
    stride = p["solve_resolution"] // p["tokens"]
    arrays = []
    for split, n in enumerate((p["n_train"], p["n_test"])):
      rng = np.random.default_rng([p["seed"], split])
      u0 = burgers_initial(rng, n, p["solve_resolution"])
      u1 = solve_burgers(u0, viscosity=p["viscosity"], t_final=p["t_final"], dt=p["dt"])
      if not np.isfinite(u1).all():
        raise ValueError("the Burgers solve is unstable: reduce dt")
      arrays += [u0[:, ::stride, None].astype(np.float32), u1[:, ::stride, None].astype(np.float32)]
    return tuple(arrays)

  return _cached("burgers", p, make)


class Block(nnx.Module):
  """A pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

  The attention's q, k, v and output projections are separate ``(width, width)``
  kernels (`nnx.Linear`), so that every weight an optimizer sees is a matrix.
  """

  def __init__(self, width: int, n_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.n_heads = n_heads
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.q = nnx.Linear(width, width, rngs=rngs)
    self.k = nnx.Linear(width, width, rngs=rngs)
    self.v = nnx.Linear(width, width, rngs=rngs)
    self.out = nnx.Linear(width, width, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.fc1 = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_ratio * width, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    heads = lambda a: a.reshape(b, t, self.n_heads, d // self.n_heads)
    y = self.norm1(x)
    attn = jax.nn.dot_product_attention(heads(self.q(y)), heads(self.k(y)), heads(self.v(y)))
    x = x + self.out(attn.reshape(b, t, d))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class Transformer(nnx.Module):
  """Grid points as tokens: ``[u, sin 2 pi x, cos 2 pi x]`` embedded, blocks, a linear read-out."""

  def __init__(
    self, *, width: int, n_blocks: int, n_heads: int, mlp_ratio: int, tokens: int, rngs: nnx.Rngs
  ):
    self.embed = nnx.Linear(3, width, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, width)))
    self.blocks = nnx.List([Block(width, n_heads, mlp_ratio, rngs=rngs) for _ in range(n_blocks)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, 1, rngs=rngs)

  def __call__(self, u: jax.Array) -> jax.Array:
    """Maps ``(B, T, 1)`` fields to ``(B, T, 1)``."""
    x = jnp.arange(u.shape[1]) / u.shape[1]
    grid = jnp.broadcast_to(
      jnp.stack([jnp.sin(2 * jnp.pi * x), jnp.cos(2 * jnp.pi * x)], -1), u.shape[:2] + (2,)
    )
    h = self.embed(jnp.concatenate([u, grid], -1)) + self.position[...]
    for block in self.blocks:
      h = block(h)
    return self.head(self.norm(h))


def transformer(seed: int) -> nnx.Module:
  """The `Transformer` of `TRANSFORMER` on `BURGERS`'s tokens."""
  return Transformer(tokens=BURGERS["tokens"], rngs=nnx.Rngs(seed), **TRANSFORMER)


TASKS: dict[str, Task] = {
  "darcy16": Task(
    "darcy16",
    "FNO (width 24, 8x8 modes, 4 layers), Darcy 16x16, 1000 train / 100 test, 20 epochs",
    darcy16_data,
    fno16,
    epochs=20,
    batch_size=20,
    # 3e-3 to 3e-2 left every Adam-like optimizer best at 3e-2, the edge: shifted up.
    lrs=(1e-2, 3e-2, 1e-1),
    settings=dict(data=DARCY16, model=FNO16),
  ),
  "mlp16": Task(
    "mlp16",
    "MLP on the flattened field ((256, 512), (512, 512), (512, 256)), Darcy 16x16, 1000 train "
    "/ 100 test, 20 epochs",
    darcy16_data,
    mlp16,
    epochs=20,
    batch_size=20,
    lrs=(1e-3, 3e-3, 1e-2),
    settings=dict(data=DARCY16, model=MLP16),
  ),
  "cnn16": Task(
    "cnn16",
    "conv net (3 x 3 kernels (3, 3, 64, 64), 2 residual blocks), Darcy 16x16, 1000 train / "
    "100 test, 20 epochs",
    darcy16_data,
    cnn16,
    epochs=20,
    batch_size=20,
    lrs=(3e-3, 1e-2, 3e-2),
    settings=dict(data=DARCY16, model=CNN16),
  ),
  "ns64": Task(
    "ns64",
    "the FNO example (width 32, 16x16 modes, 4 layers), Navier-Stokes 64x64, 1000 train / 200 "
    "test, 15 epochs",
    ns64_data,
    fno64,
    epochs=15,
    batch_size=20,
    # The example's rate (tuned for AdamW) in the middle of the grid.
    lrs=(8e-3, 2.4e-2, 7.2e-2),
    settings=dict(data=NS64, model=FNO64),
    note="Runs take 7 to 30 minutes on a 2-core CPU: the optimizers that set the frontier at "
    "the FNO's budgets only.",
  ),
  "burgers": Task(
    "burgers",
    "transformer (4 pre-norm blocks, d=128, 32 tokens), Burgers 1-D, 1000 train / 100 test, "
    "10 epochs",
    burgers_data,
    transformer,
    # 500 steps: about a minute per run on a shared 2-core CPU.
    epochs=10,
    batch_size=20,
    lrs=(1e-3, 3e-3, 1e-2),
    settings=dict(data=BURGERS, model=TRANSFORMER),
  ),
}
