"""Tests of `optimizer_state_shardings` and of training on several devices.

The sharding rule is checked here on abstract meshes (no devices needed). The
multi-device runs need 8 devices, which JAX fixes when it initialises, so they
run once in a subprocess (``tests/_sharded_checks.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; the rest of the suite
keeps its single device.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tensor_galore_optax import TuckerSpec, optimizer_state_shardings, tensor_galore_adamw

MESH = AbstractMesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _struct(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def _named(*spec):
  return NamedSharding(MESH, P(*spec))


def _mu(shardings):
  return shardings[0].base_optimizer_state.mu


# --- The rule, on an abstract 2 x 4 mesh ------------------------------------------------------


@pytest.mark.parametrize(
  "rank, expected",
  [
    ((8, 6, 4, 3), P("model", "data")),  # 8 % 4 == 0 and 6 % 2 == 0: both kept
    ((6, 6, 4, 3), P(None, "data")),  # 6 % 4 != 0: dimension 0 replicated
    ((8, 5, 4, 3), P("model")),  # 5 % 2 != 0: dimension 1 replicated
    ((6, 5, 4, 3), P()),
    (1.0, P("model", "data")),  # full rank: the core has the parameter's shape
  ],
)
def test_cores_follow_the_param_spec_where_divisible(rank, expected):
  params = {"w": _struct((16, 16, 8, 5), jnp.complex64)}
  tx = tensor_galore_adamw(1e-3, rank=rank, min_size=1)
  shardings = optimizer_state_shardings(tx, params, {"w": _named("model", "data")})
  assert _mu(shardings)["w"].spec == expected
  assert shardings[0].base_optimizer_state.nu["w"].spec == expected


def test_factors_counts_and_unprojected_leaves():
  params = {"w": _struct((16, 16, 8, 5), jnp.complex64), "b": _struct((16,))}
  param_shardings = {"w": _named("model"), "b": _named("model")}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1000)
  shardings = optimizer_state_shardings(tx, params, param_shardings)
  galore = shardings[0]
  assert len(galore.factors["w"]) == 4 and galore.factors["b"] == ()
  assert all(s.spec == P() for s in galore.factors["w"])
  assert galore.count.spec == P() and galore.base_optimizer_state.count.spec == P()
  # The bias is not projected: its moments are the bias's shape and sharding.
  assert _mu(shardings)["b"] == param_shardings["b"]


def test_mesh_axis_tuples_use_the_product_of_their_sizes():
  params = {"w": _struct((16, 8))}
  tx = tensor_galore_adamw(1e-3, rank=(8, 4), min_size=1)
  sharded = optimizer_state_shardings(tx, params, {"w": _named(("data", "model"))})
  assert _mu(sharded)["w"].spec == P(("data", "model"))  # 8 % (2 * 4) == 0
  tx = tensor_galore_adamw(1e-3, rank=(4, 4), min_size=1)
  replicated = optimizer_state_shardings(tx, params, {"w": _named(("data", "model"))})
  assert _mu(replicated)["w"].spec == P()


def test_grouped_modes_give_replicated_cores():
  params = {"w": _struct((16, 4, 4))}
  tx = tensor_galore_adamw(1e-3, rank=(8, 8), min_size=1, spec=TuckerSpec(modes=(0, (1, 2))))
  shardings = optimizer_state_shardings(tx, params, {"w": _named("model")})
  assert _mu(shardings)["w"].spec == P()  # core (8, 8): not the parameter's dimensions


def test_shard_projected_axes_false_keeps_only_unprojected_dimensions():
  # Matrix GaLore: the 32 rows are projected to 8, the 16 columns are kept.
  params = {"w": _struct((32, 16))}
  tx = tensor_galore_adamw(1e-3, rank=8, min_size=1, spec=TuckerSpec(num_projected=1))
  spec = {"w": _named("model", "data")}
  assert _mu(optimizer_state_shardings(tx, params, spec))["w"].spec == P("model", "data")
  kept = optimizer_state_shardings(tx, params, spec, shard_projected_axes=False)
  assert _mu(kept)["w"].spec == P(None, "data")


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.adam(1e-3),
    lambda: optax.adamw(1e-3),
    lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
    lambda: optax.masked(optax.adam(1e-3), {"w": True, "b": False}),
    lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
    lambda: tensor_galore_adamw(1e-3, rank=0.5, min_size=1),
    lambda: optax.MultiSteps(tensor_galore_adamw(1e-3, rank=0.5, min_size=1), 4),
    lambda: optax.apply_if_finite(tensor_galore_adamw(1e-3, rank=0.5, min_size=1), 3),
    lambda: optax.inject_hyperparams(
      tensor_galore_adamw, static_args=("rank", "update_proj_gap", "min_size")
    )(learning_rate=1e-3, rank=0.5, min_size=1),
  ],
  ids=[
    "adam",
    "adamw",
    "chain",
    "masked",
    "inject",
    "galore",
    "multisteps",
    "if_finite",
    "inject_galore",
  ],
)
def test_any_optimizer_gets_a_sharding_tree_of_its_state_structure(make):
  tx = make()
  # (16, 6): no factor or core of this leaf shares the parameter's shape.
  params = {"w": _struct((16, 6)), "b": _struct((8,))}
  param_shardings = {"w": _named("model"), "b": _named()}
  shardings = optimizer_state_shardings(tx, params, param_shardings)
  state = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  for s, leaf in zip(jax.tree.leaves(shardings), jax.tree.leaves(state)):
    assert isinstance(s, NamedSharding)
    if leaf.shape == (16, 6):  # a param-shaped moment or accumulator
      assert s == param_shardings["w"]
    elif leaf.ndim == 0:
      assert s.spec == P()


def test_plain_adam_moments_get_the_param_shardings():
  params = {"w": _struct((16, 8)), "b": _struct((8,))}
  param_shardings = {"w": _named("model", "data"), "b": _named("data")}
  shardings = optimizer_state_shardings(optax.adam(1e-3), params, param_shardings)
  assert shardings[0].mu == param_shardings and shardings[0].nu == param_shardings
  assert shardings[0].count.spec == P()


def test_map_params_treats_factors_and_cores_as_parameters():
  """Why the helper exists: `optax.tree.map_params` visits factors and cores as params."""
  params = {"w": jnp.zeros((16, 8, 4))}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1)
  visited = []
  optax.tree.map_params(tx, lambda v: visited.append(v.shape) or v, tx.init(params))
  assert (16, 13) in visited  # a factor
  assert (13, 7, 4) in visited  # the core-shaped moments


def test_a_single_sharding_applies_to_every_leaf_and_none_reads_the_leaves():
  mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
  sharding = NamedSharding(mesh, P("x"))
  params = {"w": jnp.ones((16, 8)), "b": jnp.ones(8)}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1)
  from_one = optimizer_state_shardings(tx, params, sharding)
  placed = jax.device_put(params, sharding)
  from_leaves = optimizer_state_shardings(tx, placed)
  assert from_one == from_leaves
  state = jax.jit(tx.init, out_shardings=from_one)(placed)
  for s, leaf in zip(jax.tree.leaves(from_one), jax.tree.leaves(state)):
    assert leaf.sharding.is_equivalent_to(s, leaf.ndim)


def test_bad_shardings_fail_clearly():
  params = {"w": _struct((16, 8)), "b": _struct((8,))}
  tx = tensor_galore_adamw(1e-3, min_size=1)
  with pytest.raises(ValueError, match="do not match the params tree"):
    optimizer_state_shardings(tx, params, {"w": _named()})
  with pytest.raises(TypeError, match=r"parameter \['b'\].*NamedSharding"):
    optimizer_state_shardings(tx, params, {"w": _named(), "b": P()})
  with pytest.raises(TypeError, match=r"parameter \['w'\]"):
    optimizer_state_shardings(tx, {"w": jnp.ones((4, 4))})  # a single-device array
  other = AbstractMesh((8,), ("x",), axis_types=(AxisType.Auto,))
  with pytest.raises(ValueError, match="one mesh"):
    optimizer_state_shardings(tx, params, {"w": _named(), "b": NamedSharding(other, P())})
  with pytest.raises(ValueError, match="at least one parameter"):
    optimizer_state_shardings(tx, {}, {})


# --- Eight devices, in a subprocess -----------------------------------------------------------

_SCRIPT = pathlib.Path(__file__).with_name("_sharded_checks.py")


@pytest.fixture(scope="module")
def sharded_results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, str(_SCRIPT)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=_SCRIPT.parent.parent,
  )
  results = {}
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      record = json.loads(line)
      results[record["check"]] = record
  assert proc.returncode == 0 and "total" in results, (
    f"{_SCRIPT.name} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-5000:]}"
  )
  return results


def _check(results, name):
  record = results[name]
  assert record["ok"], f"{name}: {record['detail']}"
  return record["detail"]


@pytest.mark.slow
def test_eight_simulated_devices(sharded_results):
  assert _check(sharded_results, "device_count").startswith("8 ")


@pytest.mark.slow
def test_fsdp_training_matches_one_device(sharded_results):
  """Weights sharded on their first axis, 10 steps over 4 refreshes, with the helper's
  shardings as out_shardings: within 1e-4 x scale in float32, no recompilation."""
  _check(sharded_results, "fsdp_matches_single_device")


@pytest.mark.slow
def test_fsdp_in_float64_is_one_device_up_to_summation_order(sharded_results):
  _check(sharded_results, "fsdp_float64_matches_single_device")


@pytest.mark.slow
def test_data_parallel_training_matches_one_device(sharded_results):
  _check(sharded_results, "data_parallel_matches_single_device")


@pytest.mark.slow
def test_replicated_projected_axes_train_identically(sharded_results):
  _check(sharded_results, "replicated_projected_axes_match")


@pytest.mark.slow
def test_collectives_and_small_eigendecompositions(sharded_results):
  report = json.loads(_check(sharded_results, "collectives_of_an_fsdp_step"))
  assert report["false"]["step_largest_all_gather"] < report["false"]["gradient_bytes"]


@pytest.mark.slow
def test_orbax_restores_a_sharded_state_and_resumes_bit_identically(sharded_results):
  _check(sharded_results, "orbax_restores_onto_the_helper_shardings")


@pytest.mark.slow
def test_explicit_mesh_axes_through_auto_axes(sharded_results):
  _check(sharded_results, "explicit_axes_with_auto_axes")


@pytest.mark.slow
def test_explicit_mesh_axes_with_the_plain_update(sharded_results):
  _check(sharded_results, "explicit_axes_unwrapped")
