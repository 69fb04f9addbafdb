"""Benchmarks of the FNO train step; run them as modules from the repository root.

``python -m benchmarks.memory``, ``python -m benchmarks.speed``,
``python -m benchmarks.refresh``, ``python -m benchmarks.accuracy``,
``python -m benchmarks.compare`` and ``python -m benchmarks.gpu`` (on a GPU); see
``docs/benchmarks.md``. ``python -m benchmarks.train`` trains one run of the
harness the accuracy studies use.
"""

# First: the examples package sets OpenBLAS's thread count before jax loads it.
import examples  # noqa: F401
