"""optax's own contributed-optimizer suite, run on `tensor_galore_adamw`.

The suite ships in the optax wheel as ``optax/contrib/_common_test.py``: an absl
``parameterized.TestCase`` whose tests are generated when its class is defined, from a
module-level list of optimizers, so the list cannot be changed after the module is imported,
and the class cannot be re-parametrised without restating the suite's other axes (targets,
dtypes). The least fragile point to intervene is the one call that receives the list:

* The shipped file is loaded unmodified, by the import system, into a private module object
  (``importlib.util.module_from_spec``; nothing is added to ``sys.modules``). While it loads,
  ``absl.testing.parameterized.product`` is wrapped so that a sequence of optimizer entries
  (dicts with an ``opt_name`` key) is replaced by ``OPTIMIZERS`` below; every other axis and
  every check of the suite is kept as optax wrote it. The wrapper is removed when the load
  ends, and the load fails if it never saw an optimizer list.
* For the duration of this module only (a module-scoped fixture, undone afterwards),
  ``optax.contrib.tensor_galore_adamw`` exists, because the suite looks optimizers up by name
  on ``optax.contrib``; and ``inject_hyperparams``, which the suite reaches as
  ``optax.schedules._inject.inject_hyperparams``, keeps ``STATIC_ARGS`` static: they decide
  shapes (which leaves are projected, the ranks) and when the factors are refreshed, so they
  cannot be traced. Recent suites list ``rank`` and ``update_proj_gap`` themselves (optax
  0.2.7 on); ``min_size`` is ours.

When the wheel does not ship the file, the module is skipped. ``CHECKED_OPTAX_VERSIONS`` says
which optax releases this was run against.
"""

import importlib.util
import types

import optax
import optax.contrib
import optax.schedules._inject
import pytest
from absl.testing import parameterized

import tensor_galore_optax

CHECKED_OPTAX_VERSIONS = ("0.2.5", "0.2.7", "0.2.8")

OPTIMIZERS = [
  # Default: the suite's small leaves stay with Adam at full size.
  {"learning_rate": 1e-2, "rank": 0.25},
  # Every leaf with ndim >= 2 projected, at full rank.
  {"learning_rate": 1e-2, "rank": 1.0, "min_size": 1},
  # Every leaf with ndim >= 2 projected at low rank.
  {"learning_rate": 1e-2, "rank": 0.5, "min_size": 1},
  # Rank-one factors, refreshed every 3 steps.
  {"learning_rate": 1e-2, "rank": 1, "min_size": 1, "update_proj_gap": 3},
]
OPTIMIZERS = [
  {
    "opt_name": "tensor_galore_adamw",
    "opt_kwargs": kwargs,
    "wrapper_name": None,
    "wrapper_kwargs": None,
  }
  for kwargs in OPTIMIZERS
]
STATIC_ARGS = ("rank", "update_proj_gap", "min_size")

_SPEC = importlib.util.find_spec("optax.contrib._common_test")
if _SPEC is None:
  pytest.skip(
    f"optax {optax.__version__} does not ship optax/contrib/_common_test.py",
    allow_module_level=True,
  )


def _load_suite() -> types.ModuleType:
  original = parameterized.product
  replaced = []

  def product(*kwargs_seqs, **testgrid):
    seqs = []
    for seq in kwargs_seqs:
      if seq and all(isinstance(entry, dict) and "opt_name" in entry for entry in seq):
        replaced.append(len(seq))
        seq = tuple(OPTIMIZERS)
      seqs.append(seq)
    return original(*seqs, **testgrid)

  module = importlib.util.module_from_spec(_SPEC)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(parameterized, "product", product)
    _SPEC.loader.exec_module(module)
  assert replaced, (
    f"optax {optax.__version__}: the suite no longer passes its optimizer list to "
    f"parameterized.product (checked with optax {', '.join(CHECKED_OPTAX_VERSIONS)})"
  )
  return module


_SUITE = _load_suite()
ContribTest = _SUITE.ContribTest


@pytest.fixture(scope="module", autouse=True)
def _tensor_galore_in_optax_contrib():
  inject_hyperparams = optax.schedules._inject.inject_hyperparams

  def inject_with_static_min_size(inner_factory, static_args=(), *args, **kwargs):
    if inner_factory is tensor_galore_optax.tensor_galore_adamw:
      static_args = (static_args,) if isinstance(static_args, str) else tuple(static_args)
      static_args += STATIC_ARGS
    return inject_hyperparams(inner_factory, static_args, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(
      optax.contrib, "tensor_galore_adamw", tensor_galore_optax.tensor_galore_adamw, raising=False
    )
    mp.setattr(optax.schedules._inject, "inject_hyperparams", inject_with_static_min_size)
    yield
