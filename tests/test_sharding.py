"""Tests of `optimizer_state_shardings` and of training on several devices.

The sharding rule is checked first on abstract meshes (no devices needed). The multi-device
runs use the 8 CPU devices that ``tests/conftest.py`` asks JAX for before its backend starts,
and compare each sharded run with the same run on one device.
"""

import gc
import pathlib
import re
import tempfile

import chex
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


def test_compact_settings_shard_the_paired_first_moment_and_replicate_the_factored_second():
  params = {"w": _struct((16, 16, 8, 5), jnp.complex64)}
  tx = tensor_galore_adamw(
    1e-3, rank=(8, 6, None, None), min_size=1, second_moment="factored", mu_dtype="bfloat16"
  )
  shardings = optimizer_state_shardings(tx, params, {"w": _named("model", "data")})
  # (8, 6, 8, 5, 2) bfloat16 pairs: the core's rule, the pairs whole.
  assert _mu(shardings)["w"].spec == P("model", "data")
  # The row and column means: a few numbers per leaf, replicated.
  nu = shardings[0].base_optimizer_state.nu["w"]
  assert nu.mean_d0.spec == P() and nu.mean_d1.spec == P()
  state = jax.eval_shape(tx.init, params)[0].base_optimizer_state
  assert state.mu["w"].shape == (8, 6, 8, 5, 2)


def test_an_int8_first_moment_is_replicated():
  """Its blocks run across the core's dimensions, so no dimension of the parameter maps onto
  them: the values and scales are replicated (a quarter of a float32 moment's bytes each)."""
  params = {"w": _struct((16, 16, 8, 5), jnp.complex64)}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1, mu_dtype="int8")
  shardings = optimizer_state_shardings(tx, params, {"w": _named("model", "data")})
  mu = _mu(shardings)["w"]
  assert mu.values.spec == P() and mu.scales.spec == P()
  state = jax.eval_shape(tx.init, params)[0].base_optimizer_state
  assert state.mu["w"].values.shape == (8 * 16 * 8 * 5 * 2 // 64, 64)


def test_factors_counts_and_unprojected_leaves():
  params = {"w": _struct((16, 16, 8, 5), jnp.complex64), "b": _struct((16,))}
  param_shardings = {"w": _named("model"), "b": _named("model")}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1000)
  shardings = optimizer_state_shardings(tx, params, param_shardings)
  galore = shardings[0]
  assert len(galore.factors["w"]) == 1 and galore.factors["b"] == ()  # the input channels
  assert all(s.spec == P() for s in galore.factors["w"])
  # The novelty of each factor column (the warm-up after a refresh): replicated as the factors.
  assert len(galore.novelty["w"]) == 1 and galore.novelty["b"] == ()
  assert all(s.spec == P() for s in galore.novelty["w"])
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
  tx = tensor_galore_adamw(1e-3, rank=(8, None), min_size=1)
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
  # rank 0.5: the first mode alone reaches it, 8 of 16.
  assert (16, 8) in visited  # a factor
  assert (8, 8, 4) in visited  # the core-shaped moments


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


# --- Training on eight devices ----------------------------------------------------------------

STEPS = 10  # with GAP = 3, refreshes at steps 0, 3, 6 and 9
GAP = 3
BATCH = 64
# Sharded and single-device runs differ only by the order of floating-point
# sums. In float64 they agree to ~1e-14 of each leaf's scale. In float32 the
# refresh amplifies round-off: an eigenvector of a Gram matrix moves by about
# eps * lambda_1 / gap, ~1e-5 here, and Adam passes that on to the weights.
REL_TOL = {jnp.float32: 1e-4, jnp.float64: 1e-10}

SPEC = {
  # core (8, 12, 6, 3): dimension 0 stays divisible by 8, so it stays sharded.
  "spectral": TuckerSpec(rank=(8, 12, 6, 3)),
  # Matrix GaLore, the rows projected: core (8, 16), sharded like the weight's rows.
  "dense": TuckerSpec(rank=(8, None)),
  # core (12, 6, 5): 12 is not divisible by 8, so the core is replicated.
  "mix": TuckerSpec(rank=(12, 6, 5)),
  "bias": None,
}


def _complex_normal(key, shape):
  kr, ki = jax.random.split(key)
  return jax.random.normal(kr, shape) + 1j * jax.random.normal(ki, shape)


def _tucker(key, core_shape, shape, cplx):
  """A random tensor of multilinear rank ``core_shape``: gradients with clear spectral gaps."""
  keys = jax.random.split(key, len(shape) + 1)
  normal = _complex_normal if cplx else jax.random.normal
  t = normal(keys[0], core_shape)
  for n, (i, r) in enumerate(zip(shape, core_shape)):
    u, _ = jnp.linalg.qr(normal(keys[n + 1], (i, r)))
    t = jnp.moveaxis(jnp.tensordot(t, u.T, axes=(n, 0)), -1, n)
  return t


def _problem(dtype=jnp.float32):
  """Params, a teacher of the ranks above (so refreshes are well conditioned) and data."""
  ks = jax.random.split(jax.random.key(0), 10)
  teacher = {
    "spectral": 4 * _tucker(ks[0], (8, 12, 6, 3), (16, 16, 8, 5), True),
    "dense": 4 * _tucker(ks[1], (8, 8), (32, 16), False),
    "mix": 4 * _tucker(ks[2], (12, 6, 5), (16, 12, 10), False),
    "bias": jax.random.normal(ks[3], (32,)),
  }
  params = {
    "spectral": 0.1 * _complex_normal(ks[4], (16, 16, 8, 5)),
    "dense": 0.1 * jax.random.normal(ks[5], (32, 16)),
    "mix": 0.1 * jax.random.normal(ks[6], (16, 12, 10)),
    "bias": jnp.zeros(32),
  }
  x = jax.random.normal(ks[7], (BATCH, 16))
  complex_dtype = jnp.result_type(dtype, jnp.complex64)
  params, teacher, x = jax.tree.map(
    lambda a: a.astype(complex_dtype if jnp.iscomplexobj(a) else dtype), (params, teacher, x)
  )
  return params, x, _predict(teacher, x)


def _predict(p, x):
  return (
    jnp.einsum("bi,iojk->bojk", x.astype(p["spectral"].dtype), p["spectral"]),
    x @ p["dense"].T + p["bias"],
    jnp.einsum("bi,ijk->bjk", x, p["mix"]),
  )


def _loss(p, x, ys):
  return sum(jnp.mean(jnp.abs(a - b) ** 2) for a, b in zip(_predict(p, x), ys))


def _optimizer():
  return tensor_galore_adamw(1e-2, spec=SPEC, update_proj_gap=GAP, weight_decay=1e-4)


def _make_step(tx, update=None):
  update = update or tx.update

  def step(params, state, x, ys):
    grads = optax.tree.conj(jax.grad(_loss)(params, x, ys))  # descent direction for complex
    updates, state = update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _train(step, params, state, x, ys):
  for _ in range(STEPS):
    params, state = step(params, state, x, ys)
  return params, state


def _reference(dtype=jnp.float32):
  """The single-device run every sharded run is compared with."""
  params, x, ys = _problem(dtype)
  tx = _optimizer()
  return jax.tree.map(np.asarray, _train(jax.jit(_make_step(tx)), params, tx.init(params), x, ys))


def _assert_close(tree, reference, dtype=jnp.float32):
  """Equal up to REL_TOL of each leaf's largest magnitude (Adam's moments are tiny); a factor
  column's novelty, a fraction computed as ``1 - |overlap|^2``, up to REL_TOL of 1."""
  for path, a, b in zip(
    jax.tree_util.tree_flatten_with_path(reference)[0],
    jax.tree.leaves(tree),
    jax.tree.leaves(reference),
  ):
    scale = max(float(np.max(np.abs(b))), 1e-30) if b.size else 1.0
    if ".novelty" in jax.tree_util.keystr(path[0]):
      scale = 1.0
    chex.assert_trees_all_close(
      a, b, atol=REL_TOL[dtype] * scale, rtol=0, custom_message=jax.tree_util.keystr(path[0])
    )


def _assert_shardings(tree, shardings):
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  for path, a, s in zip(paths, jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    assert a.sharding.is_equivalent_to(s, a.ndim), (path, a.sharding, s)


def _fsdp_setup(mesh, dtype=jnp.float32):
  params, x, ys = _problem(dtype)
  tx = _optimizer()
  param_shardings = {
    "spectral": NamedSharding(mesh, P("fsdp")),
    "dense": NamedSharding(mesh, P("fsdp")),
    "mix": NamedSharding(mesh, P("fsdp")),
    "bias": NamedSharding(mesh, P()),
  }
  return params, x, ys, tx, param_shardings


@pytest.fixture(scope="module")
def devices():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip(
      f"needs 8 devices, the {jax.default_backend()} backend has {len(devices)} "
      "(tests/conftest.py gives the CPU backend 8)"
    )
  return devices[:8]


@pytest.fixture(scope="module")
def reference(devices):
  del devices
  return _reference()


def _explicit_mesh(devices):
  return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,), devices=devices)


def test_eight_cpu_devices():
  assert len(jax.devices("cpu")) == 8, jax.devices("cpu")


def _fsdp_run(devices, dtype, ref):
  """Big weights sharded over their first axis; 10 steps crossing 4 refreshes."""
  mesh = Mesh(np.array(devices), ("fsdp",))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh, dtype)
  gc.collect()  # Only arrays the helper would create may change the count below.
  gc.disable()
  try:
    before = len(jax.live_arrays())
    state_shardings = optimizer_state_shardings(tx, params, param_shardings)
    after = len(jax.live_arrays())
  finally:
    gc.enable()
  assert after == before, "the helper allocated arrays"
  galore = state_shardings[0]
  specs = {k: s.spec for k, s in galore.base_optimizer_state.mu.items()}
  assert specs == {"spectral": P("fsdp"), "dense": P("fsdp"), "mix": P(), "bias": P()}, specs
  assert all(f.spec == P() for f in jax.tree.leaves((galore.factors, galore.novelty)))

  params = jax.device_put(params, param_shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  _assert_shardings(state, state_shardings)
  step = jax.jit(
    _make_step(tx),
    out_shardings=(param_shardings, state_shardings),
    donate_argnums=(0, 1),
  )
  for i in range(STEPS):
    params, state = step(params, state, x, ys)
    # Every step's outputs have the requested layout, so the step never recompiles.
    _assert_shardings((params, state), (param_shardings, state_shardings))
    if i == 0:
      first_factors = jax.tree.map(np.asarray, state[0].factors)
  assert step._cache_size() == 1, step._cache_size()
  assert int(state[0].count) == STEPS
  assert not np.allclose(first_factors["spectral"][0], state[0].factors["spectral"][0])
  _assert_close((params, state), ref, dtype)


@pytest.mark.slow
def test_fsdp_training_matches_one_device(devices, reference):
  """Weights sharded on their first axis, 10 steps over 4 refreshes, with the helper's
  shardings as out_shardings: within 1e-4 x scale in float32, no recompilation."""
  _fsdp_run(devices, jnp.float32, reference)


@pytest.mark.slow
def test_fsdp_in_float64_is_one_device_up_to_summation_order(devices):
  with jax.enable_x64(True):
    _fsdp_run(devices, jnp.float64, _reference(jnp.float64))


@pytest.mark.slow
def test_data_parallel_training_matches_one_device(devices, reference):
  """Batch sharded over 8 devices, params and state replicated."""
  mesh = Mesh(np.array(devices), ("data",))
  params, x, ys = _problem()
  tx = _optimizer()
  replicated = NamedSharding(mesh, P())
  param_shardings = jax.tree.map(lambda _: replicated, params)
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  assert all(s.spec == P() for s in jax.tree.leaves(state_shardings))
  x = jax.device_put(x, NamedSharding(mesh, P("data")))
  ys = jax.device_put(ys, NamedSharding(mesh, P("data")))
  params = jax.device_put(params, param_shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  step = jax.jit(_make_step(tx), out_shardings=(param_shardings, state_shardings))
  params, state = _train(step, params, state, x, ys)
  _assert_shardings((params, state), (param_shardings, state_shardings))
  _assert_close((params, state), reference)


@pytest.mark.slow
def test_replicated_projected_axes_train_identically(devices, reference):
  """``shard_projected_axes=False``: cores replicated along projected dimensions."""
  mesh = Mesh(np.array(devices), ("fsdp",))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  state_shardings = optimizer_state_shardings(
    tx, params, param_shardings, shard_projected_axes=False
  )
  specs = {k: s.spec for k, s in state_shardings[0].base_optimizer_state.mu.items()}
  assert specs == {"spectral": P(), "dense": P(), "mix": P(), "bias": P()}, specs
  params = jax.device_put(params, param_shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  step = jax.jit(_make_step(tx), out_shardings=(param_shardings, state_shardings))
  params, state = _train(step, params, state, x, ys)
  _assert_close((params, state), reference)


def _collectives(hlo: str):
  """(computation, op, bytes) of every collective in compiled HLO text."""
  itemsize = {"f32": 4, "c64": 8, "f64": 8, "c128": 16, "s32": 4, "pred": 1, "bf16": 2}
  found, computation = [], None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
    m = re.search(
      r"= (\(.*?\)|\w+\[[\d,]*\]\S*) (all-gather|all-reduce|reduce-scatter|all-to-all)\(", line
    )
    if m:
      size = sum(
        itemsize.get(dt, 4) * _prod(dims)
        for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
      )
      found.append((computation, m.group(2), size))
  return found


def _prod(dims: str) -> int:
  return int(np.prod([int(d) for d in dims.split(",") if d] or [1]))


def _compiled_update(devices, shard_projected, **kwargs):
  """Compiled HLO text of one jitted update of a complex (64, 32, 16, 9) weight, FSDP-sharded."""
  mesh = Mesh(np.array(devices), ("fsdp",))
  shapes = {"w": jax.ShapeDtypeStruct((64, 32, 16, 9), jnp.complex64)}
  shardings = {"w": NamedSharding(mesh, P("fsdp"))}
  tx = tensor_galore_adamw(1e-3, spec={"w": TuckerSpec(rank=(16, 8, 8, 4))}, **kwargs)
  state_shardings = optimizer_state_shardings(
    tx, shapes, shardings, shard_projected_axes=shard_projected
  )
  state = jax.eval_shape(tx.init, shapes)
  return (
    jax.jit(
      tx.update,
      in_shardings=(shardings, state_shardings, shardings),
      out_shardings=(shardings, state_shardings),
    )
    .lower(shapes, state, shapes)
    .compile()
    .as_text()
  )


# The square matrices LAPACK decomposes (SVD: gesdd/gesvd), from the HLO text.
_SVD = r"= \(c64\[(\d+),(\d+)\][^\n]*custom_call_target=\"\w*gesv?dd?"


@pytest.mark.slow
@pytest.mark.parametrize("shard_projected", [True, False])
def test_collectives_and_small_decompositions(devices, shard_projected):
  """What a sharded step communicates, with both settings of ``shard_projected_axes``.

  Cond branches (the refresh) are separate HLO computations; the projection, Adam and the
  back-projection of every step are in ``ENTRY``. With the projected dimensions replicated, no
  step gathers the whole gradient. The default refresh's SVDs (of the R of a QR of each mode's
  unfolding) see matrices no larger than ``I_n x I_n``, largest mode 64.
  """
  compiled = _compiled_update(devices, shard_projected)
  grad_bytes = 64 * 32 * 16 * 9 * 8  # complex64: 8 bytes an entry
  step = [(op, b) for c, op, b in _collectives(compiled) if c == "ENTRY"]
  svd_operands = re.findall(_SVD, compiled)
  assert svd_operands, "no SVD found in the compiled refresh"
  assert all(int(a) <= 64 and int(b) <= 64 for a, b in svd_operands), svd_operands
  largest_all_gather = max([b for op, b in step if op == "all-gather"] or [0])
  if shard_projected:
    # A sharded rank dimension: the projection's contraction gathers the whole gradient
    # (2.36 MB, benchmarks/results/topology.json), which is what the option trades for memory.
    assert largest_all_gather >= grad_bytes, step
  else:
    assert largest_all_gather < grad_bytes, step


@pytest.mark.slow
def test_orbax_restores_a_sharded_state_and_resumes_bit_identically(devices):
  """Save a sharded state mid-interval, restore it onto the same shardings, resume."""
  import orbax.checkpoint as ocp

  mesh = Mesh(np.array(devices), ("fsdp",))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  abstract_params = jax.eval_shape(lambda: params)
  state_shardings = optimizer_state_shardings(tx, abstract_params, param_shardings)
  params = jax.device_put(params, param_shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  step = jax.jit(_make_step(tx), out_shardings=(param_shardings, state_shardings))
  for _ in range(4):  # refreshes at 0 and 3; the next one at 6
    params, state = step(params, state, x, ys)
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "step_4"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    abstract = {"params": abstract_params, "opt_state": jax.eval_shape(tx.init, abstract_params)}
    shardings = {"params": param_shardings, "opt_state": state_shardings}
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    restored = checkpointer.restore(path, target)
  _assert_shardings(restored, shardings)
  chex.assert_trees_all_equal(restored, {"params": params, "opt_state": state})
  resumed = restored["params"], restored["opt_state"]
  for _ in range(4):  # crosses the refresh at step 6
    params, state = step(params, state, x, ys)
    resumed = step(*resumed, x, ys)
  chex.assert_trees_all_equal(resumed, (params, state))


@pytest.mark.slow
def test_explicit_mesh_axes_through_auto_axes(devices, reference):
  """Explicit mesh axes (jax.make_mesh's default): run the update under auto_axes."""
  mesh = _explicit_mesh(devices)
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  update = jax.sharding.auto_axes(tx.update, out_sharding=(param_shardings, state_shardings))
  with jax.set_mesh(mesh):
    params = jax.device_put(params, param_shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = jax.jit(_make_step(tx, update))
    params, state = _train(step, params, state, x, ys)
  _assert_shardings((params, state), (param_shardings, state_shardings))
  _assert_close((params, state), reference)


@pytest.mark.slow
def test_explicit_mesh_axes_with_the_plain_update(devices, reference):
  """The plain update on explicitly sharded arrays: the transformation handles them."""
  mesh = _explicit_mesh(devices)
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  with jax.set_mesh(mesh):
    params = jax.device_put(params, param_shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = jax.jit(_make_step(tx))
    params, state = _train(step, params, state, x, ys)
  _assert_shardings(params, param_shardings)
  _assert_close((params, state), reference)
