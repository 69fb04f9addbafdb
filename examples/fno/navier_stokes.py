"""Navier-Stokes data for the FNO example: vorticity ``w(t = 0) -> w(t_final)`` on the torus.

The FNO paper's generator (Li et al., 2021), in vorticity form on the unit torus::

  w_t + u . grad w = nu lap w + f,   u = (psi_y, -psi_x),   -lap psi = w,
  f(x, y) = 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y)),

on the grid ``linspace(0, 1, s + 1)[:-1]``. The initial vorticity is a Gaussian
random field (``alpha = 2.5, tau = 7``). The scheme is the FNO generator's
pseudo-spectral one: explicit Euler for the advection term, de-aliased with the
2/3 rule, and Crank-Nicolson for the diffusion. A sample is ``x = w(t = 0)``,
``y = w(t_final)`` (or ``K`` snapshots as channels).

Maintained JAX solvers do not reproduce this set-up: exponax's
``NavierStokesVorticity`` integrates with ETDRK schemes, and jax-cfd's spectral
``NavierStokes2D`` with IMEX Runge-Kutta schemes and its own initial fields and
forcings. Neither ships the FNO random field, forcing or Euler/Crank-Nicolson
step, whose (first-order) time error is part of the benchmark's data, and the
whole scheme takes fifty lines of ``jnp.fft``: it is written out here.
`examples.fno.data` stores, caches and loads the data sets.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

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


def generate(params: dict, *, batch_size: int, bar: tqdm.tqdm, log: Callable[[str], None]) -> list:
  """Generates the Navier-Stokes arrays, in the order of `examples.fno.data.Dataset`.

  Args:
    params: Validated parameters (`examples.fno.data.parameters`).
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
