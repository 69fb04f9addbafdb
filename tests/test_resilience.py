"""Resilience of `tensor_galore`: checkpoints, resumption, hostile inputs, donation.

Every test here runs on one device; multi-device runs are in ``test_sharding.py``.
"""

import functools
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import normal as _complex_normal
from _helpers import tucker_tensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensor_galore_optax import TuckerSpec, _tucker, tensor_galore, tensor_galore_adamw
from tensor_galore_optax._memory import tree_bytes

GAP = 3


def _params():
  ks = jax.random.split(jax.random.key(0), 3)
  return {
    "spectral": 0.1 * _complex_normal(ks[0], (8, 8, 6, 4)),
    "dense": 0.1 * jax.random.normal(ks[1], (16, 12)),
    "bias": jnp.zeros(12),
  }


def _grads(step: int, params=None):
  """A deterministic, step-dependent gradient stream with the params' structure."""
  params = _params() if params is None else params
  leaves, treedef = jax.tree.flatten(params)
  key = jax.random.fold_in(jax.random.key(1), step)
  out = []
  for i, leaf in enumerate(leaves):
    k = jax.random.fold_in(key, i)
    if jnp.iscomplexobj(leaf):
      g = _complex_normal(k, leaf.shape)
    else:
      g = jax.random.normal(k, leaf.shape)
    out.append((g + leaf).astype(leaf.dtype))
  return treedef.unflatten(out)


def _optimizer():
  return tensor_galore_adamw(1e-2, rank=0.5, min_size=64, update_proj_gap=GAP)


def _make_step(tx):
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@functools.cache
def _default_step():
  """One compiled step shared by the tests (each compile costs about a second)."""
  return _make_step(_optimizer())


def _train(step, params, state, steps):
  for i in steps:
    params, state = step(params, state, _grads(i))
  return params, state


def _assert_orthonormal(factor, atol=1e-5):
  # NumPy, not jnp: an eager JAX op compiles once per new shape.
  f = np.asarray(factor).astype(np.complex128)
  np.testing.assert_allclose(f.conj().T @ f, np.eye(f.shape[1]), atol=atol)


# --- Checkpoint and resume ----------------------------------------------------------------------


def _orbax(tree, target, path):
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path / "orbax", tree)
  checkpointer.wait_until_finished()
  return checkpointer.restore(path / "orbax", target)


def _flax_bytes(tree, target, path):
  from flax import serialization

  (path / "state.msgpack").write_bytes(serialization.to_bytes(tree))
  return serialization.from_bytes(target, (path / "state.msgpack").read_bytes())


def _numpy_leaves(tree, target, path):
  np.savez(path / "state.npz", *[np.asarray(x) for x in jax.tree.leaves(tree)])
  with np.load(path / "state.npz") as saved:
    arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  return jax.tree.unflatten(jax.tree.structure(target), arrays)


FORMATS = {"orbax": _orbax, "flax_bytes": _flax_bytes, "numpy_leaves": _numpy_leaves}


@pytest.fixture(scope="module")
def runs():
  """Params and state after 4, 5 and 9 steps of the shared step (refreshes at 0, 3, 6)."""
  tx, step = _optimizer(), _default_step()
  out = {}
  params, state = _params(), tx.init(_params())
  for i in range(9):
    params, state = step(params, state, _grads(i))
    out[i + 1] = (params, state)
  return out


def test_state_is_plain_arrays_and_a_fresh_state_has_the_trained_structure(runs):
  fresh = _optimizer().init(_params())
  trained = runs[4][1]
  assert jax.tree.structure(fresh) == jax.tree.structure(trained)
  chex.assert_trees_all_equal_shapes_and_dtypes(fresh, trained)
  for leaf in jax.tree.leaves(trained):
    assert isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.number)


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_round_trip(fmt, runs, tmp_path):
  target = (_params(), _optimizer().init(_params()))
  restored = FORMATS[fmt](runs[4], target, tmp_path)
  assert jax.tree.structure(restored) == jax.tree.structure(target)
  chex.assert_trees_all_equal(restored, runs[4])
  chex.assert_trees_all_equal_dtypes(restored, runs[4])


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_between_refreshes_is_bit_identical(fmt, runs, tmp_path):
  """Checkpoint after step 5 (refreshes at 0 and 3), restore, cross the refresh at 6."""
  assert int(runs[5][1][0].count) == 5 and 5 % GAP != 0
  tx = _optimizer()
  restored = FORMATS[fmt](runs[5], (_params(), tx.init(_params())), tmp_path)
  restored = jax.tree.map(jnp.asarray, restored)
  resumed = _train(_default_step(), *restored, range(5, 9))
  chex.assert_trees_all_equal(resumed, runs[9])


def test_resume_in_a_new_process_like_setting_is_bit_identical(runs, tmp_path):
  """A restart: a new optimizer object and a newly compiled step, from an orbax checkpoint."""
  tx = _optimizer()
  restored = _orbax(runs[5], (_params(), tx.init(_params())), tmp_path)
  resumed = _train(_make_step(tx), *restored, range(5, 9))
  chex.assert_trees_all_equal(resumed, runs[9])


# --- Non-finite gradients -----------------------------------------------------------------------


def _poison(grads, value):
  return jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(value), grads)


@functools.cache
def _plain_galore():
  tx = tensor_galore(rank=0.5, min_size=64, update_proj_gap=GAP)
  return tx, jax.jit(tx.update)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf])
def test_non_finite_gradient_at_a_refresh_keeps_the_factors_but_reaches_adam(value):
  tx, update = _plain_galore()
  state = tx.init(_params())
  for i in range(GAP):
    _, state = update(_grads(i), state)
  assert int(state.count) % GAP == 0  # the next step is a refresh
  updates, bad = update(_poison(_grads(GAP), value), state)
  chex.assert_trees_all_equal(bad.factors, state.factors)
  # Like any optax optimizer, the moments take the non-finite value in.
  assert not np.isfinite(np.asarray(bad.base_optimizer_state.nu["spectral"])).all()
  assert not np.isfinite(np.asarray(updates["spectral"])).all()


@functools.cache
def _if_finite():
  tx = optax.apply_if_finite(_optimizer(), max_consecutive_errors=3)
  return tx, jax.jit(tx.update)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("bad_step", [GAP, GAP + 1], ids=["at_refresh", "between"])
def test_apply_if_finite_skips_the_bad_step_and_training_continues(value, bad_step):
  tx, update = _if_finite()

  def run(poisoned: bool):
    params, state = _params(), tx.init(_params())
    for i in range(bad_step + 4):  # crosses the next refresh after the bad step
      if i == bad_step:
        if not poisoned:
          continue
        updates, new_state = update(_poison(_grads(i), value), state, params)
        chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
        chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
        assert int(new_state.notfinite_count) == 1 and not bool(new_state.last_finite)
        state = new_state
        continue
      updates, state = update(_grads(i), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  params, state = run(poisoned=True)
  chex.assert_tree_all_finite(params)
  assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1
  # Skipping is exact: the same run without the bad gradient gives the same result.
  clean_params, clean_state = run(poisoned=False)
  chex.assert_trees_all_equal(params, clean_params)
  chex.assert_trees_all_equal(state.inner_state, clean_state.inner_state)


def test_multisteps_skips_a_non_finite_mini_step():
  tx = optax.MultiSteps(
    _optimizer(),
    every_k_schedule=2,
    should_skip_update_fn=optax.skip_not_finite,
    accumulator_dtype=jnp.complex64,
  )
  update = jax.jit(tx.update)
  params, state = _params(), tx.init(_params())
  with warnings.catch_warnings():
    # The complex accumulator is cast back to the real leaves' dtype (see docs/scaling.md).
    warnings.simplefilter("ignore", DeprecationWarning)
    for i in range(8):
      if i == 3:
        updates, new_state = update(_poison(_grads(i), jnp.nan), state, params)
        chex.assert_trees_all_equal(new_state.inner_opt_state, state.inner_opt_state)
        chex.assert_trees_all_equal(new_state.acc_grads, state.acc_grads)
        assert int(new_state.mini_step) == int(state.mini_step)
        state = new_state
        continue
      updates, state = update(_grads(i), state, params)
      params = optax.apply_updates(params, updates)
  chex.assert_tree_all_finite(params)
  assert int(state.inner_opt_state[0].count) == 3  # 7 good mini-steps, k = 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multisteps_drops_imaginary_parts_unless_the_accumulator_is_complex():
  """optax 0.2.8 accumulates in float32 by default, casting complex gradients to real."""
  params = {"w": _params()["spectral"]}
  inner = tensor_galore(rank=0.5, min_size=1, base_optimizer=optax.sgd(1.0))
  g1, g2 = _grads(0, params), _grads(1, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  expected, _ = jax.jit(inner.update)(mean, inner.init(params))

  def two_mini_steps(**kwargs):
    tx = optax.MultiSteps(inner, 2, **kwargs)
    update = jax.jit(tx.update)
    state = tx.init(params)
    _, state = update(g1, state)
    accumulated_dtype = state.acc_grads["w"].dtype
    updates, _ = update(g2, state)
    return updates, accumulated_dtype

  default, default_dtype = two_mini_steps()
  assert default_dtype == jnp.float32
  assert not np.allclose(default["w"], expected["w"], atol=1e-3)
  fixed, fixed_dtype = two_mini_steps(accumulator_dtype=jnp.complex64)
  assert fixed_dtype == jnp.complex64
  chex.assert_trees_all_close(fixed, expected, atol=1e-5)


# --- Degenerate inputs --------------------------------------------------------------------------


def test_zero_gradients_give_finite_updates_and_orthonormal_factors():
  step = _default_step()
  params = _params()
  state = _optimizer().init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(GAP + 1):  # the refreshes at steps 0 and 3 see only zeros
    new_params, state = step(params, state, zeros)
    chex.assert_tree_all_finite(new_params)
    params = new_params
  kept = state[0].factors
  chex.assert_trees_all_equal(kept, _optimizer().init(params)[0].factors)
  for factor in jax.tree.leaves(kept):
    _assert_orthonormal(factor)
  # A real gradient at the next refresh (step 6) still finds its subspace.
  for i in range(GAP):
    params, state = step(params, state, _grads(i))
  chex.assert_tree_all_finite(params)
  assert not np.allclose(state[0].factors["spectral"][0], kept["spectral"][0])
  for factor in jax.tree.leaves(state[0].factors):
    _assert_orthonormal(factor)


EXTREME = {  # shape, rank, factor shapes as documented (see `tensor_galore`'s rank)
  # A matrix projects its smaller side; 8 cannot cut a side of 2, and the long side's factor
  # (4096 x 8) would hold more than the moments it saves: not projected.
  "wide": ((2, 4096), 8, []),
  "tall": ((4096, 2), (16, None), [(4096, 16)]),
  "tall_3d": ((4096, 1, 3), 4, [(4096, 4)]),
  # The fewest modes: the 64 is longer than the rest together (512 / 64), so the 8 comes first.
  "unit_modes": ((1, 64, 1, 8), 0.5, [(8, 4)]),
  "unit_modes_tuple": ((1, 64, 1, 8), (None, 0.25, None, 2), [(64, 16), (8, 2)]),
  "rank_above_modes": ((8, 6, 4), 100, []),  # every mode whole: nothing projected
}


@pytest.mark.filterwarnings("ignore:.*cuts none of its modes")
def test_extreme_shapes_and_ranks():
  spec = {k: TuckerSpec(rank=rank) for k, (_, rank, _) in EXTREME.items()}
  tx = tensor_galore_adamw(1e-2, min_size=1, update_proj_gap=2, spec=spec)
  params = {k: jnp.ones(shape) for k, (shape, _, _) in EXTREME.items()}
  state = tx.init(params)
  for k, (_, _, factor_shapes) in EXTREME.items():
    assert [f.shape for f in state[0].factors[k]] == factor_shapes, k
  update = jax.jit(tx.update)
  for i in range(3):  # refreshes at steps 0 and 2
    grads = {
      k: jnp.asarray(np.random.default_rng(i).standard_normal(p.shape), jnp.float32)
      for k, p in params.items()
    }
    updates, state = update(grads, state, params)
    chex.assert_tree_all_finite(updates)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  for factor in jax.tree.leaves(state[0].factors):
    _assert_orthonormal(factor)


def test_a_rank_above_every_mode_leaves_the_leaf_unprojected_and_says_so():
  grads = {"w": _complex_normal(jax.random.key(2), (8, 6, 4))}
  tx = tensor_galore(rank=100, min_size=1, base_optimizer=optax.identity())
  with pytest.warns(UserWarning, match=r"leaf \['w'\].*rank=100 cuts none of its modes"):
    state = tx.init(grads)
  assert state.factors["w"] == ()
  updates, _ = tx.update(grads, state)
  chex.assert_trees_all_equal(updates, grads)  # identity on an unprojected leaf: bitwise


def test_float16_params_train_like_float32_ones_with_a_representable_eps():
  # float16 cannot hold Adam's default eps (1e-8 flushes to 0): as with any Adam,
  # it needs an eps it can represent. bfloat16 (float32's exponent range) keeps
  # the default; the property tests below cover it.
  tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=64, update_proj_gap=2, eps=1e-4)
  step = _make_step(tx)
  rng = np.random.default_rng(0)
  # Gradients with a gap at the cut (rank 0.5 projects the first mode, 8 -> 4), as real ones
  # have: in a flat spectrum float16's rounding alone would pick another subspace.
  grads = [
    {
      "w": tucker_tensor(jax.random.key(k), (8, 8, 6), (4, 8, 6), jnp.float32, noise=0.01),
      "b": rng.standard_normal(8),
    }
    for k in range(5)
  ]
  finals = {}
  for dtype in (jnp.float16, jnp.float32):
    params = {"w": jnp.ones((8, 8, 6), dtype), "b": jnp.ones(8, dtype)}
    state = tx.init(params)
    for g in grads:  # refreshes at steps 0, 2 and 4
      params, state = step(params, state, jax.tree.map(lambda x, d=dtype: jnp.asarray(x, d), g))
    finals[dtype] = params
  assert all(p.dtype == jnp.float16 for p in jax.tree.leaves(finals[jnp.float16]))
  # Five steps of about 1e-2 each on weights of 1: float16 rounds each parameter update
  # (eps 1e-3 relative to 1) and Adam's float16 moments (a few eps of each 1e-2 step), so
  # the runs agree to about 5 x eps16 = 5e-3; 1e-2 is the bound.
  for a, b in zip(jax.tree.leaves(finals[jnp.float16]), jax.tree.leaves(finals[jnp.float32])):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=1e-2)
  moved = float(jnp.max(jnp.abs(finals[jnp.float32]["w"] - 1)))
  assert moved > 0.02  # the comparison is not between two unmoved weights


@pytest.mark.parametrize(
  "params, spec, error, match",
  [
    ({"w": jnp.ones((4, 5))}, {"v": None}, ValueError, "spec does not match the params tree"),
    (
      {"enc": {"w": jnp.ones((4, 5))}, "dec": {"w": jnp.ones((4, 5))}},
      {"enc": {"w": TuckerSpec()}},
      ValueError,
      "spec does not match the params tree",
    ),
    ({"w": jnp.ones((4, 5))}, {"w": 3}, TypeError, r"spec for leaf \['w'\] is 3"),
    ({"w": jnp.ones((4, 5))}, {"w": {"x": None}}, TypeError, r"spec for leaf \['w'\]"),
    (
      {"w": jnp.ones((4, 5))},
      {"w": TuckerSpec(modes=(0,))},
      ValueError,
      r"leaf \['w'\].*leave axes \[1\] out",
    ),
  ],
  ids=["other_key", "missing_subtree", "int_leaf", "dict_leaf", "axis_left_out"],
)
def test_a_spec_that_does_not_fit_the_params_fails_clearly(params, spec, error, match):
  with pytest.raises(error, match=match):
    tensor_galore(min_size=1, spec=spec).init(params)


def test_gradients_of_another_shape_than_at_init_fail_naming_the_leaf():
  tx = tensor_galore(rank=0.5, min_size=1)
  state = tx.init({"w": jnp.ones((8, 8))})
  with pytest.raises((ValueError, TypeError), match=r"\['w'\]"):
    tx.update({"w": jnp.ones((8, 6))}, state)


# --- Properties over random shapes, ranks and dtypes --------------------------------------------

_SIZES = st.one_of(st.integers(1, 9), st.sampled_from([1, 2, 16, 33, 64, 300]))


@st.composite
def _cases(draw):
  shape = tuple(draw(st.lists(_SIZES, min_size=1, max_size=5)))
  if math.prod(shape) > 6000:  # keep every example fast to compile and run
    shape = tuple(min(s, 4) for s in shape)
  entry = st.one_of(st.integers(1, 12), st.floats(0.05, 1.0))
  rank = draw(
    st.one_of(
      entry,
      st.tuples(*[st.one_of(st.none(), entry) for _ in shape]),
    )
  )
  dtype = draw(st.sampled_from(["float32", "bfloat16", "complex64"]))
  return shape, rank, dtype, draw(st.integers(0, 2**16))


def _expected_ranks(rank, shape):
  """Ranks as the docs state them (see `tensor_galore`'s ``rank``)."""

  def clip(r, size):
    return max(1, min(r, size))

  def fraction(f, size):
    return clip(math.ceil(size * f - 1e-9), size)

  if isinstance(rank, tuple):
    return [
      None if r is None else clip(r, i) if isinstance(r, int) else fraction(r, i)
      for r, i in zip(rank, shape)
    ]
  # A scalar rank's choice of modes is `resolve_ranks`'s (tested in test_tucker.py).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return list(_tucker.resolve_ranks(rank, shape, None, "t"))


def _gradient(shape, dtype, seed):
  # NumPy, not jax.random: an eager JAX op compiles once per new shape.
  rng = np.random.default_rng(seed)
  g = rng.standard_normal(shape)
  if dtype == "complex64":
    g = g + 1j * rng.standard_normal(shape)
  return jnp.asarray(g, dtype)


# Every axis a mode: these properties are the projection's (the stacking rule is test_tucker's).
NO_STACK = TuckerSpec(batch_axes=())

_PROPERTY_SETTINGS = settings(
  max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_PROPERTY_SETTINGS
@given(_cases())
def test_property_finite_updates_of_the_gradient_dtype_and_orthonormal_factors(case):
  shape, rank, dtype, seed = case
  grads = {"w": _gradient(shape, dtype, seed)}
  tx = tensor_galore_adamw(1e-3, rank=rank, min_size=1, spec={"w": NO_STACK})
  state = jax.jit(tx.init)(grads)
  expected = [(i, r) for i, r in zip(shape, _expected_ranks(rank, shape)) if r is not None]
  assert [f.shape for f in state[0].factors["w"]] == expected
  update = jax.jit(tx.update)
  for _ in range(2):  # a refresh, then a step on the same factors
    updates, state = update(grads, state, grads)
    assert updates["w"].shape == shape and updates["w"].dtype == jnp.dtype(dtype)
    assert np.isfinite(np.asarray(updates["w"]).astype(np.complex64)).all()
  assert [f.shape for f in state[0].factors["w"]] == expected
  for factor in state[0].factors["w"]:
    _assert_orthonormal(factor, atol=1e-4)


@_PROPERTY_SETTINGS
@given(_cases())
def test_property_identity_base_gives_an_orthogonal_projection(case):
  shape, rank, dtype, seed = case
  g = _gradient(shape, dtype, seed)
  tx = tensor_galore(
    rank=rank,
    min_size=1,
    spec={"w": NO_STACK},
    base_optimizer=optax.identity(),
    scale=1.0,
    residual_scale=None,
  )
  update = jax.jit(tx.update)
  state = jax.jit(tx.init)({"w": g})
  u, state = update({"w": g}, state)
  twice, _ = update(u, state)  # step 1: no refresh, the same factors
  g, u, twice = (np.asarray(x).astype(np.complex128) for x in (g, u["w"], twice["w"]))
  norm2 = float(np.vdot(g, g).real)
  # bfloat16 rounds the projected update to 8 bits; float32 and complex64 to ~1e-7.
  tol = 3e-2 if dtype == "bfloat16" else 1e-4
  assert abs(np.vdot(u, g - u)) <= tol * norm2  # u is orthogonal to the residual
  assert np.vdot(u, u).real <= (1 + tol) * norm2  # and no longer than g
  assert np.linalg.norm(twice - u) <= tol * math.sqrt(norm2)  # projecting twice = once


# --- Donation and memory ------------------------------------------------------------------------


def test_donated_step_reuses_params_and_state_buffers():
  """What is asserted, from ``memory_analysis()`` of the compiled optimizer step.

  The step takes ``(params, state, grads)`` and returns ``(params, state)``,
  donating the first two; the model's forward and backward pass are left out
  so that only the optimizer's memory is measured.

  * ``alias_size_in_bytes`` equals the bytes of params plus state: every
    output buffer is an input buffer reused in place, so the step never holds
    a second full-size copy of the parameters or of the optimizer state.
  * ``output_size - alias_size`` is at most 1 KiB: nothing else is output.

  How much scratch XLA takes (``temp_size_in_bytes``) is XLA's choice, not a
  contract: it is measured in ``benchmarks/memory.py``, not here. The donated
  step is also executed: the donated inputs are consumed, and the results
  equal those of the step without donation.
  """
  params = {
    "spectral": jnp.ones((32, 32, 16, 9), jnp.complex64),
    "dense": jnp.ones((256, 128)),
    "bias": jnp.ones(128),
  }
  tx = tensor_galore_adamw(1e-3, rank=0.25, min_size=1000, update_proj_gap=GAP)
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  memory = compiled.memory_analysis()
  params_and_state = tree_bytes(params) + tree_bytes(state)
  assert memory.alias_size_in_bytes == params_and_state
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes <= 1024
  # Without donation nothing is aliased: the outputs are new buffers.
  undonated = jax.jit(step).lower(params, state, params).compile()
  assert undonated.memory_analysis().alias_size_in_bytes == 0
  grads = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
  expected = undonated(params, state, grads)
  donated_params = jax.tree.map(jnp.copy, params)
  donated_state = jax.tree.map(jnp.copy, state)
  result = compiled(donated_params, donated_state, grads)
  assert all(x.is_deleted() for x in jax.tree.leaves(donated_params))
  chex.assert_trees_all_equal(result, expected)  # the same program, bitwise
  assert undonated.memory_analysis().output_size_in_bytes >= params_and_state
