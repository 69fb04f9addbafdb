"""Examples of `tensor_galore_optax`; run them as modules from the repository root.

``python -m examples.fno`` trains a Fourier Neural Operator (see ``docs/fno.md``).
"""

import os

# On CPU, LAPACK (the factor refresh's eigh and QR) runs on OpenBLAS, whose worker
# threads spin against XLA's own threads: a 32x32 complex eigh measured 0.1 ms alone
# took over 100 ms inside a busy process. One LAPACK thread avoids it. This package
# is imported before any of its modules (and the benchmarks import it first), so
# the variable is set before numpy and jax load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
