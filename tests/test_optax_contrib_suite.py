"""optax's own contributed-optimizer suite, run on `tensor_galore_adamw`.

The suite ships in the optax wheel (``optax/contrib/_common_test.py``). Its
optimizer list is fixed when the module is defined, so the module's source is
loaded with the list replaced by ours (every check of the suite is kept), and
``min_size`` joins its list of hyperparameters that ``inject_hyperparams``
cannot trace (``rank`` and ``update_proj_gap`` already are on it).
"""

import importlib.util
import pathlib
import types

import optax.contrib
import pytest

import tensor_galore_optax

_OURS = """
_MAIN_OPTIMIZERS_UNDER_TEST = [
    # Default: the suite's small leaves stay with Adam at full size.
    {'opt_name': 'tensor_galore_adamw', 'opt_kwargs': {'learning_rate': 1e-2, 'rank': 0.25}},
    # Every leaf with ndim >= 2 projected, at full rank.
    {'opt_name': 'tensor_galore_adamw',
     'opt_kwargs': {'learning_rate': 1e-2, 'rank': 1.0, 'min_size': 1}},
]
for optimizer in _MAIN_OPTIMIZERS_UNDER_TEST:
"""


def _load_suite() -> types.ModuleType:
  spec = importlib.util.find_spec("optax.contrib._common_test")
  if spec is None or spec.origin is None:
    pytest.skip("this optax build does not ship optax/contrib/_common_test.py")
  source = pathlib.Path(spec.origin).read_text()
  start = source.index("_MAIN_OPTIMIZERS_UNDER_TEST = [")
  end = source.index("for optimizer in _MAIN_OPTIMIZERS_UNDER_TEST:")
  source = source[:start] + _OURS.strip("\n").rsplit("\n", 1)[0] + "\n" + source[end:]
  # Wrappers (mechanize, schedule_free, ...) and their base optimizers are
  # optax's own business: keep only our entries.
  source = source.replace(
    "_ALL_OPTIMIZERS_UNDER_TEST = tuple(",
    "_OTHER_OPTIMIZERS_UNDER_TEST = []\n"
    "_MAIN_OPTIMIZERS_UNDER_TEST = [o for o in _MAIN_OPTIMIZERS_UNDER_TEST "
    "if o['opt_name'] == 'tensor_galore_adamw']\n"
    "_ALL_OPTIMIZERS_UNDER_TEST = tuple(",
    1,
  )
  source = source.replace(
    "'ns_steps', 'rank', 'update_proj_gap'", "'ns_steps', 'rank', 'update_proj_gap', 'min_size'", 1
  )
  assert "'min_size'" in source and "tensor_galore_adamw" in source, "suite layout changed"
  module = types.ModuleType("optax_contrib_common_suite")
  module.__file__ = spec.origin
  exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102
  return module


# The suite looks optimizers up by name on `optax.contrib`.
optax.contrib.tensor_galore_adamw = tensor_galore_optax.tensor_galore_adamw
ContribTest = _load_suite().ContribTest
