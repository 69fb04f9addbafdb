"""Multi-device checks of `tensor_galore`, run by ``tests/test_sharding.py``.

JAX fixes its device count when it initialises, so these checks run in their
own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the
test sets it, with ``JAX_PLATFORMS=cpu``). Each check prints one JSON line
``{"check": name, "ok": bool, "detail": str}``; a failing check does not stop
the others. Run by hand with::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python tests/_sharded_checks.py
"""

import contextlib
import json
import pathlib
import re
import sys
import tempfile
import time
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tensor_galore_optax import TuckerSpec, optimizer_state_shardings, tensor_galore_adamw

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
  # Matrix GaLore (one side): core (8, 16), sharded like the weight's rows.
  "dense": TuckerSpec(rank=8, num_projected=1),
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
  return _train(jax.jit(_make_step(tx)), params, tx.init(params), x, ys)


def _assert_close(tree, reference, dtype=jnp.float32):
  """Equal up to REL_TOL of each leaf's largest magnitude (Adam's moments are tiny)."""
  for path, a, b in zip(
    jax.tree_util.tree_flatten_with_path(reference)[0],
    jax.tree.leaves(tree),
    jax.tree.leaves(reference),
  ):
    scale = max(float(jnp.max(jnp.abs(b))), 1e-30) if b.size else 1.0
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


# --- Checks -------------------------------------------------------------------------------------


def check_device_count(ref):
  del ref
  assert jax.device_count() == 8, jax.devices()
  return f"{jax.device_count()} {jax.default_backend()} devices"


def _fsdp_run(dtype, ref):
  """Big weights sharded over their first axis; 10 steps crossing 4 refreshes."""
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh, dtype)
  before = len(jax.live_arrays())
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  assert len(jax.live_arrays()) == before, "the helper allocated arrays"
  galore = state_shardings[0]
  specs = {k: s.spec for k, s in galore.base_optimizer_state.mu.items()}
  assert specs == {"spectral": P("fsdp"), "dense": P("fsdp"), "mix": P(), "bias": P()}, specs
  assert all(f.spec == P() for f in jax.tree.leaves(galore.factors))

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
  return f"mu specs {specs}; params and state within {REL_TOL[dtype]} x scale of one device"


def check_fsdp_matches_single_device(ref):
  return _fsdp_run(jnp.float32, ref)


def check_fsdp_float64_matches_single_device(ref):
  """In float64 the sharded run is the single-device run up to summation order."""
  del ref
  with jax.enable_x64(True):
    ref64 = jax.tree.map(np.asarray, _reference(jnp.float64))
    return _fsdp_run(jnp.float64, ref64)


def check_data_parallel_matches_single_device(ref):
  """Batch sharded over 8 devices, params and state replicated."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
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
  _assert_close((params, state), ref)
  return f"data-parallel run within {REL_TOL[jnp.float32]} x scale of one device"


def check_replicated_projected_axes_match(ref):
  """``shard_projected_axes=False``: cores replicated along projected dimensions."""
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
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
  _assert_close((params, state), ref)
  return f"mu specs {specs}"


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


def check_collectives_of_an_fsdp_step(ref):
  """What a sharded step communicates, with both settings of ``shard_projected_axes``.

  Cond branches (the refresh) are separate HLO computations; the projection,
  Adam and the back-projection of every step are in ``ENTRY``. The eigh calls
  must see Gram matrices no larger than ``I_n x I_n``.
  """
  del ref
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  shapes = {"w": jax.ShapeDtypeStruct((64, 32, 16, 9), jnp.complex64)}
  shardings = {"w": NamedSharding(mesh, P("fsdp"))}
  tx = tensor_galore_adamw(1e-3, spec={"w": TuckerSpec(rank=(16, 8, 8, 4))})
  grad_bytes = 64 * 32 * 16 * 9 * 8
  report = {}
  for shard_projected in (True, False):
    state_shardings = optimizer_state_shardings(
      tx, shapes, shardings, shard_projected_axes=shard_projected
    )
    state = jax.eval_shape(tx.init, shapes)
    compiled = (
      jax.jit(
        tx.update,
        in_shardings=(shardings, state_shardings, shardings),
        out_shardings=(shardings, state_shardings),
      )
      .lower(shapes, state, shapes)
      .compile()
      .as_text()
    )
    found = _collectives(compiled)
    step = [(op, b) for c, op, b in found if c == "ENTRY"]
    refresh = [(op, b) for c, op, b in found if c != "ENTRY"]
    report[shard_projected] = {
      "step_bytes": sum(b for _, b in step),
      "step_largest_all_gather": max([b for op, b in step if op == "all-gather"] or [0]),
      "refresh_bytes": sum(b for _, b in refresh),
      "gradient_bytes": grad_bytes,
    }
    eigh_operands = re.findall(r"c64\[(\d+),(\d+)\][^\n]*custom_call_target=\"\w*heevd", compiled)
    assert eigh_operands, "no eigh found in the compiled refresh"
    assert all(int(a) <= 64 and int(b) <= 64 for a, b in eigh_operands), eigh_operands
  # Replicated projected dimensions: no step gathers the whole gradient.
  assert report[False]["step_largest_all_gather"] < grad_bytes, report
  return json.dumps(report)


def check_orbax_restores_onto_the_helper_shardings(ref):
  """Save a sharded state mid-interval, restore it onto the same shardings, resume."""
  del ref
  import orbax.checkpoint as ocp

  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
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
  return "restored onto the helper's shardings; resumed run bit-identical"


def check_explicit_axes_with_auto_axes(ref):
  """Explicit mesh axes (jax.make_mesh's default): run the update under auto_axes."""
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  update = jax.sharding.auto_axes(tx.update, out_sharding=(param_shardings, state_shardings))
  with jax.set_mesh(mesh):
    params = jax.device_put(params, param_shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = jax.jit(_make_step(tx, update))
    params, state = _train(step, params, state, x, ys)
  _assert_shardings((params, state), (param_shardings, state_shardings))
  _assert_close((params, state), ref)
  return "explicit axes + auto_axes within tolerance"


def check_explicit_axes_unwrapped(ref):
  """The plain update on explicitly sharded arrays: the transformation handles them."""
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))
  params, x, ys, tx, param_shardings = _fsdp_setup(mesh)
  state_shardings = optimizer_state_shardings(tx, params, param_shardings)
  with jax.set_mesh(mesh):
    params = jax.device_put(params, param_shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = jax.jit(_make_step(tx))
    params, state = _train(step, params, state, x, ys)
  _assert_shardings(params, param_shardings)
  _assert_close((params, state), ref)
  return "explicit axes, plain update, within tolerance"


CHECKS = [v for k, v in list(globals().items()) if k.startswith("check_")]


def main() -> int:
  start = time.perf_counter()
  ref = jax.tree.map(np.asarray, _reference())
  failed = 0
  for check in CHECKS:
    name = check.__name__.removeprefix("check_")
    t = time.perf_counter()
    try:
      with contextlib.redirect_stdout(sys.stderr):
        detail = check(ref)
      ok = True
    except Exception as e:  # Reported, and the next check still runs.
      ok, detail = False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
      failed += 1
    seconds = round(time.perf_counter() - t, 1)
    print(json.dumps({"check": name, "ok": ok, "detail": detail, "seconds": seconds}), flush=True)
  print(json.dumps({"check": "total", "ok": True, "seconds": time.perf_counter() - start}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
