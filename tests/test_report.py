"""`projection_plan`: each leaf's modes and bytes, before training, as the state will hold them."""

import jax
import jax.numpy as jnp
import optax
import pytest

from tensor_galore_optax import (
  TuckerSpec,
  optimizer_state_bytes,
  projection_plan,
  tensor_galore_adamw,
)
from tensor_galore_optax._memory import tree_bytes

PARAMS = {
  "spectral": jax.ShapeDtypeStruct((32, 32, 16, 9), jnp.complex64),
  "conv": jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32),
  "dense": jax.ShapeDtypeStruct((512, 256), jnp.float32),
  "bias": jax.ShapeDtypeStruct((64,), jnp.float32),
}


@pytest.mark.parametrize(
  "spec, adam",
  [
    (None, {}),
    (TuckerSpec(num_projected="all"), {}),
    (None, {"second_moment": "factored", "mu_dtype": "bfloat16"}),
  ],
  ids=["fewest", "all", "factored_bf16"],
)
def test_the_plan_adds_up_to_the_optimizers_state(spec, adam):
  plan = projection_plan(PARAMS, rank=0.25, spec=spec, min_size=1000, **adam)
  assert plan.state_bytes == optimizer_state_bytes(
    tensor_galore_adamw(1e-3, rank=0.25, spec=spec, min_size=1000, **adam), PARAMS
  )
  assert plan.adamw_state_bytes == optimizer_state_bytes(optax.adamw(1e-3), PARAMS)
  counters = 2 * 4  # tensor_galore's and Adam's int32 counts
  assert sum(leaf.state_bytes for leaf in plan.leaves) + counters == plan.state_bytes
  assert sum(leaf.adamw_bytes for leaf in plan.leaves) + 4 == plan.adamw_state_bytes


def test_the_plan_names_each_leaf_its_modes_and_the_memory_asked_for():
  plan = projection_plan(PARAMS, rank=0.25, min_size=1000)
  by_path = {leaf.path: leaf for leaf in plan.leaves}
  assert by_path["['spectral']"].modes == ((32, 8), (32, None), (16, None), (9, None))
  assert by_path["['conv']"].modes == ((3, None), (3, None), (64, 16), (64, None))
  assert by_path["['dense']"].modes == ((512, None), (256, 64))  # the smaller side
  assert by_path["['bias']"].modes == ()  # not projected
  bias = by_path["['bias']"]
  assert bias.state_bytes == bias.adamw_bytes == 2 * tree_bytes(PARAMS["bias"])
  # A quarter of each kernel in the core, plus its factor: close to a quarter of AdamW's.
  conv = by_path["['conv']"]
  assert 0.25 <= conv.state_bytes / conv.adamw_bytes <= 0.28
  table = str(plan)
  assert "['conv']" in table and "3, 3, 64->16, 64" in table and "x AdamW's" in table


@pytest.mark.parametrize("spec", [None, {"w": TuckerSpec(batch_axes=(0,))}], ids=["auto", "named"])
def test_stacked_layers_are_planned_per_layer(spec):
  params = {"w": jax.ShapeDtypeStruct((4, 32, 32, 16, 9), jnp.complex64)}
  plan = projection_plan(params, rank=0.25, spec=spec)
  (leaf,) = plan.leaves
  assert leaf.layers == (4,)
  assert leaf.modes == ((32, 8), (32, None), (16, None), (9, None))
  assert "4 x [32->8, 32, 16, 9]" in str(plan)
  assert plan.state_bytes == optimizer_state_bytes(
    tensor_galore_adamw(1e-3, rank=0.25, spec=spec), params
  )


def test_the_plan_of_each_leaf_is_the_states():
  """Per leaf, the modes reported are those of the factors the optimizer holds."""
  plan = projection_plan(PARAMS, rank=0.25, min_size=1000)
  state = jax.eval_shape(tensor_galore_adamw(1e-3, rank=0.25, min_size=1000).init, PARAMS)[0]
  for leaf in plan.leaves:
    key = leaf.path[2:-2]  # "['conv']" -> "conv"
    factor_shapes = [tuple(u.shape) for u in state.factors[key]]
    assert factor_shapes == [(i, r) for i, r in leaf.modes if r is not None], leaf.path


def test_a_bare_tensor_galore_is_planned_with_the_same_defaults():
  from tensor_galore_optax import tensor_galore

  plan = projection_plan(PARAMS, min_size=1000)
  assert plan.state_bytes == optimizer_state_bytes(tensor_galore(min_size=1000), PARAMS)
