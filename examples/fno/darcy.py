"""Darcy flow data for the FNO example: the coefficient ``a`` to the solution ``u``.

The FNO paper's generator (Li et al., 2021) on the unit square::

  -div(a grad u) = 1,   u = 0 on the boundary,

with ``a`` a thresholded Gaussian random field, ``N(0, (-lap + 9 I)^-2)`` in
the cosine (Neumann) basis: ``a_high`` (12) where the field is non-negative,
``a_low`` (3) elsewhere. The equation is solved with a five-point finite
difference stencil on the nodes ``linspace(0, 1, s)`` (boundary included).
A sample is ``x = a``, ``y = u``. `examples.fno.data` stores, caches and loads
the data sets.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg
import tqdm

DARCY_GRF_ALPHA = 2.0
DARCY_GRF_TAU = 3.0
DARCY_A_HIGH = 12.0
DARCY_A_LOW = 3.0


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


def generate(params: dict, *, bar: tqdm.tqdm) -> list:
  """Generates the Darcy arrays, in the order of `examples.fno.data.Dataset`.

  Args:
    params: Validated parameters (`examples.fno.data.parameters`).
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
      # One generator per sample, as for Navier-Stokes (see `examples.fno.navier_stokes`).
      rng = np.random.default_rng([params["seed"], split, i])
      a = darcy_coefficient(rng, s_solve, a_high=params["a_high"], a_low=params["a_low"])
      x[i] = a[::stride, ::stride]
      y[i] = solve_darcy(a)[::stride, ::stride]
      bar.update(1)
    arrays += [x, y]
  return arrays
