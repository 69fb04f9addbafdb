"""Contracts of `tensor_galore` that small snippets break easily.

Each test here pins one behaviour a user relies on: which leaves ``scale``
touches, what happens to empty leaves and mismatched dtypes, that factors
really follow the gradient, that every kind of per-leaf moment is rotated,
stacked layers, and the wrappers optax users put around an optimizer.
"""

import functools
import warnings
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from _helpers import normal as _complex_normal
from _helpers import projector

from tensor_galore_optax import TuckerSpec, tensor_galore, tensor_galore_adamw
from tensor_galore_optax._tucker import back_project, project

# Every mode the rank can cut, as in the paper (the default projects the fewest that reach it).
EVERY_MODE = TuckerSpec(num_projected="all")


def _low_rank(key, shape, ranks, dtype=jnp.complex64):
  """A tensor of multilinear rank ``ranks``, and its factors' column spaces."""
  keys = jax.random.split(key, len(shape) + 1)
  t = _complex_normal(keys[0], ranks, dtype)
  spaces = []
  for n, (i, r) in enumerate(zip(shape, ranks)):
    u, _ = jnp.linalg.qr(_complex_normal(keys[n + 1], (i, r), dtype))
    spaces.append(u)
    t = jnp.moveaxis(jnp.tensordot(t, u.T, axes=(n, 0)), -1, n)
  return t, spaces


_projector = projector


# --- scale ---------------------------------------------------------------------------------------


def test_scale_multiplies_projected_leaves_only():
  params = {"w": _complex_normal(jax.random.key(0), (6, 5, 4)), "b": jnp.arange(1.0, 6.0)}
  full = tensor_galore(
    rank=(1.0, 1.0, 1.0), min_size=1, scale=1.0, spec={"w": TuckerSpec(), "b": None}
  )
  scaled = tensor_galore(
    rank=(1.0, 1.0, 1.0), min_size=1, scale=0.25, spec={"w": TuckerSpec(), "b": None}
  )
  u_full, _ = jax.jit(full.update)(params, full.init(params))
  u_scaled, _ = jax.jit(scaled.update)(params, scaled.init(params))
  chex.assert_trees_all_close(u_scaled["b"], u_full["b"])  # a bias: not projected, not scaled
  chex.assert_trees_all_close(u_scaled["w"], 0.25 * u_full["w"], atol=1e-6)


# --- Shapes and dtypes at the edges --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 5, 4), (3, 0), (6, 0, 2)])
def test_zero_size_leaves_pass_through_unprojected(shape):
  params = {"empty": jnp.zeros(shape), "w": jnp.ones((4, 3, 2))}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=0)
  state = tx.init(params)
  assert state[0].factors["empty"] == ()
  updates, _ = jax.jit(tx.update)(params, state, params)
  assert updates["empty"].shape == shape
  # An explicit spec on an empty leaf has nothing to project either.
  tx = tensor_galore(spec={"empty": TuckerSpec(), "w": None})
  assert tx.init(params).factors["empty"] == ()


def test_complex_gradient_for_a_real_state_fails_naming_the_leaf():
  params = {"layer": {"w": jnp.ones((6, 5, 4))}}
  tx = tensor_galore_adamw(1e-3, rank=0.5, min_size=1)
  state = tx.init(params)
  grads = {"layer": {"w": jnp.ones((6, 5, 4), jnp.complex64)}}
  with pytest.raises(TypeError, match=r"\['layer'\]\['w'\].*complex"):
    tx.update(grads, state, params)


def test_complex128_matches_a_complex64_run():
  """Values, not only dtypes: the 64-bit path computes the same updates."""
  with jax.enable_x64(True):
    grads = [_complex_normal(jax.random.key(k), (6, 5, 4), jnp.complex128) for k in range(3)]
    results = {}
    for dtype in (jnp.complex128, jnp.complex64):
      tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, update_proj_gap=2)
      params = {"w": jnp.zeros((6, 5, 4), dtype)}
      state = tx.init(params)
      for g in grads:
        updates, state = jax.jit(tx.update)({"w": g.astype(dtype)}, state, params)
      assert updates["w"].dtype == dtype and state[0].factors["w"][0].dtype == dtype
      results[dtype] = updates["w"]
    chex.assert_trees_all_close(
      results[jnp.complex64].astype(jnp.complex128), results[jnp.complex128], atol=1e-5
    )


@pytest.mark.parametrize("mu_dtype", [jnp.bfloat16, "bfloat16"])
def test_bfloat16_first_moment_stays_close_to_a_float32_one(mu_dtype):
  params = {"w": jnp.zeros((8, 6, 5))}
  runs = {}
  for name, dtype in (("bf16", mu_dtype), ("f32", None)):
    tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, mu_dtype=dtype)
    state = tx.init(params)
    for k in range(4):
      g = {"w": jax.random.normal(jax.random.key(k), (8, 6, 5))}
      updates, state = jax.jit(tx.update)(g, state, params)
    runs[name] = (updates, state[0].base_optimizer_state.mu["w"])
  assert runs["bf16"][1].dtype == jnp.bfloat16
  chex.assert_trees_all_close(runs["bf16"][0], runs["f32"][0], rtol=2e-2, atol=1e-4)


# --- The factors follow the gradient -------------------------------------------------------------


def test_factors_span_the_gradients_leading_subspaces_through_the_transformation():
  """A never-refreshed (identity) factor fails this; any orthonormal one is not enough."""
  shape, ranks = (10, 9, 8, 6), (3, 2, 4, 2)
  grad, spaces = _low_rank(jax.random.key(1), shape, ranks)
  tx = tensor_galore(rank=ranks, min_size=1)
  _, state = jax.jit(tx.update)({"w": grad}, tx.init({"w": grad}))
  for u, space in zip(state.factors["w"], spaces):
    chex.assert_trees_all_close(_projector(u), _projector(space), atol=1e-4)


@pytest.mark.parametrize("bad", [jnp.nan, 0.0])
def test_a_refresh_after_an_unusable_first_gradient_finds_the_subspace(bad):
  """Step 0's gradient cannot define a subspace (the identity is kept); the next refresh
  computes the factors from the gradient."""
  shape, ranks = (10, 9, 8), (3, 2, 4)
  grad, spaces = _low_rank(jax.random.key(2), shape, ranks)
  tx = tensor_galore(rank=ranks, min_size=1, update_proj_gap=2)
  state = tx.init({"w": grad})
  update = jax.jit(tx.update)
  _, state = update({"w": jnp.full(shape, bad, grad.dtype)}, state)
  chex.assert_trees_all_equal(state.factors, tx.init({"w": grad}).factors)
  _, state = update({"w": grad}, state)  # not a refresh step
  _, state = update({"w": grad}, state)  # step 2 refreshes
  for u, space in zip(state.factors["w"], spaces):
    chex.assert_trees_all_close(_projector(u), _projector(space), atol=1e-4)


@pytest.mark.parametrize("magnitude", [1e19, 1e-21])
def test_extreme_gradient_magnitudes_give_finite_updates_and_the_right_factors(magnitude):
  shape, ranks = (10, 9, 8), (3, 2, 4)
  grad, spaces = _low_rank(jax.random.key(3), shape, ranks)
  tx = tensor_galore(rank=ranks, min_size=1, base_optimizer=optax.identity())
  updates, state = jax.jit(tx.update)({"w": grad * magnitude}, tx.init({"w": grad}))
  chex.assert_tree_all_finite(updates)
  for u, space in zip(state.factors["w"], spaces):
    chex.assert_trees_all_close(_projector(u), _projector(space), atol=1e-4)


def test_a_moment_of_the_wrong_shape_is_reported_wherever_it_is_nested():
  base = optax.partition({"a": optax.scale_by_adam(), "b": optax.identity()}, {"w": "a"})
  tx = tensor_galore(rank=0.5, min_size=1, base_optimizer=base)
  state = tx.init({"w": jnp.ones((6, 5, 4))})
  other = tensor_galore(rank=0.25, min_size=1, base_optimizer=base).init({"w": jnp.ones((6, 5, 4))})
  broken = state._replace(base_optimizer_state=other.base_optimizer_state)
  with pytest.raises(ValueError, match=r"\['w'\].*`mu`"):
    tx.update({"w": jnp.ones((6, 5, 4))}, broken)


# --- Second moments of complex cores -------------------------------------------------------------


def test_complex_cores_store_a_real_second_moment_and_update_as_optax_adam():
  key = jax.random.key(11)
  grads = [_complex_normal(jax.random.fold_in(key, k), (6, 5, 4)) for k in range(3)]
  # Every mode projected (a tuple projects as given), so that the check below can name them.
  tx = tensor_galore(rank=(0.8, 0.8, 0.8), min_size=1, update_proj_gap=100, scale=1.0)
  state = tx.init({"w": grads[0]})
  assert state.base_optimizer_state.mu["w"].dtype == jnp.complex64
  assert state.base_optimizer_state.nu["w"].dtype == jnp.float32
  # Adam's decay rates as arrays, as tensor_galore's default Adam has them: the same arithmetic
  # (from Python floats, `1 - b2` would round from double precision, a 1e-5 relative change).
  adam = optax.scale_by_adam(b1=jnp.asarray(0.9), b2=jnp.asarray(0.999))
  adam_state = None
  for g in grads:
    updates, state = jax.jit(tx.update)({"w": g}, state)
    factors, modes = state.factors["w"], (0, 1, 2)
    core = project(g, factors, modes)
    adam_state = adam.init(core) if adam_state is None else adam_state
    step, adam_state = adam.update(core, adam_state)
    # The same functions on the same numbers, but compiled (jit) against eager: XLA may fuse
    # and reorder the products, a few float32 ulps of entries of order one.
    chex.assert_trees_all_close(
      updates["w"], back_project(step, factors, modes), rtol=4e-6, atol=1e-6
    )
  assert state.base_optimizer_state.nu["w"].dtype == jnp.float32
  assert adam_state.nu.dtype == jnp.complex64  # optax's own stores it complex


class _LastGradient(NamedTuple):
  nu: Any


def test_a_base_optimizer_whose_nu_must_be_complex_keeps_it_complex():
  """A field named ``nu`` that holds complex values (here, the last gradient) is left alone."""
  base = optax.GradientTransformation(
    lambda params: _LastGradient(jax.tree.map(jnp.zeros_like, params)),
    lambda updates, state, params=None: (updates, _LastGradient(updates)),
  )
  grads = {"w": _complex_normal(jax.random.key(12), (6, 5, 4))}
  tx = tensor_galore(rank=0.5, min_size=1, base_optimizer=base)
  state = tx.init(grads)
  assert state.base_optimizer_state.nu["w"].dtype == jnp.complex64
  updates, state = jax.jit(tx.update)(grads, state)
  assert state.base_optimizer_state.nu["w"].dtype == jnp.complex64
  assert jnp.iscomplexobj(updates["w"])


@pytest.mark.parametrize(
  ("hyperparam_dtype", "nu_dtype"), [(None, "complex64"), ("float32", "float32")]
)
def test_complex_hyperparameters_keep_the_second_moment_complex_without_a_lossy_cast(
  hyperparam_dtype, nu_dtype
):
  """``inject_hyperparams`` makes ``b2`` complex for complex params: Adam's ``nu`` is then
  computed complex, and storing it real would take a complex-to-real cast each step."""
  grads = {"w": _complex_normal(jax.random.key(13), (6, 5, 4))}
  tx = optax.inject_hyperparams(
    tensor_galore_adamw,
    static_args=("rank", "min_size", "update_proj_gap"),
    hyperparam_dtype=hyperparam_dtype and jnp.dtype(hyperparam_dtype),
  )(learning_rate=1e-2, rank=0.5, min_size=1)
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    state = tx.init(grads)
    updates, state = jax.jit(tx.update)(grads, state, grads)
  (galore_state, *_) = state.inner_state
  assert galore_state.base_optimizer_state.nu["w"].dtype == jnp.dtype(nu_dtype)
  chex.assert_tree_all_finite(updates)


# --- Stacked layers (batch axes) -----------------------------------------------------------------


def test_batch_axes_give_each_layer_its_own_factors_like_separate_leaves():
  layers = 3
  key = jax.random.key(5)
  grads = [_complex_normal(jax.random.fold_in(key, k), (layers, 6, 5, 4)) for k in range(3)]
  stacked = tensor_galore_adamw(
    1e-2,
    rank=0.5,
    update_proj_gap=2,
    min_size=1,
    spec=TuckerSpec(batch_axes=(0,), num_projected="all"),
  )
  separate = tensor_galore_adamw(1e-2, rank=0.5, update_proj_gap=2, min_size=1, spec=EVERY_MODE)
  params = jnp.zeros((layers, 6, 5, 4), jnp.complex64)
  s_stacked = stacked.init({"w": params})
  s_separate = separate.init({f"w{i}": params[i] for i in range(layers)})
  # The mode of 4 is left whole (rank 0.5 would keep all 4), the others share the budget.
  assert [f.shape for f in s_stacked[0].factors["w"]] == [(3, 6, 5), (3, 5, 4)]
  for g in grads:
    u_stacked, s_stacked = jax.jit(stacked.update)({"w": g}, s_stacked, {"w": params})
    u_separate, s_separate = jax.jit(separate.update)(
      {f"w{i}": g[i] for i in range(layers)},
      s_separate,
      {f"w{i}": params[i] for i in range(layers)},
    )
    for i in range(layers):
      chex.assert_trees_all_close(u_stacked["w"][i], u_separate[f"w{i}"], atol=1e-6)
  for i in range(layers):
    for a, b in zip(s_stacked[0].factors["w"], s_separate[0].factors[f"w{i}"]):
      chex.assert_trees_all_close(a[i], b, atol=1e-5)


# --- One refresh per leaf ------------------------------------------------------------------------


def test_each_projected_leaf_refreshes_in_its_own_cond():
  """A leaf's refresh waits for its own gradient only, not for the whole tree's."""
  params = {f"w{i}": jnp.ones((6, 5, 4)) for i in range(3)} | {"b": jnp.ones(4)}
  tx = tensor_galore(rank=0.5, min_size=1)
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params))
  conds = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "cond"]
  assert len(conds) == 3
  for eqn, name in zip(conds, sorted(k for k in params if k != "b")):
    # Operands: the predicate's index, the leaf's gradient and its factors; no other gradient.
    gradient_inputs = [v for v in eqn.invars if getattr(v.aval, "shape", None) == (6, 5, 4)]
    assert len(gradient_inputs) == 1, name


# --- Wrappers around tensor_galore --------------------------------------------------------------


def _train(tx, steps=40):
  params = {"w": _complex_normal(jax.random.key(6), (8, 6, 5)) * 0.1, "b": jnp.zeros(5)}
  target = {"w": _complex_normal(jax.random.key(7), (8, 6, 5)), "b": jnp.ones(5)}
  loss = lambda p: sum(jnp.sum(jnp.abs(p[k] - target[k]) ** 2) for k in p)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    g = optax.tree.conj(jax.grad(loss)(p))
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  start = float(loss(params))
  for _ in range(steps):
    params, state = step(params, state)
  return start, float(loss(params))


@pytest.mark.parametrize(
  "make",
  [
    lambda: tensor_galore_adamw(5e-2, rank=0.5, min_size=1),
    lambda: tensor_galore_adamw(5e-2, rank=0.5, min_size=1, update_proj_gap=1),
    lambda: tensor_galore_adamw(5e-2, rank=0.5, min_size=1, nesterov=True),
    lambda: tensor_galore_adamw(5e-2, rank=0.5, min_size=1, eps_root=1e-8),
    # Axes 2 and 0 as one mode, projected on that side only (a matrix, as GaLore).
    lambda: tensor_galore_adamw(
      5e-2, rank=0.8, spec={"w": TuckerSpec(modes=((2, 0), 1), num_projected=1), "b": None}
    ),
    lambda: optax.chain(
      optax.masked(tensor_galore_adamw(5e-2, rank=0.5, min_size=1), {"w": True, "b": False}),
      optax.masked(optax.adam(5e-2), {"w": False, "b": True}),
    ),
    lambda: optax.partition(
      {"g": tensor_galore_adamw(5e-2, rank=0.5, min_size=1), "a": optax.adam(5e-2)},
      {"w": "g", "b": "a"},
    ),
  ],
  ids=[
    "defaults",
    "refresh_every_step",
    "nesterov",
    "eps_root",
    "permuted_grouped_modes",
    "masked",
    "partition",
  ],
)
def test_trains_end_to_end_in_every_configuration(make):
  start, end = _train(make())
  assert end < 0.5 * start, (start, end)


def test_vmap_over_update_matches_separate_updates():
  """Under vmap the per-leaf cond becomes a select: both branches run every step
  (a refresh's cost each step), and the results are still those of separate runs."""
  tx = tensor_galore(rank=0.5, min_size=1, update_proj_gap=2)
  grads = _complex_normal(jax.random.key(8), (2, 3, 6, 5, 4))  # (steps, replicas, ...)
  params = jnp.zeros((3, 6, 5, 4), jnp.complex64)
  states = jax.vmap(lambda p: tx.init({"w": p}))(params)
  vmapped = jax.jit(jax.vmap(tx.update))
  separate = [tx.init({"w": params[i]}) for i in range(3)]
  for g in grads:
    updates, states = vmapped({"w": g}, states)
    for i in range(3):
      u, separate[i] = jax.jit(tx.update)({"w": g[i]}, separate[i])
      chex.assert_trees_all_close(updates["w"][i], u["w"], atol=1e-5)


def test_inject_hyperparams_matches_constant_hyperparameters_exactly():
  kwargs = dict(learning_rate=1e-2, rank=0.5, min_size=1)
  constant = tensor_galore_adamw(**kwargs)
  injected = optax.inject_hyperparams(
    tensor_galore_adamw, static_args=("rank", "update_proj_gap", "min_size")
  )(**kwargs)
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  u, _ = jax.jit(constant.update)(grads, constant.init(params), params)
  u_injected, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  chex.assert_trees_all_close(u_injected, u, rtol=1e-6)


# --- Flax --------------------------------------------------------------------------------------


def _flax_model():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.spectral = nnx.Param(_complex_normal(jax.random.key(9), (6, 6, 4, 3)) * 0.1)
      self.linear = nnx.Linear(6, 6, rngs=rngs)

    def __call__(self, x):
      mixed = jnp.einsum("bi,iojk->bojk", x.astype(jnp.complex64), self.spectral[...])
      return self.linear(jnp.abs(mixed).mean(axis=(2, 3)))

  return nnx, Model(nnx.Rngs(0))


def _flax_data():
  x = jax.random.normal(jax.random.key(10), (16, 6))
  return x, jnp.sin(x)


@pytest.mark.parametrize("options", [{}, {"residual_scale": None}], ids=str)
def test_flax_nnx_optimizer_trains_under_jit(options):
  nnx, model = _flax_model()
  tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, update_proj_gap=3, **options)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = _flax_data()
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, jax.tree.map(jnp.conj, grads))
    return loss

  losses = [float(step(model, optimizer)) for _ in range(12)]  # refreshes at 0, 3, 6, 9
  assert losses[-1] < 0.7 * losses[0]
  factors = optimizer.opt_state[0].factors["spectral"]
  assert [f.shape for f in factors.values()] == [(6, 3)]  # the input channels


def test_flax_train_state_trains_and_matches_the_functional_update():
  nnx, model = _flax_model()
  train_state = pytest.importorskip("flax.training.train_state")
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  tx = tensor_galore_adamw(1e-2, rank=0.5, min_size=1, update_proj_gap=3)
  x, y = _flax_data()

  def loss_fn(p):
    state = nnx.state(nnx.merge(graphdef, nnx.State(params)))
    nnx.replace_by_pure_dict(state, p)
    return jnp.mean((nnx.merge(graphdef, state)(x) - y) ** 2)

  ts = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  opt_state = tx.init(params)
  functional = params

  @functools.partial(jax.jit, static_argnums=())
  def step(ts):
    grads = jax.tree.map(jnp.conj, jax.grad(loss_fn)(ts.params))
    return ts.apply_gradients(grads=grads)

  for _ in range(5):
    grads = jax.tree.map(jnp.conj, jax.grad(loss_fn)(functional))
    updates, opt_state = tx.update(grads, opt_state, functional)
    functional = optax.apply_updates(functional, updates)
    ts = step(ts)
  chex.assert_trees_all_close(ts.params, functional, atol=1e-5)
