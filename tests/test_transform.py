"""Tests of `tensor_galore` and `tensor_galore_adamw` (the transformation's contracts)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from _helpers import normal as _complex_normal
from _helpers import raises_naming

from tensor_galore_optax import (
  TensorGaLoreState,
  TuckerSpec,
  optimizer_state_bytes,
  scale_by_core_adam,
  tensor_galore,
  tensor_galore_adamw,
)

# The projection alone: GaLore's unscaled update, no residual step.
PLAIN = {"scale": 1.0, "residual_scale": None}


def _run(tx, grads, state, jit):
  update = jax.jit(tx.update) if jit else tx.update
  return update(grads, state)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jit(request):
  return request.param


# --- Reference equivalences -------------------------------------------------------------------


def test_full_rank_with_sgd_base_equals_sgd(jit):
  """Every mode projected at its full size: real factors (orthonormal bases, refreshed at step
  0) apply, and SGD, being rotation invariant, is unchanged. A transpose instead of the
  conjugate transpose, or a factor left out of the back-projection, breaks this."""
  key = jax.random.key(0)
  params = {
    "spectral": _complex_normal(key, (6, 5, 4, 3)),
    "dense": jax.random.normal(key, (7, 9)),
    "bias": jnp.ones(5),
  }
  spec = {"spectral": TuckerSpec(rank=(6, 5, 4, 3)), "dense": TuckerSpec(rank=(7, 9)), "bias": None}
  # One refresh, at step 0: momentum kept across a change of basis is not SGD's.
  tx = tensor_galore(
    spec=spec, base_optimizer=optax.sgd(0.1, momentum=0.9), update_proj_gap=100, **PLAIN
  )
  reference = optax.sgd(0.1, momentum=0.9)
  state = (jax.jit(tx.init) if jit else tx.init)(params)
  ref_state = reference.init(params)
  for step in range(4):
    grads = jax.tree.map(lambda p, s=step: p * (s + 1) - 0.3, params)
    updates, state = _run(tx, grads, state, jit)
    ref_updates, ref_state = reference.update(grads, ref_state)
    # Two products with orthonormal float32 factors per mode, and their inverses: about
    # 2 * 4 modes * sqrt(6) eps relative per entry; 2e-5 leaves room for the momentum's sum.
    chex.assert_trees_all_close(updates, ref_updates, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_equal_dtypes(updates, params)
  assert all(f.shape[0] == f.shape[1] for f in state.factors["spectral"])
  assert not np.allclose(state.factors["spectral"][0], np.eye(6))  # refreshed, not the identity


def test_full_rank_projection_with_identity_base_is_identity_on_complex_4d(jit):
  """Full-size rank tuples: complete unitary factors, so projecting and back-projecting is the
  identity up to round-off (4 modes x 2 products x a few eps, relative to entries of order 1)."""
  grads = {"w": _complex_normal(jax.random.key(1), (5, 4, 6, 3))}
  tx = tensor_galore(
    spec=TuckerSpec(rank=(5, 4, 6, 3)), min_size=1, base_optimizer=optax.identity(), **PLAIN
  )
  state = tx.init(grads)
  updates, state = _run(tx, grads, state, jit)
  assert [f.shape for f in state.factors["w"]] == [(5, 5), (4, 4), (6, 6), (3, 3)]
  chex.assert_trees_all_close(updates, grads, atol=1e-5)


@pytest.mark.parametrize("rank", [0.1, 0.5, 3, (2, None, 3, 2)])
def test_low_rank_map_is_an_orthogonal_projection(rank, jit):
  grad = _complex_normal(jax.random.key(2), (8, 6, 5, 4))
  tx = tensor_galore(rank=rank, min_size=1, base_optimizer=optax.identity(), **PLAIN)
  updates, state = _run(tx, {"w": grad}, tx.init({"w": grad}), jit)
  u = updates["w"]
  # <u, g - u> = 0 and projecting twice changes nothing.
  np.testing.assert_allclose(
    jnp.vdot(u, grad - u), 0.0, atol=1e-3 * float(jnp.vdot(grad, grad).real)
  )
  twice, _ = _run(tx, {"w": u}, state, jit)
  chex.assert_trees_all_close(twice["w"], u, atol=1e-4)
  assert 0 < float(jnp.linalg.norm(u)) < float(jnp.linalg.norm(grad))


@pytest.mark.parametrize(
  "spec, expected",
  [
    # By default the fewest modes that keep a quarter: the first, 3 of 12.
    (None, [(12, 3)]),
    # Every mode, as in the paper: each keeps ceil(I_n * 0.25 ** (1/4)).
    (TuckerSpec(num_projected="all"), [(12, 9), (10, 8), (8, 6), (5, 4)]),
  ],
)
def test_factors_have_orthonormal_columns_and_documented_shapes(spec, expected):
  grad = {"w": _complex_normal(jax.random.key(3), (12, 10, 8, 5)), "b": jnp.ones(12)}
  tx = tensor_galore(rank=0.25, min_size=1, spec=spec)
  state = tx.init(grad)
  _, state = jax.jit(tx.update)(grad, state)
  assert [f.shape for f in state.factors["w"]] == expected
  assert state.factors["b"] == ()
  for f in state.factors["w"]:
    assert f.dtype == jnp.complex64
    chex.assert_trees_all_close(f.conj().T @ f, jnp.eye(f.shape[1]), atol=1e-5)


def test_factors_change_exactly_at_multiples_of_update_proj_gap():
  gap = 3
  tx = tensor_galore(rank=0.3, update_proj_gap=gap, min_size=1)
  key = jax.random.key(4)
  params = {"w": jax.random.normal(key, (9, 8, 7))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(10):
    key, sub = jax.random.split(key)
    grads = {"w": jax.random.normal(sub, (9, 8, 7))}
    _, new_state = update(grads, state)
    changed = any(not np.allclose(a, b) for a, b in zip(state.factors["w"], new_state.factors["w"]))
    assert changed == (step % gap == 0), f"step {step}"
    assert int(new_state.count) == step + 1
    state = new_state


def test_matrix_galore_spec_matches_optax_contrib_scale_by_galore():
  """A one-sided 2-D spec, exact SVD factors and kept moments is optax's GaLore.

  Compared over one whole refresh interval. At later refreshes the two differ by
  design: optax keeps whatever column signs the SVD returns, so a refresh that
  finds the same subspace can flip the sign of kept moments, while ours aligns
  the new factors' signs with the old ones.
  """
  rank, gap = 3, 8
  key = jax.random.key(5)
  params = {"tall": jax.random.normal(key, (12, 7)), "wide": jax.random.normal(key, (5, 11))}
  ours = tensor_galore(
    rank=rank,
    update_proj_gap=gap,
    min_size=1,
    # optax projects the larger side (the rows when rows >= columns).
    spec={"tall": TuckerSpec(rank=(rank, None)), "wide": TuckerSpec(rank=(None, rank))},
    base_optimizer=optax.scale_by_adam(),
    **PLAIN,
  )
  theirs = optax.contrib.scale_by_galore(rank=rank, update_proj_gap=gap)
  state, ref_state = ours.init(params), theirs.init(params)
  # The projected side is optax's: left (rows) when rows >= columns.
  assert [f.shape for f in state.factors["tall"]] == [(12, 3)]
  assert [f.shape for f in state.factors["wide"]] == [(11, 3)]
  for _ in range(gap):
    key, sub = jax.random.split(key)
    grads = jax.tree.map(lambda p, k=sub: p + 0.1 * jax.random.normal(k, p.shape), params)
    updates, state = jax.jit(ours.update)(grads, state)
    ref_updates, ref_state = jax.jit(theirs.update)(grads, ref_state)
    chex.assert_trees_all_close(updates, ref_updates, atol=1e-4, rtol=1e-4)


def test_reference_galore_side_is_the_one_mode_tucker_projection():
  """GaLore's reference orientation of an FNO kernel, ``(in, out * mx * my)``
  with the smaller side projected, updates exactly as projecting mode 0 alone."""
  key = jax.random.key(9)
  shape = (8, 8, 6, 4)
  params = {"w": _complex_normal(key, shape)}
  settings = dict(update_proj_gap=3, min_size=1, scale="matched", residual_scale=None)
  matrix = tensor_galore(rank=2, spec=TuckerSpec(modes=(0, (1, 2, 3)), rank=(2, None)), **settings)
  one_mode = tensor_galore(rank=2, spec=TuckerSpec(rank=(2, None, None, None)), **settings)
  state, one_state = matrix.init(params), one_mode.init(params)
  assert [f.shape for f in state.factors["w"]] == [(8, 2)]
  assert [f.shape for f in one_state.factors["w"]] == [(8, 2)]
  for _ in range(7):  # three refreshes
    key, sub = jax.random.split(key)
    grads = {"w": params["w"] + 0.3 * _complex_normal(sub, shape)}
    updates, state = jax.jit(matrix.update)(grads, state)
    one_updates, one_state = jax.jit(one_mode.update)(grads, one_state)
    chex.assert_trees_all_close(updates, one_updates, atol=1e-6, rtol=1e-6)


# --- optax composition ------------------------------------------------------------------------


def _fno_like_params(key, width=8, modes=(8, 5)):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "spectral": _complex_normal(k1, (width, width, *modes)),
    "skip": jax.random.normal(k2, (width, width)),
    "bias": jax.random.normal(k3, (width,)),
  }


def test_no_recompilation_on_second_update():
  params = _fno_like_params(jax.random.key(6))
  tx = tensor_galore_adamw(1e-3, min_size=64, update_proj_gap=2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  chex_update = chex.assert_max_traces(update.__wrapped__, n=1)
  update = jax.jit(chex_update)
  for _ in range(4):  # crosses refresh and steady steps
    _, state = update(params, state, params)


def test_inside_multisteps_and_scan_it_is_the_inner_optimizer_on_averaged_gradients():
  """``optax.MultiSteps(tx, 2)`` under ``lax.scan`` equals ``tx`` applied every second step to
  the mean of two gradients (the count, hence the refreshes, advance on the applied steps)."""
  # Real leaves only: optax.MultiSteps (0.2.8) accumulates in float32 by default,
  # which drops the imaginary part of complex gradients (see docs/composing.md).
  params = _fno_like_params(jax.random.key(7))
  params["spectral"] = params["spectral"].real
  inner = tensor_galore_adamw(1e-2, min_size=64, update_proj_gap=3)
  tx = optax.MultiSteps(inner, 2)
  grads = [jax.tree.map(lambda p, k=k: jnp.cos(p * (k + 1)), params) for k in range(12)]

  def step(carry, g):
    p, s = carry
    updates, s = tx.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
  (final, _), _ = jax.lax.scan(step, (params, tx.init(params)), stacked)
  expected, state = params, inner.init(params)
  for k in range(0, 12, 2):
    mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[k], grads[k + 1])
    updates, state = jax.jit(inner.update)(mean, state, expected)
    expected = optax.apply_updates(expected, updates)
  # Summing then halving rounds differently from MultiSteps' running mean: a few float32 ulps
  # per step of entries of order one, over six steps.
  chex.assert_trees_all_close(final, expected, atol=1e-5, rtol=1e-5)
  assert not np.allclose(final["spectral"], params["spectral"])


def test_inject_hyperparams_with_static_shape_arguments():
  params = _fno_like_params(jax.random.key(8))
  # inject_hyperparams would otherwise take the complex leaves' dtype for the
  # hyperparameters (see docs/composing.md).
  factory = optax.inject_hyperparams(
    tensor_galore_adamw,
    static_args=("rank", "update_proj_gap", "min_size"),
    hyperparam_dtype=jnp.float32,
  )
  injected = factory(learning_rate=1e-3, rank=0.25, update_proj_gap=5, min_size=64)
  plain = tensor_galore_adamw(1e-3, rank=0.25, update_proj_gap=5, min_size=64)
  s_inj, s_plain = injected.init(params), plain.init(params)
  u_inj, s_inj = jax.jit(injected.update)(params, s_inj, params)
  u_plain, s_plain = jax.jit(plain.update)(params, s_plain, params)
  chex.assert_trees_all_close(u_inj, u_plain, rtol=1e-5, atol=1e-7)
  s_inj.hyperparams["learning_rate"] = jnp.asarray(0.0)
  u_zero, _ = jax.jit(injected.update)(params, s_inj, params)
  chex.assert_trees_all_close(u_zero, jax.tree.map(jnp.zeros_like, u_zero))


def test_map_params_visits_every_per_leaf_tree_of_the_state():
  """``optax.tree.map_params`` calls ``init`` with one placeholder for the whole params tree,
  so it cannot tell per leaf a core from a parameter: it visits the factors, the moments
  (cores included) and the residual's statistics alike, and leaves the counts alone.
  `optimizer_state_shardings` is the tool that tells them apart (tests/test_sharding.py)."""
  params = _fno_like_params(jax.random.key(9))
  params["dense"] = jax.random.normal(jax.random.key(1), (64, 32))
  tx = tensor_galore_adamw(1e-3, min_size=64)
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: jnp.full_like(v, 7), state)
  galore, mapped_galore = state[0], mapped[0]
  assert galore.factors["spectral"] and galore.factors["dense"]  # both projected
  for tree in (mapped_galore.factors, mapped_galore.residual_moments):
    assert all(bool(jnp.all(x == 7)) for x in jax.tree.leaves(tree))
  assert all(bool(jnp.all(x == 7)) for x in jax.tree.leaves(mapped_galore.base_optimizer_state.mu))
  chex.assert_trees_all_equal(mapped_galore.count, galore.count)
  chex.assert_trees_all_equal(
    mapped_galore.base_optimizer_state.count, galore.base_optimizer_state.count
  )


def test_empty_tree_and_none_leaves():
  tx = tensor_galore_adamw(1e-3, min_size=1)
  state = tx.init({})
  updates, _ = tx.update({}, state, {})
  assert updates == {}
  params = {"w": jnp.ones((4, 4)), "nothing": None}
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(params, state, params)
  assert updates["nothing"] is None and updates["w"].shape == (4, 4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_updates_keep_the_gradient_dtype_and_factors_are_at_least_float32(dtype):
  params = {"w": jnp.ones((8, 6, 4), dtype) * (1 + jnp.arange(4)).astype(dtype)}
  # float16 cannot hold Adam's default eps (1e-8 rounds to 0): as with any Adam,
  # it needs an eps it can represent.
  eps = 1e-4 if dtype == jnp.float16 else 1e-8
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1, eps=eps)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(params, state, params)
  assert updates["w"].dtype == dtype
  # The same step computed in float32 (complex64): the factors run in float32 either way, but
  # Adam's moments are kept in the gradient's dtype (as optax.adam keeps them), and
  # `(1 - b2) g^2`, its root, the division and the output each round there: a handful of the
  # dtype's eps relative to the largest entry (7 measured for float16); 16 is the bound.
  wide = jnp.complex64 if jnp.iscomplexobj(params["w"]) else jnp.float32
  reference = {"w": params["w"].astype(wide)}
  ref_tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1, eps=eps)
  expected, _ = jax.jit(ref_tx.update)(reference, ref_tx.init(reference), reference)
  scale = float(jnp.max(jnp.abs(expected["w"])))
  tolerance = 16 * float(jnp.finfo(dtype).eps) * scale
  np.testing.assert_allclose(
    np.asarray(updates["w"].astype(wide)), np.asarray(expected["w"]), atol=tolerance
  )
  factor_dtype = state[0].factors["w"][0].dtype
  assert jnp.finfo(factor_dtype).bits >= 32
  assert jnp.iscomplexobj(jnp.zeros((), factor_dtype)) == jnp.iscomplexobj(params["w"])


def test_float64_leaves_get_float64_factors():
  with jax.enable_x64(True):
    params = {"w": jax.random.normal(jax.random.key(0), (6, 5, 4), jnp.float64)}
    state = tensor_galore(rank=0.5, min_size=1).init(params)
    assert state.factors["w"][0].dtype == jnp.float64


def test_mu_dtype_controls_the_first_moment():
  params = {"w": jnp.ones((32, 32, 16))}
  tx = tensor_galore_adamw(1e-3, mu_dtype="bfloat16", min_size=1)
  adam_state = tx.init(params)[0].base_optimizer_state
  assert adam_state.mu["w"].dtype == jnp.bfloat16
  assert adam_state.nu["w"].dtype == jnp.float32


def test_default_min_size_projects_small_fno_spectral_weights_only():
  params = {
    "spectral": jnp.ones((24, 24, 8, 5), jnp.complex64),
    "skip": jnp.ones((24, 24)),
    "mlp": jnp.ones((24, 12)),
    "bias": jnp.ones(24),
    "norm_scale": jnp.ones(24),
  }
  state = tensor_galore_adamw(1e-3).init(params)[0]
  projected = {k for k, v in state.factors.items() if v != ()}
  assert projected == {"spectral"}


def test_state_is_a_plain_namedtuple_of_arrays():
  params = _fno_like_params(jax.random.key(10))
  state = tensor_galore(min_size=64).init(params)
  assert isinstance(state, TensorGaLoreState)
  assert state.count.dtype == jnp.int32
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array)


# --- Choosing leaves ---------------------------------------------------------------------------


def test_a_callable_spec_and_a_pytree_spec_pick_leaves():
  params = {"a": jnp.ones((6, 6, 6)), "b": jnp.ones((6, 6, 6))}
  every = TuckerSpec(rank=2, num_projected="all")
  by_tree = tensor_galore(spec={"a": every, "b": None}).init(params)
  # An int rank alone cuts the first mode only, as a float rank cuts the fewest.
  one = tensor_galore(spec={"a": TuckerSpec(rank=2), "b": None}).init(params)
  assert [f.shape for f in one.factors["a"]] == [(6, 2)]
  by_callable = tensor_galore(spec=lambda p: {"a": None, "b": TuckerSpec(rank=(None, 2, 3))}).init(
    params
  )
  assert [f.shape for f in by_tree.factors["a"]] == [(6, 2)] * 3 and by_tree.factors["b"] == ()
  assert by_callable.factors["a"] == () and [f.shape for f in by_callable.factors["b"]] == [
    (6, 2),
    (6, 3),
  ]


# --- Memory and convergence ---------------------------------------------------------------------


def test_optimizer_state_of_fno_shaped_weights_is_at_most_035x_adamw():
  key = jax.random.key(14)
  params = {}
  for layer in range(4):
    params[f"block{layer}"] = {
      "spectral": _complex_normal(jax.random.fold_in(key, layer), (32, 32, 16, 9)),
      "skip": jnp.ones((32, 32)),
      "mlp_in": jnp.ones((32, 16)),
      "mlp_out": jnp.ones((16, 32)),
      "gate": jnp.ones(32),
    }
  params["lift"] = jnp.ones((3, 64))
  params["proj"] = jnp.ones((32, 64))
  ours = optimizer_state_bytes(tensor_galore_adamw(1e-3, rank=0.25), params)
  adamw = optimizer_state_bytes(optax.adamw(1e-3), params)
  assert ours <= 0.35 * adamw, ours / adamw


def test_complex_low_rank_tensor_regression_reaches_100x_lower_loss():
  key = jax.random.key(15)
  k1, k2, k3 = jax.random.split(key, 3)
  # Target: a weight of multilinear rank (2, 2, 2, 2), observed through random inputs.
  core = _complex_normal(k1, (2, 2, 2, 2))
  factors = [
    jnp.linalg.qr(_complex_normal(jax.random.fold_in(k2, n), (s, 2)))[0]
    for n, s in enumerate((8, 8, 6, 4))
  ]
  target = functools.reduce(
    lambda t, nu: jnp.moveaxis(jnp.tensordot(t, nu[1].T, axes=(nu[0], 0)), -1, nu[0]),
    enumerate(factors),
    core,
  )
  inputs = _complex_normal(k3, (64, 8))

  def loss(p):
    pred = jnp.einsum("bi,iojk->bojk", inputs, p["w"])
    true = jnp.einsum("bi,iojk->bojk", inputs, target)
    return jnp.mean(jnp.abs(pred - true) ** 2)

  params = {"w": jnp.zeros_like(target)}
  tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, update_proj_gap=50, weight_decay=0.0)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = tx.update(optax.tree.conj(grads), s, p)  # JAX returns conj(descent direction)
    return optax.apply_updates(p, updates), s, value

  first = float(loss(params))
  for _ in range(400):
    params, state, _ = step(params, state)
  assert float(loss(params)) < first / 100


def test_real_mlp_regression_with_projected_weights_ends_within_1_2x_of_adamw():
  key = jax.random.key(16)
  kx, kt, kp = jax.random.split(key, 3)
  x = jax.random.normal(kx, (256, 32))
  teacher = [
    jax.random.normal(jax.random.fold_in(kt, i), s) / jnp.sqrt(s[0])
    for i, s in enumerate([(32, 64), (64, 64), (64, 8)])
  ]
  y = jnp.tanh(jnp.tanh(x @ teacher[0]) @ teacher[1]) @ teacher[2]
  params = [
    {"w": jax.random.normal(jax.random.fold_in(kp, i), s) / jnp.sqrt(s[0]), "b": jnp.zeros(s[1])}
    for i, s in enumerate([(32, 64), (64, 64), (64, 8)])
  ]

  def loss(p):
    h = jnp.tanh(x @ p[0]["w"] + p[0]["b"])
    h = jnp.tanh(h @ p[1]["w"] + p[1]["b"])
    return jnp.mean((h @ p[2]["w"] + p[2]["b"] - y) ** 2)

  def train(tx, steps=300):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
      grads = jax.grad(loss)(p)
      u, s = tx.update(grads, s, p)
      return optax.apply_updates(p, u), s

    p = params
    for _ in range(steps):
      p, state = step(p, state)
    return float(loss(p)), state

  ours_loss, ours_state = train(
    tensor_galore_adamw(3e-3, rank=0.5, min_size=512, update_proj_gap=50)
  )
  assert all(len(layer["w"]) == 1 for layer in ours_state[0].factors)  # every weight projected
  adamw_loss, _ = train(optax.adamw(3e-3))
  assert ours_loss <= 1.2 * adamw_loss, (ours_loss, adamw_loss)


# --- States of other versions --------------------------------------------------------------------


@pytest.mark.parametrize("fields", [3, 4])
def test_a_state_of_another_version_is_refused_saying_to_initialise_a_new_one(fields):
  """0.3 states had three fields, 1.0 and 1.1 states four (no novelty): neither is read."""
  params = {"w": jnp.ones((8, 6, 5), jnp.complex64)}
  tx = tensor_galore(rank=0.5, min_size=1)
  state = tuple(tx.init(params))
  with raises_naming(ValueError, "TensorGaLoreState", "0.x", "1.1", "Initialise a new state"):
    tx.update(params, state[:fields])


def test_a_state_of_0_2_is_refused_naming_the_part_that_does_not_fit():
  """0.2 states had five fields, as many as today's: the per-leaf checks refuse its parts."""
  params = {"w": jnp.ones((8, 6, 5), jnp.complex64)}
  tx = tensor_galore(rank=0.5, min_size=1)
  count, factors, base, *_ = tx.init(params)
  with raises_naming(ValueError, "leaf ['w']", "Initialise a new state"):
    tx.update(params, (count, factors, base, factors, factors))


def test_a_state_restored_as_a_mapping_of_its_fields_is_accepted():
  params = {"w": jnp.ones((8, 6, 5), jnp.complex64)}
  tx = tensor_galore(rank=0.5, min_size=1)
  state = tx.init(params)
  expected, _ = tx.update(params, state)
  updates, _ = tx.update(params, state._asdict())
  chex.assert_trees_all_close(updates, expected)


def test_another_transformations_state_is_refused_by_name():
  params = {"w": jnp.ones((8, 6, 5))}
  with pytest.raises(ValueError, match="expected a TensorGaLoreState"):
    tensor_galore(rank=0.5, min_size=1).update(params, optax.adam(1e-3).init(params))


# --- One meaning per argument -----------------------------------------------------------------


def test_the_chain_and_the_one_call_optimizer_are_one_algorithm_with_one_set_of_defaults():
  """Bitwise the same updates, over a refresh, on a tensor, a matrix (with its residual step)
  and a bias; and not the same as the paper's plain settings (the test would see a change)."""
  key = jax.random.key(21)
  params = {
    "w": _complex_normal(key, (32, 32, 16, 9)),
    "m": jax.random.normal(key, (256, 256)),
    "b": jnp.ones(32),
  }
  chain = optax.chain(
    tensor_galore(), optax.add_decayed_weights(1e-4), optax.scale_by_learning_rate(1e-3)
  )
  one_call = tensor_galore_adamw(1e-3)
  plain = optax.chain(tensor_galore(**PLAIN), optax.scale_by_learning_rate(1e-3))
  states = [tx.init(params) for tx in (chain, one_call, plain)]
  for step in range(3):
    grads = jax.tree.map(lambda p, k=step: p * (k + 1) + 0.1, params)
    (a, states[0]), (b, states[1]), (c, states[2]) = (
      jax.jit(tx.update)(grads, s, params) for tx, s in zip((chain, one_call, plain), states)
    )
    chex.assert_trees_all_equal(a, b)
  assert float(jnp.linalg.norm(a["m"] - c["m"])) > 0.1 * float(jnp.linalg.norm(c["m"]))


def test_the_compact_settings_are_the_same_optimizer_in_a_chain_and_in_one_call():
  key = jax.random.key(22)
  params = {"w": _complex_normal(key, (24, 24, 8, 5)), "m": jax.random.normal(key, (64, 48))}
  adam = dict(second_moment="factored", mu_dtype="bfloat16")
  chain = optax.chain(
    tensor_galore(rank=0.25, min_size=1000, base_optimizer=scale_by_core_adam(**adam)),
    optax.add_decayed_weights(1e-4),
    optax.scale_by_learning_rate(1e-3),
  )
  one_call = tensor_galore_adamw(1e-3, rank=0.25, min_size=1000, **adam)
  states = [tx.init(params) for tx in (chain, one_call)]
  chex.assert_trees_all_equal_shapes_and_dtypes(*states)
  for step in range(3):
    grads = jax.tree.map(lambda p, k=step: p * (k + 1) + 0.1, params)
    (a, states[0]), (b, states[1]) = (
      jax.jit(tx.update)(grads, s, params) for tx, s in zip((chain, one_call), states)
    )
    chex.assert_trees_all_equal(a, b)
  # The first moments are bfloat16 (pairs for the complex core), the second moments factored.
  adam_state = states[1][0].base_optimizer_state
  assert adam_state.mu["w"].shape == (6, 24, 8, 5, 2) and adam_state.mu["w"].dtype == jnp.bfloat16
  assert adam_state.nu["w"].mean_d0.shape == (6, 8, 5) and adam_state.nu["m"].mean_d1.shape == (64,)


def test_a_step_relative_to_the_parameter_scale_is_the_chain_it_names_and_scales_with_the_weights():
  key = jax.random.key(23)
  params = {"w": _complex_normal(key, (24, 24, 8, 5)), "m": jax.random.normal(key, (64, 48))}
  grads = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
  adam = dict(second_moment="factored", mu_dtype="bfloat16")
  one_call = tensor_galore_adamw(1e-2, min_size=1000, multiply_by_parameter_scale=True, **adam)
  chain = optax.chain(
    tensor_galore(min_size=1000, base_optimizer=scale_by_core_adam(**adam)),
    optax.scale_by_param_block_rms(),
    optax.add_decayed_weights(1e-4),
    optax.scale_by_learning_rate(1e-2),
  )
  a, _ = jax.jit(one_call.update)(grads, one_call.init(params), params)
  b, _ = jax.jit(chain.update)(grads, chain.init(params), params)
  chex.assert_trees_all_equal(a, b)
  # Weights three times larger, the same gradients, no decay: steps three times longer.
  relative = tensor_galore_adamw(
    1e-2, min_size=1000, weight_decay=0.0, multiply_by_parameter_scale=True
  )
  small, _ = relative.update(grads, relative.init(params), params)
  large_params = jax.tree.map(lambda p: 3 * p, params)
  large, _ = relative.update(grads, relative.init(large_params), large_params)
  for name in params:
    np.testing.assert_allclose(large[name], 3 * small[name], rtol=1e-5, atol=1e-7)
  with pytest.raises(TypeError, match="multiply_by_parameter_scale"):
    tensor_galore_adamw(1e-3, multiply_by_parameter_scale="yes")


def test_numpy_ranks_and_integers_from_a_config_are_accepted():
  params = {"w": jnp.ones((16, 12, 8))}
  for rank in (np.int64(4), np.float32(0.25)):
    state = tensor_galore(rank=rank, min_size=1).init(params)
    assert [f.shape for f in state.factors["w"]] == [(16, 4)]


def test_a_plan_warning_fires_once_per_leaf_at_init_and_points_at_the_caller():
  """rank=100 cuts none of the modes of a leaf large enough to project: said once, at init,
  attributed to this file; not again by eager updates nor by traces of the update."""
  import warnings

  params = {"w": jnp.ones((32, 32, 16, 9)), "v": jnp.ones((32, 32, 16, 9)), "b": jnp.ones(3)}
  tx = tensor_galore(rank=100)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = tx.init(params)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 2, messages  # one per large leaf, none for the bias
  assert all("cuts none of its modes" in m for m in messages)
  assert {m.split(" with shape")[0] for m in messages} == {"leaf ['w']", "leaf ['v']"}
  assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _, state = tx.update(params, state)
    jax.jit(tx.update)(params, state)
    jax.jit(optax.chain(tx).init)(params)  # a trace of init inside a chain warns; here once more
  assert len([w for w in caught if "cuts none" in str(w.message)]) == 2


def test_a_float_rank_too_fine_for_the_modes_says_the_real_fraction():
  import warnings

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tensor_galore(rank=0.05, min_size=1).init({"w": jnp.ones((2, 2, 2))})
  (message,) = [str(w.message) for w in caught]
  assert "leaf ['w']" in message and "rank=0.05 keeps 0.125 of its entries" in message


def test_extra_args_reach_the_base_optimizer():
  seen = {}

  def update(updates, state, params=None, *, note=None):
    seen["note"] = note
    return updates, state

  base = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  tx = tensor_galore(rank=0.5, min_size=1, base_optimizer=base)
  params = {"w": jnp.ones((4, 4, 4))}
  tx.update(params, tx.init(params), note="from the caller")
  assert seen["note"] == "from the caller"


def test_flax_scanned_layers_get_their_own_factors_and_keep_their_layer_axis():
  from flax import nnx

  @nnx.vmap(in_axes=0, out_axes=0)
  def make(key):
    return nnx.Linear(96, 192, rngs=nnx.Rngs(key))

  layers = make(jax.random.split(jax.random.key(0), 4))
  params = nnx.state(layers, nnx.Param)
  (kernel,) = [x for x in jax.tree.leaves(params) if x.ndim == 3]
  assert kernel.shape == (4, 96, 192)
  for rank in (0.25, 8):
    state = tensor_galore(rank=rank, min_size=1).init(params)
    (factors,) = [f for f in jax.tree.leaves(state.factors) if f.ndim == 3]
    assert factors.shape[:2] == (4, 96)  # every layer its own factor of its 96 inputs
