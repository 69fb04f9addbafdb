"""Shared test set-up."""

import os

# LAPACK's OpenBLAS threads spin against XLA's own threads on CPU and make small
# eigendecompositions orders of magnitude slower inside a busy process (see
# benchmarks/common.py). Set before anything loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pathlib  # noqa: E402
import sys  # noqa: E402

# The repo root on `sys.path`, so that the examples and benchmarks import.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
