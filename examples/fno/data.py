"""Training data for the FNO examples: 2-D Navier-Stokes and Darcy flow.

Both data sets follow the generators of the Fourier Neural Operator paper
(Li et al., 2021), so that models trained here can be compared with the
published numbers.

**Navier-Stokes** in vorticity form on the unit torus::

  w_t + u . grad w = nu lap w + f,   u = (psi_y, -psi_x),   -lap psi = w,
  f(x, y) = 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y)),

on the grid ``linspace(0, 1, s + 1)[:-1]``. The initial vorticity is a Gaussian
random field (``alpha = 2.5, tau = 7``). The solver is the FNO generator's
pseudo-spectral scheme: explicit Euler for the advection term, de-aliased with
the 2/3 rule, and Crank-Nicolson for the diffusion. A sample is
``x = w(t = 0)``, ``y = w(t_final)`` (or ``K`` snapshots as channels).

Maintained JAX solvers do not reproduce this set-up: exponax's
``NavierStokesVorticity`` integrates with ETDRK schemes, and jax-cfd's spectral
``NavierStokes2D`` with IMEX Runge-Kutta schemes and its own initial fields and
forcings. Neither ships the FNO random field, forcing or Euler/Crank-Nicolson
step, whose (first-order) time error is part of the benchmark's data, and the
whole scheme takes fifty lines of ``jnp.fft``: it is written out here.

**Darcy flow** on the unit square::

  -div(a grad u) = 1,   u = 0 on the boundary,

with ``a`` a thresholded Gaussian random field, ``N(0, (-lap + 9 I)^-2)`` in
the cosine (Neumann) basis: ``a_high`` (12) where the field is non-negative,
``a_low`` (3) elsewhere. The equation is solved with a five-point finite
difference stencil on the nodes ``linspace(0, 1, s)`` (boundary included).
A sample is ``x = a``, ``y = u``.

Fields are solved at ``solve_resolution`` and strided down to ``resolution``
in physical space, as the FNO data are (solved at 256, resp. 421).

Run ``python -m examples.fno.data --help`` for the command line; from Python,
`load_or_generate` caches data sets by their parameters and `load_dataset`
reads a saved one.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import pathlib
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg
import tqdm

PDES = ("navier_stokes", "darcy")

# Navier-Stokes defaults. With nu = 1e-3 the flow is slow (max |u| ~ 0.1): at
# t = 1 the vorticity has changed by 43% (relative L2), and the linear part of
# the dynamics (diffusion and forcing) alone predicts y only to 11%: the map
# x -> y is clearly nonlinear, yet smooth enough to learn.
NS_VISCOSITY = 1e-3
NS_T_FINAL = 1.0
NS_GRF_ALPHA = 2.5
NS_GRF_TAU = 7.0
# Time-step bounds (see `stable_dt`). The benchmark's dt = 1e-4 at 256 is far
# inside them: at the defaults dt = 1e-2 changes y by 6e-4 (relative L2).
NS_DT_MAX = 1e-2
NS_CFL = 0.5

DARCY_GRF_ALPHA = 2.0
DARCY_GRF_TAU = 3.0
DARCY_A_HIGH = 12.0
DARCY_A_LOW = 3.0

# Bump when the generated data change, so that stale cache files are not used.
FORMAT_VERSION = 1
CACHE_ENV_VAR = "TENSOR_GALORE_DATA"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/tensor_galore_optax/data")

_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
  """A train/test split; every array is float32, ``(N, S, S)`` or ``(N, S, S, C)``."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


# --------------------------------------------------------------------------
# Navier-Stokes
# --------------------------------------------------------------------------


def torus_grid(n: int, dtype=jnp.float32) -> jax.Array:
  """Returns the ``n`` grid points ``linspace(0, 1, n + 1)[:-1]`` of the torus."""
  return jnp.linspace(0.0, 1.0, n + 1, dtype=dtype)[:-1]


def benchmark_forcing(n: int, dtype=jnp.float32) -> jax.Array:
  """Returns the FNO forcing ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``.

  Args:
    n: Grid size.
    dtype: Real dtype of the result.

  Returns:
    ``(n, n)`` array; axis 0 is ``x``, axis 1 is ``y``.
  """
  t = torus_grid(n, dtype)
  phase = 2 * jnp.pi * (t[:, None] + t[None, :])
  return 0.1 * (jnp.sin(phase) + jnp.cos(phase))


def grf_sqrt_eig(
  n: int, *, alpha: float = NS_GRF_ALPHA, tau: float = NS_GRF_TAU, dtype=jnp.float32
) -> jax.Array:
  """Square roots of the periodic random field's eigenvalues, FNO-scaled.

  ``sqrt_eig = n^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha / 2)`` with
  ``sigma = tau^(alpha - 1)`` (``tau^(0.5 (2 alpha - d))`` for ``d = 2``) and
  the mean mode set to zero. The ``n^2`` cancels the ``1 / n^2`` of the inverse
  FFT, so the field's law does not depend on ``n`` (up to the modes ``n``
  cannot hold).

  Args:
    n: Grid size (even).
    alpha: Smoothness exponent.
    tau: Inverse length scale.
    dtype: Real dtype of the result.

  Returns:
    ``(n, n)`` array in FFT order, wavenumbers ``{0..n/2-1, -n/2..-1}``.
  """
  k = jnp.fft.fftfreq(n, 1.0 / n).astype(dtype)
  k2 = k[:, None] ** 2 + k[None, :] ** 2
  sigma = tau ** (alpha - 1.0)
  sqrt_eig = n**2 * math.sqrt(2.0) * sigma * (4 * jnp.pi**2 * k2 + tau**2) ** (-alpha / 2)
  return sqrt_eig.at[0, 0].set(0.0)


@jax.jit
def gaussian_random_field(
  noise: jax.Array, *, alpha: float = NS_GRF_ALPHA, tau: float = NS_GRF_TAU
) -> jax.Array:
  """Colours white noise into the FNO's periodic Gaussian random field.

  As in the benchmark, complex white noise is coloured by `grf_sqrt_eig` and
  the real part of its inverse FFT is kept. Taking the real part halves the
  noise's variance, so that ``E |fft2(sample)_k|^2 = sqrt_eig_k^2`` for every
  ``k != 0``.

  Args:
    noise: ``(..., 2, n, n)`` independent standard normal samples (real and
      imaginary parts), ``n`` even; its dtype is the result's.
    alpha: Smoothness exponent.
    tau: Inverse length scale.

  Returns:
    ``(..., n, n)`` zero-mean fields on the torus grid.
  """
  n = noise.shape[-1]
  sqrt_eig = grf_sqrt_eig(n, alpha=alpha, tau=tau, dtype=noise.dtype)
  return jnp.fft.ifft2(sqrt_eig * jax.lax.complex(noise[..., 0, :, :], noise[..., 1, :, :])).real


class _Spectral(NamedTuple):
  """Real-FFT wavenumbers and operators of the ``n x n`` torus grid."""

  kx: jax.Array  # (n, 1): {0..n/2-1, -n/2..-1}, the FFT axis 0 (x).
  ky: jax.Array  # (1, n/2+1): {0..n/2}, the real-FFT axis 1 (y).
  lap: jax.Array  # 4 pi^2 |k|^2, with lap[0, 0] = 1 so that psi = w / lap is defined.
  dealias: jax.Array  # |kx|, |ky| <= (2/3) (n/2).


def _spectral(n: int, dtype) -> _Spectral:
  """Builds the wavenumber arrays for an ``n x n`` grid in ``dtype``."""
  # The real FFT stores ky = +n/2 where the benchmark's full FFT has -n/2; only
  # its square enters L, and its derivative vanishes in both (a real field's
  # Nyquist derivative is dropped by the inverse FFT).
  kx = jnp.fft.fftfreq(n, 1.0 / n).astype(dtype)[:, None]
  ky = jnp.fft.rfftfreq(n, 1.0 / n).astype(dtype)[None, :]
  lap = (4 * jnp.pi**2 * (kx**2 + ky**2)).at[0, 0].set(1.0)
  k_cut = (2.0 / 3.0) * (n // 2)
  dealias = ((jnp.abs(kx) <= k_cut) & (jnp.abs(ky) <= k_cut)).astype(dtype)
  return _Spectral(kx, ky, lap, dealias)


def _velocity_hat(w_hat: jax.Array, ops: _Spectral) -> tuple[jax.Array, jax.Array]:
  """Returns ``(u_hat, v_hat) = (psi_y, -psi_x)`` with ``psi_hat = w_hat / lap``."""
  psi_hat = w_hat / ops.lap
  return 2j * jnp.pi * ops.ky * psi_hat, -2j * jnp.pi * ops.kx * psi_hat


def velocity(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Computes the velocity of a vorticity field on the torus.

  Args:
    w: Vorticity, ``(..., n, n)``.

  Returns:
    ``(u, v)``, each shaped like ``w``.
  """
  n = w.shape[-1]
  u_hat, v_hat = _velocity_hat(jnp.fft.rfft2(w), _spectral(n, w.dtype))
  return jnp.fft.irfft2(u_hat, s=(n, n)), jnp.fft.irfft2(v_hat, s=(n, n))


@functools.partial(jax.jit, static_argnames=("n_steps", "n_snapshots", "forcing"))
def navier_stokes(
  w0: jax.Array,
  *,
  viscosity: float,
  dt: float,
  n_steps: int,
  n_snapshots: int = 1,
  forcing: bool = True,
) -> jax.Array:
  """Integrates the FNO benchmark's vorticity equation.

  One step is the benchmark's::

    w_hat <- (-dt F_hat + dt f_hat + (1 - dt nu L / 2) w_hat) / (1 + dt nu L / 2)

  with ``F = u w_x + v w_y`` de-aliased by the 2/3 rule: explicit Euler for
  advection and forcing, Crank-Nicolson for diffusion. It is linearly stable
  for ``dt max|u|^2 <= 2 nu`` (see `stable_dt`).

  Args:
    w0: Initial vorticity, ``(..., n, n)`` with ``n`` even; its dtype (float32
      or float64) is the computation's.
    viscosity: ``nu``.
    dt: Time step.
    n_steps: Number of steps, a multiple of ``n_snapshots``.
    n_snapshots: Number of equally spaced snapshots to return; the last one is
      at ``t = n_steps dt``.
    forcing: Whether to add the benchmark forcing `benchmark_forcing`.

  Returns:
    ``(..., n, n, n_snapshots)``: the vorticity at ``t = j n_steps dt /
    n_snapshots`` for ``j = 1..n_snapshots``.

  Raises:
    ValueError: If ``n_steps`` is not a multiple of ``n_snapshots``.
  """
  if n_steps % n_snapshots:
    raise ValueError(f"n_steps={n_steps} is not a multiple of n_snapshots={n_snapshots}")
  n = w0.shape[-1]
  ops = _spectral(n, w0.dtype)
  f_hat = jnp.fft.rfft2(benchmark_forcing(n, w0.dtype)) if forcing else 0.0
  half_diffusion = 0.5 * dt * viscosity * ops.lap

  def step(_, w_hat):
    u_hat, v_hat = _velocity_hat(w_hat, ops)
    u, v, w_x, w_y = (
      jnp.fft.irfft2(a, s=(n, n))
      for a in (u_hat, v_hat, 2j * jnp.pi * ops.kx * w_hat, 2j * jnp.pi * ops.ky * w_hat)
    )
    advection_hat = ops.dealias * jnp.fft.rfft2(u * w_x + v * w_y)
    explicit = dt * (f_hat - advection_hat) + (1 - half_diffusion) * w_hat
    return explicit / (1 + half_diffusion)

  def snapshot(w_hat, _):
    w_hat = jax.lax.fori_loop(0, n_steps // n_snapshots, step, w_hat)
    return w_hat, jnp.fft.irfft2(w_hat, s=(n, n))

  _, snapshots = jax.lax.scan(snapshot, jnp.fft.rfft2(w0), length=n_snapshots)
  return jnp.moveaxis(snapshots, 0, -1)


@jax.jit
def velocity_bound(w0: jax.Array, *, viscosity: float, t_final: float) -> jax.Array:
  """Estimates ``max |u|`` over a run, for choosing the time step.

  The initial fields' largest speed plus that of the linear (Stokes) response
  to the forcing at ``t_final``, ``f_hat (1 - exp(-nu L t)) / (nu L)``: the
  forcing is what feeds the flow, and advection only moves speed around. It is
  an estimate, not a bound; generated data are checked to be finite.

  Args:
    w0: A batch of initial vorticities, ``(B, n, n)``.
    viscosity: ``nu``.
    t_final: End time.

  Returns:
    The estimated largest speed, a scalar.
  """
  n = w0.shape[-1]
  decay = viscosity * _spectral(n, w0.dtype).lap
  forced_hat = jnp.fft.rfft2(benchmark_forcing(n, w0.dtype)) * -jnp.expm1(-decay * t_final) / decay
  return _max_speed(w0) + _max_speed(jnp.fft.irfft2(forced_hat, s=(n, n)))


def _max_speed(w: jax.Array) -> jax.Array:
  """Returns ``max |u|`` over all points (and fields) of the vorticity ``w``."""
  return jnp.max(jnp.hypot(*velocity(w)))


def stable_dt(
  u_max: float, *, viscosity: float, dx: float, dt_max: float = NS_DT_MAX, cfl: float = NS_CFL
) -> float:
  """The largest time step that `navier_stokes` takes safely.

  For a Fourier mode ``k`` advected at speed ``u`` the step multiplies the
  amplitude by ``((1 - a) - i theta) / (1 + a)``, with ``theta = 2 pi |k| u dt``
  (Euler) and ``a = 2 pi^2 |k|^2 nu dt`` (Crank-Nicolson). Its modulus is at
  most 1 iff ``theta^2 <= 4 a``, i.e. ``dt <= 2 nu / u^2`` for every ``k``;
  half of that is kept as a margin. The advective CFL condition
  ``dt <= cfl dx / u`` keeps the Euler step accurate, and ``dt_max`` caps the
  step for slow flows.

  Args:
    u_max: Largest speed (`velocity_bound`).
    viscosity: ``nu``.
    dx: Grid spacing of the solve.
    dt_max: Upper bound on the step.
    cfl: Courant number ``dt u_max / dx`` not to exceed.

  Returns:
    ``min(dt_max, cfl dx / u_max, nu / u_max^2)``.
  """
  return min(dt_max, cfl * dx / u_max, viscosity / u_max**2)


@functools.partial(jax.jit, static_argnames=("stride", "n_steps", "n_snapshots"))
def _navier_stokes_batch(noise, viscosity, dt, *, stride, n_steps, n_snapshots):
  """Colours ``noise`` into initial fields, solves, and strides by ``stride``."""
  w0 = gaussian_random_field(noise)
  w = navier_stokes(w0, viscosity=viscosity, dt=dt, n_steps=n_steps, n_snapshots=n_snapshots)
  y = w[:, ::stride, ::stride]
  return w0[:, ::stride, ::stride], y[..., 0] if n_snapshots == 1 else y


def _noise(entropy: tuple[int, ...], indices, n: int) -> np.ndarray:
  """Standard normal noise ``(len(indices), 2, n, n)``, sample ``i`` seeded by ``(*entropy, i)``.

  One NumPy generator per sample: a sample does not depend on the batching,
  and with ``entropy = (seed, split)`` the test split does not depend on
  ``n_train``. NumPy rather than `jax.random`, whose threefry sampler takes
  seconds to compile on CPU, longer than small data sets take to solve.
  """
  return np.stack(
    [np.random.default_rng([*entropy, i]).standard_normal((2, n, n), np.float32) for i in indices]
  )


def _generate_navier_stokes(
  params: dict, *, batch_size: int, bar: tqdm.tqdm, log: Callable[[str], None]
) -> list:
  """Generates the Navier-Stokes arrays, in `Dataset` order.

  Args:
    params: Validated parameters (`parameters`).
    batch_size: Samples solved at once.
    bar: Progress bar, advanced by the samples done.
    log: ``print``-like function for the chosen time step.

  Returns:
    ``[x_train, y_train, x_test, y_test]``.
  """
  solve_resolution, viscosity, t_final, trajectory = (
    params[k] for k in ("solve_resolution", "viscosity", "t_final", "trajectory")
  )
  # A fixed pilot batch, so that dt does not depend on the seed.
  pilot = gaussian_random_field(_noise((), range(32), solve_resolution))
  u_max = float(velocity_bound(pilot, viscosity=viscosity, t_final=t_final))
  dx = 1.0 / solve_resolution
  dt_bound = stable_dt(u_max, viscosity=viscosity, dx=dx)
  # Round the step down so that t_final and the snapshots fall on steps (the
  # tolerance keeps 1.1 / 0.1 = 11.000000000000002 at 11 steps).
  n_steps = trajectory * math.ceil(t_final / (trajectory * (params["dt"] or dt_bound)) - 1e-9)
  dt = t_final / n_steps
  log(
    f"navier_stokes: dt = {dt:.4g} ({n_steps} steps, CFL number {dt * u_max / dx:.3f} for "
    f"max|u| ~ {u_max:.3g}; automatic dt: {dt_bound:.4g})"
  )
  if dt > 2 * viscosity / u_max**2:
    warnings.warn(
      f"dt = {dt:.4g} exceeds the stability bound 2 nu / max|u|^2 = {2 * viscosity / u_max**2:.4g}",
      RuntimeWarning,
      stacklevel=3,
    )

  solve = functools.partial(
    _navier_stokes_batch,
    stride=solve_resolution // params["resolution"],
    n_steps=n_steps,
    n_snapshots=trajectory,
  )
  # One batch shape for every call, so that the solver compiles once.
  sizes = (params["n_train"], params["n_test"])
  batch = min(batch_size, max(sizes))
  arrays = []
  for split, n in enumerate(sizes):
    xs, ys = [], []
    for start in range(0, n, batch):
      # The last batch repeats the split's last sample up to the batch size.
      indices = np.minimum(np.arange(start, start + batch), n - 1)
      x, y = solve(_noise((params["seed"], split), indices, solve_resolution), viscosity, dt)
      count = min(batch, n - start)
      xs.append(np.asarray(x[:count]))
      ys.append(np.asarray(y[:count]))
      bar.update(count)
    arrays += [np.concatenate(xs), np.concatenate(ys)]
  return arrays


# --------------------------------------------------------------------------
# Darcy flow
# --------------------------------------------------------------------------


def darcy_coefficient(
  rng: np.random.Generator,
  n: int,
  *,
  a_high: float = DARCY_A_HIGH,
  a_low: float = DARCY_A_LOW,
  alpha: float = DARCY_GRF_ALPHA,
  tau: float = DARCY_GRF_TAU,
) -> np.ndarray:
  """Samples the FNO's piecewise-constant Darcy coefficient.

  A Gaussian random field ``N(0, (-lap + tau^2 I)^-alpha)`` in the cosine
  (Neumann) basis, sampled as the FNO's MATLAB ``GRF``: coefficients
  ``n tau^(alpha - 1) (pi^2 |k|^2 + tau^2)^(-alpha / 2) xi``, ``k in 0..n-1``,
  zero mean, through an orthonormal inverse DCT; then thresholded at 0.

  Args:
    rng: NumPy random generator.
    n: Grid size.
    a_high: Value where the field is ``>= 0``.
    a_low: Value where the field is ``< 0``.
    alpha: Smoothness exponent.
    tau: Inverse length scale.

  Returns:
    ``(n, n)`` float64 array of ``a_high`` and ``a_low``.
  """
  k = np.arange(n)
  k2 = k[:, None] ** 2 + k[None, :] ** 2
  sqrt_eig = n * tau ** (alpha - 1) * (np.pi**2 * k2 + tau**2) ** (-alpha / 2)
  coeff = sqrt_eig * rng.standard_normal((n, n))
  coeff[0, 0] = 0.0
  field = scipy.fft.idctn(coeff, norm="ortho")
  return np.where(field >= 0, a_high, a_low)


def _harmonic_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Elementwise ``2 a b / (a + b)``."""
  return 2 * a * b / (a + b)


def solve_darcy(a: np.ndarray, *, source: float = 1.0) -> np.ndarray:
  """Solves ``-div(a grad u) = source`` with ``u = 0`` on the unit square's boundary.

  Five-point finite differences on the nodes ``linspace(0, 1, n)``, with the
  coefficient on each cell face the harmonic mean of its two nodes: that is
  the face's exact conductance when ``a`` jumps between them, so the flux stays
  continuous across the 12/3 interfaces (the arithmetic mean over-weights the
  high value). Second order in ``h`` for smooth ``a``.

  Args:
    a: ``(n, n)`` positive coefficient at the nodes, ``n >= 3``.
    source: Constant right-hand side.

  Returns:
    ``(n, n)`` float64 solution, zero on the boundary nodes.
  """
  n = a.shape[0]
  m = n - 2  # interior nodes per direction
  h = 1.0 / (n - 1)
  ax = _harmonic_mean(a[:-1, :], a[1:, :])  # face (i + 1/2, j)
  ay = _harmonic_mean(a[:, :-1], a[:, 1:])  # face (i, j + 1/2)
  inner = slice(1, n - 1)
  diag = ax[:-1, inner] + ax[1:, inner] + ay[inner, :-1] + ay[inner, 1:]
  # Interior nodes in row-major order: x-neighbours are m apart, y-neighbours
  # adjacent, except across a row end, where the coupling is zero.
  x_off = ax[1 : n - 2, inner].ravel()
  y_off = np.pad(ay[inner, 1 : n - 2], ((0, 0), (0, 1))).ravel()[:-1]
  shape = (m * m, m * m)
  # Two sums, as the offsets m and 1 coincide on a 3 x 3 grid.
  matrix = scipy.sparse.diags_array(
    [diag.ravel(), -x_off, -x_off], offsets=[0, m, -m], shape=shape
  ) + scipy.sparse.diags_array([-y_off, -y_off], offsets=[1, -1], shape=shape)
  rhs = np.full(m * m, source * h**2)
  u = np.zeros((n, n))
  u[inner, inner] = scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs).reshape(m, m)
  return u


def _generate_darcy(params: dict, *, bar: tqdm.tqdm) -> list:
  """Generates the Darcy arrays, in `Dataset` order.

  Args:
    params: Validated parameters (`parameters`).
    bar: Progress bar, advanced by the samples done.

  Returns:
    ``[x_train, y_train, x_test, y_test]``.
  """
  s, s_solve = params["resolution"], params["solve_resolution"]
  stride = (s_solve - 1) // (s - 1)
  arrays = []
  for split, n in enumerate((params["n_train"], params["n_test"])):
    x = np.empty((n, s, s), np.float32)
    y = np.empty_like(x)
    for i in range(n):
      # One generator per sample, as for Navier-Stokes (`_noise`).
      rng = np.random.default_rng([params["seed"], split, i])
      a = darcy_coefficient(rng, s_solve, a_high=params["a_high"], a_low=params["a_low"])
      x[i] = a[::stride, ::stride]
      y[i] = solve_darcy(a)[::stride, ::stride]
      bar.update(1)
    arrays += [x, y]
  return arrays


# --------------------------------------------------------------------------
# Generation, files and cache
# --------------------------------------------------------------------------


def parameters(
  pde: str,
  *,
  n_train: int,
  n_test: int,
  resolution: int,
  solve_resolution: int | None = None,
  viscosity: float = NS_VISCOSITY,
  t_final: float = NS_T_FINAL,
  dt: float | None = None,
  trajectory: int = 1,
  a_high: float = DARCY_A_HIGH,
  a_low: float = DARCY_A_LOW,
  seed: int = 0,
) -> dict:
  """Validates the parameters that determine a data set, and normalises them.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    n_train: Number of training samples.
    n_test: Number of test samples.
    resolution: Grid size ``S`` of the stored fields.
    solve_resolution: Grid size of the solve (default ``resolution``); the
      fields are strided down to ``resolution``. Navier-Stokes: a multiple of
      ``resolution``, even. Darcy: ``solve_resolution - 1`` a multiple of
      ``resolution - 1``.
    viscosity: Navier-Stokes ``nu``.
    t_final: Navier-Stokes time of ``y``.
    dt: Navier-Stokes time step; by default `stable_dt` of `velocity_bound`.
      Either way it is rounded down to divide ``t_final`` into whole steps.
    trajectory: Navier-Stokes: store ``y`` as this many equally spaced
      snapshots up to ``t_final``, as channels ``(N, S, S, K)``; 1 stores
      ``(N, S, S)``.
    a_high: Darcy coefficient where the random field is non-negative.
    a_low: Darcy coefficient elsewhere.
    seed: Random seed. Training and test samples come from separate streams,
      so the test set does not change with ``n_train``.

  Returns:
    A JSON-serialisable dict of the parameters that ``pde`` uses, with
    ``solve_resolution`` resolved and numbers cast to ``int`` / ``float`` (so
    that ``t_final=1`` and ``t_final=1.0`` name the same data set).

  Raises:
    ValueError: On an unknown PDE or an invalid value.
  """
  if pde not in PDES:
    raise ValueError(f"unknown PDE {pde!r}; choose from {', '.join(PDES)}")
  solve_resolution = resolution if solve_resolution is None else solve_resolution
  params = dict(
    pde=pde,
    n_train=int(n_train),
    n_test=int(n_test),
    resolution=int(resolution),
    solve_resolution=int(solve_resolution),
    seed=int(seed),
    version=FORMAT_VERSION,
  )
  for name in ("n_train", "n_test", "resolution", "solve_resolution"):
    if params[name] <= 0:
      raise ValueError(f"{name} must be positive, got {params[name]}")
  if solve_resolution < resolution:
    raise ValueError(f"solve_resolution {solve_resolution} is below resolution {resolution}")
  if pde == "navier_stokes":
    params.update(
      viscosity=float(viscosity),
      t_final=float(t_final),
      dt=None if dt is None else float(dt),
      trajectory=int(trajectory),
    )
    positive = ("viscosity", "t_final", "trajectory") + (() if dt is None else ("dt",))
    if solve_resolution % 2:
      raise ValueError(f"solve_resolution must be even for the FFT solver, got {solve_resolution}")
    if solve_resolution % resolution:
      raise ValueError(
        f"resolution {resolution} does not divide solve_resolution {solve_resolution}"
      )
  else:
    params.update(a_high=float(a_high), a_low=float(a_low))
    positive = ("a_high", "a_low")
    if resolution < 3:
      raise ValueError(f"resolution must be at least 3 (one interior node), got {resolution}")
    # The node grids include both ends: striding maps linspace(0, 1, S2) onto
    # linspace(0, 1, S) iff (S - 1) divides (S2 - 1).
    if (solve_resolution - 1) % (resolution - 1):
      raise ValueError(
        f"resolution - 1 = {resolution - 1} does not divide "
        f"solve_resolution - 1 = {solve_resolution - 1}"
      )
  for name in positive:
    if not params[name] > 0:  # also rejects NaN
      raise ValueError(f"{name} must be positive, got {params[name]}")
  return params


def generate(pde: str, *, batch_size: int = 32, verbose: bool = True, **params) -> Dataset:
  """Generates a data set.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    batch_size: Navier-Stokes samples solved together.
    verbose: Whether to show a progress bar and print ``dt`` and the speed.
    **params: The data set's parameters, see `parameters`.

  Returns:
    The data set, float32.

  Raises:
    ValueError: On invalid parameters, or if the solution is not finite (a
      too large ``dt``).
  """
  params = parameters(pde, **params)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  log = print if verbose else lambda *_: None
  sizes = (params["n_train"], params["n_test"])
  start = time.perf_counter()
  # `disable=None`: a bar on a terminal only; redirected to a file it would write a
  # carriage-return frame per update.
  with tqdm.tqdm(
    total=sum(sizes), unit="sample", desc=pde, disable=None if verbose else True
  ) as bar:
    if pde == "navier_stokes":
      arrays = _generate_navier_stokes(params, batch_size=batch_size, bar=bar, log=log)
    else:
      arrays = _generate_darcy(params, bar=bar)
  elapsed = time.perf_counter() - start
  for key, array in zip(_KEYS, arrays, strict=True):
    if not np.isfinite(array).all():
      raise ValueError(f"{key} has non-finite values: the solve is unstable, reduce --dt")
  log(f"{sum(sizes)} samples in {elapsed:.2f} s ({sum(sizes) / elapsed:.1f} samples/s)")
  return Dataset(*arrays)


def _temporary_file(path: pathlib.Path) -> tuple[int, str]:
  """Opens a new hidden file beside ``path``, to be renamed to it once written."""
  return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def save_dataset(path: str | os.PathLike, data: Dataset, *, metadata: dict | None = None) -> None:
  """Writes a data set to ``path`` as ``.npz``, atomically.

  The arrays go to a temporary file in the same directory, which then
  replaces ``path``: readers (and a crash) never see a partial file.

  Args:
    path: Destination; written as given, no ``.npz`` suffix is added.
    data: The arrays.
    metadata: Stored as a JSON string under the key ``metadata``.
  """
  path = pathlib.Path(path)
  extra = {} if metadata is None else {"metadata": np.array(json.dumps(metadata, sort_keys=True))}
  fd, tmp = _temporary_file(path)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **data._asdict(), **extra)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def check_writable(path: str | os.PathLike) -> None:
  """Checks that `save_dataset` can write ``path``, before a (possibly long) solve.

  Args:
    path: The file to write.

  Raises:
    ValueError: If ``path`` is a directory, its directory does not exist, or
      no file can be created there.
  """
  path = pathlib.Path(path)
  try:
    if path.is_dir():
      raise ValueError(f"{path} is a directory; name the .npz file to write")
    if not path.parent.is_dir():
      raise ValueError(f"output directory {path.parent} does not exist")
    fd, tmp = _temporary_file(path)
  except OSError as e:
    raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
  os.close(fd)
  os.unlink(tmp)


def _checked_array(value, file: str, key: str) -> np.ndarray:
  """Returns ``value`` as float32 after checking its size, rank and values."""
  array = np.asarray(value)
  if array.size == 0:
    raise ValueError(f"{file}: key {key!r} is empty (shape {array.shape}); expected samples")
  if array.ndim not in (3, 4):
    raise ValueError(
      f"{file}: key {key!r} has shape {array.shape}; expected (N, S, S) or (N, S, S, C)"
    )
  if array.dtype.kind not in "biuf":
    raise ValueError(f"{file}: key {key!r} has dtype {array.dtype}; expected real numbers")
  if not np.isfinite(array).all():
    raise ValueError(f"{file}: key {key!r} has non-finite values")
  return array.astype(np.float32, copy=False)


def _checked_pair(x, y, file: str, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split: ranks, values, and that ``x`` and ``y`` match."""
  x, y = _checked_array(x, file, x_key), _checked_array(y, file, y_key)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{file}: {x_key!r} has {x.shape[0]} samples but {y_key!r} has {y.shape[0]}")
  if x.shape[1:3] != y.shape[1:3]:
    raise ValueError(
      f"{file}: {x_key!r} has spatial shape {x.shape[1:3]} but {y_key!r} has {y.shape[1:3]}"
    )
  return x, y


# What np.load raises on an unreadable or truncated archive.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)


def _read_npz(path: pathlib.Path) -> Dataset:
  """Reads and checks the four arrays of an ``.npz`` file."""
  if not path.is_file():
    raise ValueError(f"{path}: no such file")
  # np.load also reads .npy and pickle files, with confusing errors for others.
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an .npz (zip) archive")
  try:
    npz = np.load(path, allow_pickle=False)
  except _READ_ERRORS as e:
    raise ValueError(f"{path}: cannot read as an .npz archive ({e})") from e
  arrays = {}
  with npz:
    for key in _KEYS:
      if key not in npz.files:
        raise ValueError(f"{path}: missing key {key!r} (has {', '.join(npz.files) or 'none'})")
      try:
        arrays[key] = npz[key]
      except _READ_ERRORS as e:
        raise ValueError(f"{path}: cannot read key {key!r} ({e})") from e
  train = _checked_pair(arrays["x_train"], arrays["y_train"], str(path), "x_train", "y_train")
  test = _checked_pair(arrays["x_test"], arrays["y_test"], str(path), "x_test", "y_test")
  return Dataset(*train, *test)


def _read_pt(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from a neuraloperator ``.pt`` file: a dict with ``x`` and ``y``."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (pip install torch)") from e
  try:
    content = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types on a bad file
    raise ValueError(f"{path}: cannot read as a PyTorch file ({e})") from e
  if not isinstance(content, dict) or not {"x", "y"} <= content.keys():
    raise ValueError(f"{path}: expected a dict with keys 'x' and 'y'")
  return _checked_pair(content["x"], content["y"], str(path), "x", "y")


def load_dataset(path: str | os.PathLike, test_path: str | os.PathLike | None = None) -> Dataset:
  """Loads and validates a data set.

  Args:
    path: An ``.npz`` file with ``x_train, y_train, x_test, y_test`` (other
      keys are ignored), or neuraloperator's training ``.pt`` file (a dict with
      ``x`` and ``y``; needs PyTorch).
    test_path: With a ``.pt`` ``path``: the matching test ``.pt`` file.

  Returns:
    The four arrays as float32. Train and test resolutions may differ (for
    zero-shot super-resolution tests); within a split they must match.

  Raises:
    ValueError: If a file cannot be read, a key is missing, an array is empty
      or not ``(N, S, S)`` or ``(N, S, S, C)``, has non-finite values, or ``x`` and
      ``y`` of a split differ in ``N`` or ``S``. The message names the file
      and the key.
    ImportError: For ``.pt`` files without PyTorch.
  """
  path = pathlib.Path(path)
  if path.suffix != ".pt":
    if test_path is not None:
      raise ValueError(f"{path}: test_path is only used with .pt files")
    return _read_npz(path)
  if test_path is None:
    raise ValueError(f"{path}: a .pt file holds one split; give the test split's file too")
  return Dataset(*_read_pt(path), *_read_pt(pathlib.Path(test_path)))


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Resolves the cache directory: the argument, else ``$TENSOR_GALORE_DATA``, else the default."""
  chosen = cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
  return pathlib.Path(chosen).expanduser()


def cache_file(params: dict, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Names a data set's cache file by a hash of its (normalised) parameters."""
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
  return cache_dir_path(cache_dir) / f"{params['pde']}_{params['resolution']}_{digest}.npz"


def load_or_generate(
  pde: str,
  *,
  batch_size: int = 32,
  cache_dir: str | os.PathLike | None = None,
  verbose: bool = True,
  **params,
) -> Dataset:
  """Returns a cached data set, generating and caching it on first use.

  The file is named by a hash of every parameter that changes the data (see
  `generate` for their meaning), in ``cache_dir``, else
  ``$TENSOR_GALORE_DATA``, else ``~/.cache/tensor_galore_optax/data``.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    batch_size: See `generate`; does not change the data.
    cache_dir: Cache directory, created if missing.
    verbose: Whether to report progress.
    **params: The data set's parameters, see `parameters`.

  Returns:
    The data set, float32.

  Raises:
    ValueError: On invalid parameters or an unreadable cache file.
  """
  params = parameters(pde, **params)
  path = cache_file(params, cache_dir)
  if path.exists():
    if verbose:
      print(f"loading cached {path}")
    return load_dataset(path)
  kwargs = {k: v for k, v in params.items() if k != "version"}
  data = generate(**kwargs, batch_size=batch_size, verbose=verbose)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_dataset(path, data, metadata=params)
  if verbose:
    print(f"cached {path}")
  return data


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  """Builds the command-line parser: one sub-command per PDE, and ``check``."""
  parser = argparse.ArgumentParser(
    prog="python -m examples.fno.data",
    description=__doc__.split("\n\n")[0],
  )
  commands = parser.add_subparsers(
    dest="command", required=True, metavar="{navier_stokes,darcy,check}"
  )

  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--n-train", type=int, required=True, help="training samples")
  common.add_argument("--n-test", type=int, required=True, help="test samples")
  common.add_argument("--resolution", type=int, required=True, help="stored grid size S")
  common.add_argument("--solve-resolution", type=int, help="solve grid size (default: S)")
  common.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
  common.add_argument("--out", type=pathlib.Path, help=".npz file to write (default: the cache)")
  common.add_argument(
    "--cache-dir", help=f"cache directory (default: ${CACHE_ENV_VAR} or {DEFAULT_CACHE_DIR})"
  )

  default = " (default: %(default)s)"
  ns = commands.add_parser("navier_stokes", parents=[common], help="2-D Navier-Stokes")
  ns.add_argument("--viscosity", type=float, default=NS_VISCOSITY, help="nu" + default)
  ns.add_argument("--t-final", type=float, default=NS_T_FINAL, help="time of y" + default)
  ns.add_argument("--dt", type=float, help="time step (default: from the stability bounds)")
  ns.add_argument("--trajectory", type=int, default=1, metavar="K", help="store K snapshots")
  ns.add_argument("--batch-size", type=int, default=32, help="samples solved at once" + default)

  darcy = commands.add_parser("darcy", parents=[common], help="2-D Darcy flow")
  darcy.add_argument(
    "--a-high", type=float, default=DARCY_A_HIGH, help="a where the field is >= 0" + default
  )
  darcy.add_argument("--a-low", type=float, default=DARCY_A_LOW, help="a elsewhere" + default)

  check = commands.add_parser("check", help="validate a data file and print its shapes")
  check.add_argument("file", type=pathlib.Path)
  check.add_argument("--test-file", type=pathlib.Path, help="test split, for .pt files")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs the command line.

  Args:
    argv: Arguments, default ``sys.argv[1:]``.

  Returns:
    0 on success. Bad input exits with status 2 and a message on stderr,
    leaving no output file.
  """
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    if args.command == "check":
      data = load_dataset(args.file, args.test_file)
      for key, array in data._asdict().items():
        print(f"{key}: {array.shape} {array.dtype}")
      return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "out", "cache_dir")}
    if args.out is None:
      load_or_generate(args.command, **settings, cache_dir=args.cache_dir)
      return 0
    check_writable(args.out)
    data = generate(args.command, **settings)
    save_dataset(args.out, data, metadata={"pde": args.command, **settings})
    print(f"wrote {args.out}")
  except (ValueError, ImportError) as e:
    parser.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
