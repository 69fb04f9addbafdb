"""The leading subspace of one wide unfolding: Gram matrix and eigh against QR and a small SVD.

Times both routes side by side on the largest unfolding of an NS-128 spectral
weight's gradient (``64 x 135168``, complex64; random entries) and checks how
much of a graded spectrum's top subspace each keeps (singular values from 1 to
1e-5 over the kept directions), in float32.

Usage, from the repository root::

  python -m benchmarks.unfolding_subspace
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import examples  # noqa: F401  (one LAPACK thread, set before jax loads OpenBLAS)
from tensor_galore_optax import _refresh  # private: the two per-mode routes, without a step


def gram_route(a, rank):
  return _refresh._eigh_factor(a, rank, None)


def qr_route(a, rank):
  return _refresh._qr_svd_factor(a, rank, None)


def seconds(fn, a, repeats=3) -> float:
  fn(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    fn(a).block_until_ready()
  return (time.perf_counter() - start) / repeats


def main() -> None:
  re, im = jax.random.split(jax.random.key(0))
  wide = (jax.random.normal(re, (64, 135168)) + 1j * jax.random.normal(im, (64, 135168))).astype(
    jnp.complex64
  )
  times = {name: seconds(jax.jit(lambda a, f=f: f(a, 32)), wide) for name, f in
           (("gram + eigh", gram_route), ("qr + small svd", qr_route))}  # fmt: skip
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(24, 24)))
  v, _ = np.linalg.qr(rng.normal(size=(400, 24)))
  sigma = np.concatenate([np.logspace(0, -5, 16), np.full(8, 1e-6)])
  graded = jnp.asarray((u * sigma) @ v.T, jnp.float32)
  print("| route | seconds, 64 x 135168 complex64 | top-16 subspace kept, spectrum to 1e-5 |")
  print("|---|---|---|")
  for name, f in (("gram + eigh", gram_route), ("qr + small svd", qr_route)):
    kept = np.linalg.norm(u[:, :16].T @ np.asarray(f(graded, 16))) ** 2 / 16
    print(f"| {name} | {times[name]:.3f} | {kept:.4f} |")


if __name__ == "__main__":
  main()
