"""Every error a user can meet, one parametrised table per public entry point.

Each case names the words its message must contain: the offending argument or leaf, what is
wrong, and where it helps, the fix. (Shardings: tests/test_sharding.py.)
"""

import jax.numpy as jnp
import optax
import pytest
from _helpers import raises_naming

from tensor_galore_optax import (
  TuckerSpec,
  projection_plan,
  scale_by_core_adam,
  tensor_galore,
  tensor_galore_adamw,
)

# --- tensor_galore(...): at construction -------------------------------------------------------

CONSTRUCTION = {
  "positional rank": ({"args": (1e-3,)}, TypeError, ["tensor_galore(rank=0.001)", "keyword"]),
  "negative rank": ({"rank": -3}, ValueError, ["rank must be positive, got -3"]),
  "rank above 1.0": ({"rank": 1.5}, ValueError, ["(0, 1]", "got 1.5"]),
  "rank of the wrong type": ({"rank": "big"}, TypeError, ["rank must be an int", "'big'"]),
  "bool rank": ({"rank": True}, TypeError, ["rank must be", "True"]),
  "gap zero": ({"update_proj_gap": 0}, ValueError, ["update_proj_gap must be at least 1"]),
  "gap float": ({"update_proj_gap": 2.5}, TypeError, ["update_proj_gap must be an int", "2.5"]),
  "min_size negative": ({"min_size": -1}, ValueError, ["min_size must be at least 0, got -1"]),
  "scale string": ({"scale": "auto"}, ValueError, ["scale must be", "'matched'", "'auto'"]),
  "scale nan": ({"scale": float("nan")}, ValueError, ["scale must be a positive number"]),
  "scale negative": ({"scale": -1.0}, ValueError, ["scale must be", "-1.0"]),
  "residual zero": ({"residual_scale": 0.0}, ValueError, ["residual_scale must be None or"]),
  "residual string": ({"residual_scale": "4"}, ValueError, ["residual_scale", "'4'"]),
  "base not a transformation": (
    {"base_optimizer": optax.scale_by_adam},
    TypeError,
    ["base_optimizer must be an optax.GradientTransformation"],
  ),
}


@pytest.mark.parametrize("case", list(CONSTRUCTION))
def test_tensor_galore_refuses_bad_arguments_at_construction(case):
  kwargs, error, words = CONSTRUCTION[case]
  kwargs = dict(kwargs)
  args = kwargs.pop("args", ())
  with raises_naming(error, *words):
    tensor_galore(*args, **kwargs)


# --- tensor_galore_adamw(...) -------------------------------------------------------------------

ADAMW = {
  "positional rank": ((1e-3, 0.25), {}, TypeError, ["tensor_galore_adamw(rank=0.25)"]),
  "bad rank": ((1e-3,), {"rank": 0}, ValueError, ["rank must be positive"]),
  "bad scale": ((1e-3,), {"scale": 0}, ValueError, ["scale must be a positive number"]),
  "second moment unknown": (
    (1e-3,),
    {"second_moment": "adafactor"},
    ValueError,
    ["second_moment must be one of", "'factored'", "'adafactor'"],
  ),
  "mu_dtype not a dtype": ((1e-3,), {"mu_dtype": "bf16"}, TypeError, ["mu_dtype", "'bf16'"]),
  "mu_dtype an integer": ((1e-3,), {"mu_dtype": jnp.int16}, TypeError, ["mu_dtype", "int8"]),
  "parameter scale not a bool": (
    (1e-3,),
    {"multiply_by_parameter_scale": 1},
    TypeError,
    ["multiply_by_parameter_scale must be True or False, got 1"],
  ),
}


@pytest.mark.parametrize("case", list(ADAMW))
def test_tensor_galore_adamw_refuses_bad_arguments_at_construction(case):
  args, kwargs, error, words = ADAMW[case]
  with raises_naming(error, *words):
    tensor_galore_adamw(*args, **kwargs)


# --- scale_by_core_adam(...) --------------------------------------------------------------------

CORE_ADAM = {
  "second moment unknown": (
    {"second_moment": "adafactor"},
    ValueError,
    ["second_moment must be one of", "'factored'"],
  ),
  "mu_dtype not a dtype": ({"mu_dtype": "bf16"}, TypeError, ["mu_dtype", "'bf16'"]),
  "mu_dtype an integer": ({"mu_dtype": jnp.int16}, TypeError, ["mu_dtype", "int8"]),
}


@pytest.mark.parametrize("case", list(CORE_ADAM))
def test_scale_by_core_adam_refuses_bad_arguments_naming_them(case):
  kwargs, error, words = CORE_ADAM[case]
  with raises_naming(error, *words):
    scale_by_core_adam(**kwargs)


# --- TuckerSpec(...) ----------------------------------------------------------------------------

SPECS = {
  "modes a string": ({"modes": "ab"}, TypeError, ["TuckerSpec.modes must be None or a sequence"]),
  "an axis a float": ({"modes": (0, 1.5)}, TypeError, ["an axis group is an int", "1.5"]),
  "an axis in a group a float": ({"modes": ((0, 1.5),)}, TypeError, ["axes are ints", "1.5"]),
  "an empty group": ({"modes": ((),)}, ValueError, ["TuckerSpec.modes: empty group"]),
  "a bad rank": ({"rank": 0}, ValueError, ["TuckerSpec.rank: rank must be positive"]),
  "num_projected zero": ({"num_projected": 0}, ValueError, ["num_projected must be positive"]),
  "num_projected a word": ({"num_projected": "some"}, TypeError, ['None or "all"', "'some'"]),
  "batch axes a float": ({"batch_axes": 0.5}, TypeError, ["TuckerSpec.batch_axes"]),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_tucker_spec_refuses_bad_fields_naming_them(case):
  kwargs, error, words = SPECS[case]
  with raises_naming(error, *words):
    TuckerSpec(**kwargs)


# --- init(params): a leaf that cannot be planned -------------------------------------------------

W = {"w": jnp.ones((4, 5, 6))}
INIT = {
  "rank tuple too short": (W, {"rank": (2, 2)}, ValueError, ["leaf ['w']", "2 entries", "3 modes"]),
  "axis out of range": (
    W,
    {"spec": TuckerSpec(modes=(0, 3, (1, 2)))},
    ValueError,
    ["leaf ['w']", "axis 3", "out of range"],
  ),
  "axis twice": (W, {"spec": TuckerSpec(modes=(0, (0, 1), 2))}, ValueError, ["more than once"]),
  "axis left out": (W, {"spec": TuckerSpec(modes=(0, 1))}, ValueError, ["leave axes [2] out"]),
  "no axis left": (
    W,
    {"spec": TuckerSpec(batch_axes=(0, 1, 2))},
    ValueError,
    ["leaf ['w']", "leave no axis to project"],
  ),
  "rank tuple and num_projected": (
    W,
    {"spec": TuckerSpec(rank=(2, None, 3), num_projected=1)},
    ValueError,
    ["leaf ['w']", "not both"],
  ),
  "num_projected beyond the modes": (
    {"w": jnp.ones((6, 5, 4))},
    {"spec": TuckerSpec(num_projected=4)},
    ValueError,
    ["leaf ['w']", "num_projected=4 exceeds the 3 modes of sizes (6, 5, 4)"],
  ),
  "a scalar leaf with a spec": (
    {"s": jnp.ones(())},
    {"spec": {"s": TuckerSpec()}},
    ValueError,
    ["leaf ['s']", "scalar leaf has no modes"],
  ),
  "not an array": (
    {"w": jnp.ones((4, 5)), "n": 3.0},
    {},
    TypeError,
    ["leaf ['n'] is a float, not an array"],
  ),
  "an integer leaf": ({"w": jnp.ones((4, 5), jnp.int32)}, {}, TypeError, ["leaf ['w']", "int32"]),
  "spec tree mismatch": (W, {"spec": {"v": None}}, ValueError, ["spec does not match the params"]),
  "spec entry not a spec": (
    W,
    {"spec": {"w": 0.5}},
    TypeError,
    ["spec for leaf ['w'] is 0.5", "expected a TuckerSpec or None"],
  ),
  "a base optimizer needing params": (
    W,
    {"base_optimizer": optax.adamw(1e-3)},
    ValueError,
    ["must not need `params`", "add_decayed_weights"],
  ),
}


@pytest.mark.parametrize("case", list(INIT))
def test_init_refuses_what_it_cannot_plan_naming_the_leaf(case):
  params, kwargs, error, words = INIT[case]
  tx = tensor_galore(**{"min_size": 1, **kwargs})
  with raises_naming(error, *words):
    tx.init(params)
  if error is ValueError and "spec" in kwargs and "base_optimizer" not in kwargs:
    with raises_naming(error, *words):  # the plan report says the same
      projection_plan(params, min_size=1, **kwargs)


# --- update(grads, state): a state that is not this transformation's for these params ----------


def _state(**kwargs):
  tx = tensor_galore(rank=0.5, min_size=1, **kwargs)
  return tx.init({"w": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))})


UPDATE = {
  "another shape": (
    {},
    lambda: {"w": jnp.ones((8, 5, 4)), "m": jnp.ones((16, 24))},
    lambda: _state(),
    ValueError,
    ["leaf ['w']", "(8, 5, 4)", "initialised for other params"],
  ),
  "another tree": (
    {},
    lambda: {"v": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))},
    lambda: _state(),
    ValueError,
    ["does not match the params tree"],
  ),
  "complex gradients for a real state": (
    {},
    lambda: {"w": jnp.ones((6, 5, 4), jnp.complex64), "m": jnp.ones((16, 24))},
    lambda: _state(),
    TypeError,
    ["leaf ['w']", "complex", "imaginary part would be dropped"],
  ),
  "a state without the residual's moments": (
    {},
    lambda: {"w": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))},
    lambda: _state(residual_scale=None),
    ValueError,
    ["leaf ['m']", "residual moments have shapes", "residual_scale"],
  ),
  "moments of other shapes": (
    {"rank": 0.25},
    lambda: {"w": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))},
    lambda: _state()._replace(
      factors=tensor_galore(rank=0.25, min_size=1)
      .init({"w": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))})
      .factors
    ),
    ValueError,
    ["leaf ['m']", "the base optimizer sees an array of shape (4, 24)", "`mu` holds (8, 24)"],
  ),
  "another transformation's state": (
    {},
    lambda: {"w": jnp.ones((6, 5, 4)), "m": jnp.ones((16, 24))},
    lambda: optax.adam(1e-3).init({"w": jnp.ones((6, 5, 4))}),
    ValueError,
    ["expected a TensorGaLoreState", "Initialise a new state"],
  ),
}


@pytest.mark.parametrize("case", list(UPDATE))
def test_update_refuses_a_state_for_other_params_naming_the_leaf(case):
  kwargs, grads, state, error, words = UPDATE[case]
  tx = tensor_galore(**{"rank": 0.5, "min_size": 1, **kwargs})
  with raises_naming(error, *words):
    tx.update(grads(), state())
