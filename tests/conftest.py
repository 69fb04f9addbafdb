"""Shared test set-up."""

import os

# LAPACK's OpenBLAS threads spin against XLA's own threads on CPU and make small
# eigendecompositions orders of magnitude slower inside a busy process (see
# benchmarks/common.py). Set before anything loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
