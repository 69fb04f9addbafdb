"""Benchmarks of the FNO train step; run them as modules from the repository root.

``python -m benchmarks.memory``, ``python -m benchmarks.speed``,
``python -m benchmarks.refresh``, ``python -m benchmarks.moment_policy`` and
``python -m benchmarks.gpu``; see ``docs/benchmarks.md``.
"""

# First: the examples package sets OpenBLAS's thread count before jax loads it.
import examples  # noqa: F401
