"""Shared test set-up: CPU threads, eight host devices and the hypothesis profiles."""

import os

# LAPACK's OpenBLAS threads spin against XLA's own threads on CPU and make small
# eigendecompositions orders of magnitude slower inside a busy process (see
# examples/__init__.py). Set before anything loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Many tests compile the same small programs (every run of the example's tiny FNO compiles its
# train step anew): a compilation cache shared by the session's processes (pytest-xdist workers
# and the example's subprocesses inherit the variable) compiles each program once. The process
# that creates the directory removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="tensor-galore-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

# Compiling, not running, is most of the suite's time on CPU (the tests' arrays are small), and
# LLVM's optimisation of XLA's CPU code is most of each compilation: without it the suite runs
# about a fifth faster. Results may then round differently in the last bits (no fused
# multiply-adds, other vectorisation of reductions; measured: at most a few float32 ulps), far
# below every tolerance here. Subprocesses inherit the flag. TENSOR_GALORE_TESTS_OPTIMIZE=1
# tests the optimised code instead.
if os.environ.get("TENSOR_GALORE_TESTS_OPTIMIZE") != "1":
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Eight CPU devices for the whole suite, so that tests/test_sharding.py can shard over a mesh
# of 8 (single-device tests use the first one). JAX reads this when its backend starts, which
# must not have happened yet; unlike XLA_FLAGS, it does not leak into subprocesses (the example
# runs keep their own device count).
jax.config.update("jax_num_cpu_devices", 8)

# Property tests: random and fresh examples while developing; in CI (`CI` set, as `.ci/run`
# does) the examples are derived from each test's name, so a failure reproduces on any
# machine. `HYPOTHESIS_PROFILE=ci pytest ...` replays CI's examples locally.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile(
  "ci",
  derandomize=True,
  database=None,
  deadline=None,
  print_blob=True,
  suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
