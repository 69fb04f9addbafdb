"""`scale_by_core_adam`: optax's Adam, with factored and low-precision moments where asked."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensor_galore_optax import (
  _adam,
  optimizer_state_bytes,
  projection_plan,
  scale_by_core_adam,
  tensor_galore_adamw,
)
from tensor_galore_optax._adam import INT8_BLOCK, Int8FirstMoment
from tests._helpers import normal


def _gradients(dtype, steps=4):
  """A few different gradient trees: a 4-D tensor, a matrix, a vector."""
  shapes = {"t": (6, 24, 8, 5), "m": (24, 12), "b": (7,)}
  keys = jax.random.split(jax.random.key(0), steps * len(shapes)).reshape(steps, len(shapes))
  return [
    {name: normal(key, shape, dtype) for (name, shape), key in zip(shapes.items(), row)}
    for row in keys
  ]


def _run(tx, grads):
  state = tx.init(grads[0])
  update = jax.jit(tx.update)
  for g in grads:
    step, state = update(g, state)
  return step, state


@pytest.mark.parametrize(
  "options",
  [{}, {"mu_dtype": jnp.bfloat16}, {"nesterov": True}, {"eps_root": 1e-8, "eps": 1e-6}],
  ids=["defaults", "bf16_mu", "nesterov", "eps_root"],
)
def test_on_real_arrays_it_is_optax_adam_bit_for_bit(options):
  grads = _gradients(jnp.float32)
  ours = _run(scale_by_core_adam(**options), grads)
  # Decay rates as arrays, as scale_by_core_adam makes them (see its comment).
  theirs = _run(optax.scale_by_adam(jnp.asarray(0.9), jnp.asarray(0.999), **options), grads)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_on_complex_arrays_the_second_moment_is_real_and_the_step_is_optax_adams():
  grads = _gradients(jnp.complex64)
  step, state = _run(scale_by_core_adam(), grads)
  ref_step, ref_state = _run(optax.scale_by_adam(jnp.asarray(0.9), jnp.asarray(0.999)), grads)
  for name, nu in state.nu.items():
    assert nu.dtype == jnp.float32, name
    # optax keeps |g|^2 in a complex array whose imaginary part is zero: the same numbers.
    np.testing.assert_array_equal(nu, ref_state.nu[name].real)
    np.testing.assert_array_equal(step[name], ref_step[name])


def test_a_bfloat16_first_moment_of_a_complex_array_keeps_its_imaginary_part():
  grads = _gradients(jnp.complex64)
  step, state = _run(scale_by_core_adam(mu_dtype="bfloat16"), grads)
  ref_step, ref_state = _run(scale_by_core_adam(), grads)
  for name, mu in state.mu.items():
    assert mu.dtype == jnp.bfloat16 and mu.shape == (*grads[0][name].shape, 2), name
    stored = np.asarray(mu, np.float32)
    ref = np.asarray(ref_state.mu[name])
    # bfloat16 keeps 8 significant bits: each part within 2**-8 of the float32 moment's.
    scale = np.abs(ref).max()
    np.testing.assert_allclose(stored[..., 0], ref.real, atol=2**-8 * scale)
    np.testing.assert_allclose(stored[..., 1], ref.imag, atol=2**-8 * scale)
    assert np.abs(ref.imag).max() > 0.1 * scale  # there was an imaginary part to keep
    # The step divides the moment by the (unchanged) second moment: the same relative error
    # per step, accumulated over the four rounded steps of the moment.
    np.testing.assert_allclose(
      step[name], ref_step[name], atol=4 * 2**-8 * np.abs(ref_step[name]).max()
    )


def _factored_oracle(grads, b1=0.9, b2=0.999, eps=1e-8, d0=1, d1=0):
  """Adam with Adafactor's second moment for one array, in float64 NumPy."""
  g0 = np.asarray(grads[0], np.complex128)
  m = np.zeros_like(g0)
  row = np.zeros(np.delete(g0.shape, d0))
  col = np.zeros(np.delete(g0.shape, d1))
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.complex128)
    m = b1 * m + (1 - b1) * g
    sq = np.abs(g) ** 2
    row = b2 * row + (1 - b2) * sq.mean(axis=d0)
    col = b2 * col + (1 - b2) * sq.mean(axis=d1)
    d1_in_row = d1 - 1 if d1 > d0 else d1
    v = np.expand_dims(row / row.mean(axis=d1_in_row, keepdims=True), d0) * np.expand_dims(col, d1)
    step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return step


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_a_factored_second_moment_is_adafactors_estimate_inside_adam(dtype):
  grads = _gradients(dtype)
  step, state = _run(scale_by_core_adam(second_moment="factored"), grads)
  # The two largest axes: (6, 24, 8, 5) factors over 24 (d0) and 8 (d1); (24, 12) over both.
  assert state.nu["t"].mean_d0.shape == (6, 8, 5) and state.nu["t"].mean_d1.shape == (6, 24, 5)
  assert state.nu["m"].mean_d0.shape == (12,) and state.nu["m"].mean_d1.shape == (24,)
  assert state.nu["b"].shape == (7,)  # one axis: the full second moment
  assert state.nu["t"].mean_d0.dtype == jnp.float32
  for name, (d0, d1) in {"t": (1, 2), "m": (0, 1)}.items():
    want = _factored_oracle([g[name] for g in grads], d0=d0, d1=d1)
    got = np.asarray(step[name])
    # float32 arithmetic of O(1) numbers over four steps: a few hundred ulps of the largest step.
    np.testing.assert_allclose(
      got, want.real if dtype == jnp.float32 else want, atol=3e-5 * np.abs(want).max()
    )


def test_a_rank_one_second_moment_is_held_exactly_by_its_factors():
  # |g|^2 = a b^T at every step: the factored estimate r c^T / mean(r) is the second moment
  # itself, so the factored Adam takes full Adam's steps.
  a = jnp.linspace(0.5, 2.0, 16)
  b = jnp.linspace(1.0, 3.0, 12)
  grads = [{"w": jnp.outer(a, b) * s} for s in (1.0, -0.5, 2.0)]
  full, _ = _run(scale_by_core_adam(), grads)
  factored, _ = _run(scale_by_core_adam(second_moment="factored"), grads)
  np.testing.assert_allclose(factored["w"], full["w"], rtol=1e-5)


def test_arrays_with_an_axis_below_min_dim_size_to_factor_keep_the_full_second_moment():
  grads = [{"w": normal(jax.random.key(1), (24, 7), jnp.float32)}]
  tx = scale_by_core_adam(second_moment="factored", min_dim_size_to_factor=8)
  factored, state = _run(tx, grads)
  assert state.nu["w"].shape == (24, 7)
  np.testing.assert_array_equal(factored["w"], _run(scale_by_core_adam(), grads)[0]["w"])


def test_the_compact_setting_keeps_the_bytes_it_promises():
  # An FNO-like model: complex spectral weights, a pointwise matrix, a bias.
  params = {
    "spectral": jnp.zeros((24, 24, 8, 5), jnp.complex64),
    "pointwise": jnp.zeros((24, 24), jnp.float32),
    "bias": jnp.zeros((24,), jnp.float32),
  }
  tx = tensor_galore_adamw(1e-3, rank=0.25, second_moment="factored", mu_dtype="bfloat16")
  state = jax.eval_shape(tx.init, params)[0]
  assert state.factors["spectral"][0].shape == (24, 6)  # the input channels, a quarter kept
  core = (6, 24, 8, 5)
  adam = state.base_optimizer_state
  expected = {
    # bfloat16 (real, imaginary) pairs of the core; the pointwise and bias moments in bfloat16.
    "mu": 2 * 2 * np.prod(core) + 2 * 24 * 24 + 2 * 24,
    # float32 row and column means: the core over its 24 (d0) and 8 (d1) axes, the matrix's
    # two sides; the bias keeps its full second moment.
    "nu": 4 * (6 * 8 * 5 + 6 * 24 * 5) + 4 * (24 + 24) + 4 * 24,
  }
  for field, want in expected.items():
    got = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(getattr(adam, field)))
    assert got == want, field
  factors = 8 * 24 * 6  # complex64
  novelty = 4 * 6  # one float32 per factor column
  counters = 4 + 4 + 4  # tensor_galore's, Adam's, and the decayed weights' none; chain's 0
  total = optimizer_state_bytes(tx, params)
  held = expected["mu"] + expected["nu"] + factors + novelty
  assert held <= total <= held + counters
  full = optimizer_state_bytes(tensor_galore_adamw(1e-3, rank=0.25), params)
  assert total < 0.45 * full


def test_a_complex_model_trains_under_jit_with_the_compact_setting():
  w = normal(jax.random.key(2), (16, 16, 8, 5))
  target = normal(jax.random.key(3), (16, 16, 8, 5))
  params = {"w": jnp.zeros_like(w)}
  tx = tensor_galore_adamw(
    3e-2, rank=0.5, min_size=1, second_moment="factored", mu_dtype="bfloat16"
  )

  def loss(p):
    return jnp.mean(jnp.abs(p["w"] - target) ** 2)

  @jax.jit
  def step(p, s):
    g = jax.tree.map(jnp.conj, jax.grad(loss)(p))
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  first = loss(params)
  for _ in range(100):
    params, state = step(params, state)
  assert params["w"].dtype == jnp.complex64
  # Half the rank of a full-rank target: the loss falls well below the start, not to zero.
  assert loss(params) < 0.7 * first


# --- An int8 first moment ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_an_int8_first_moment_is_blocks_of_int8_with_a_scale_each(dtype):
  grads = _gradients(dtype)
  state = scale_by_core_adam(mu_dtype="int8").init(grads[0])
  per_entry = 2 if dtype == jnp.complex64 else 1
  for name, g in grads[0].items():
    mu = state.mu[name]
    assert isinstance(mu, Int8FirstMoment), name
    blocks = -(-g.size * per_entry // INT8_BLOCK)
    assert mu.values.shape == (blocks, INT8_BLOCK) and mu.values.dtype == jnp.int8, name
    assert mu.scales.shape == (blocks,) and mu.scales.dtype == jnp.float32, name
  assert scale_by_core_adam(mu_dtype=jnp.int8).init(grads[0]).mu["t"].values.dtype == jnp.int8


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_an_int8_first_moment_follows_the_float32_one_within_its_grid(dtype):
  """Each rounding moves an entry by less than one level (1/127 of its block's largest); the
  stored moment carries each step's, decayed by b1 since: at most sum(0.9 ** k) < 10 levels."""
  grads = _gradients(dtype, steps=8)
  step, state = _run(scale_by_core_adam(mu_dtype="int8"), grads)
  ref_step, ref_state = _run(scale_by_core_adam(), grads)
  for name, g in grads[0].items():
    stored = _adam._load_mu(state.mu[name], g)
    ref = ref_state.mu[name]
    assert stored.dtype == ref.dtype, name
    level = float(jnp.max(state.mu[name].scales))  # the largest block's level
    np.testing.assert_allclose(stored, ref, atol=10 * level, err_msg=name)
    assert float(jnp.max(jnp.abs(stored - ref))) > 0, name  # it is rounded
    if dtype == jnp.complex64:
      assert float(jnp.max(jnp.abs(stored.imag))) > 0.1 * float(jnp.max(jnp.abs(ref))), name
    error = float(jnp.linalg.norm(step[name] - ref_step[name]))
    assert error < 0.05 * float(jnp.linalg.norm(ref_step[name])), name


def test_an_int8_first_moment_is_rounded_without_bias():
  """A block with one large entry: rounded to the nearest level, its small entries would stay
  at zero; rounded stochastically they hold their moment on average."""
  small = jnp.full((63,), 1e-3, jnp.float32)
  g = {"w": jnp.concatenate([jnp.array([10.0]), small])}
  tx = scale_by_core_adam(b1=0.5, mu_dtype="int8")
  state, update = tx.init(g), jax.jit(tx.update)
  stored = []
  for _ in range(400):
    _, state = update(g, state)
    stored.append(_adam._load_mu(state.mu["w"], g["w"]))
  # The moment of a constant gradient is the gradient itself (up to 0.5 ** t): the average
  # stored value of the small entries, over the steps and entries, is 1e-3, where one level is
  # 10 / 127 = 0.079.
  mean = float(jnp.mean(jnp.stack(stored[20:])[:, 1:]))
  assert abs(mean - 1e-3) < 2e-4, mean
  assert float(jnp.mean(jnp.stack(stored[20:])[:, 0])) == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize("mu_dtype", ["int16", jnp.uint8, "int4"])
def test_other_integer_first_moments_are_refused_naming_mu_dtype(mu_dtype):
  with pytest.raises(TypeError, match="mu_dtype"):
    scale_by_core_adam(mu_dtype=mu_dtype)


def test_the_int8_setting_keeps_the_bytes_it_promises_and_trains_a_complex_model_under_jit():
  params = {
    "spectral": jnp.zeros((24, 24, 8, 5), jnp.complex64),
    "pointwise": jnp.zeros((24, 24), jnp.float32),
    "bias": jnp.zeros((24,), jnp.float32),
  }
  options = dict(rank=0.2, second_moment="factored", multiply_by_parameter_scale=True)
  int8 = tensor_galore_adamw(1e-3, mu_dtype="int8", **options)
  bf16 = tensor_galore_adamw(1e-3, mu_dtype="bfloat16", **options)
  # The first moments: 1 + 4 / 64 bytes per real entry (complex: two) against bfloat16's 2.
  core = 5 * 24 * 8 * 5  # ceil(24 * 0.2) input channels
  entries = 2 * core + 24 * 24 + 24
  blocks = -(-2 * core // 64) + -(-24 * 24 // 64) + -(-24 // 64)
  int8_mu, bf16_mu = 64 * blocks + 4 * blocks, 2 * entries
  saved = optimizer_state_bytes(bf16, params) - optimizer_state_bytes(int8, params)
  assert saved == bf16_mu - int8_mu
  plan = projection_plan(params, rank=0.2, second_moment="factored", mu_dtype="int8")
  assert plan.state_bytes == optimizer_state_bytes(int8, params)

  target = normal(jax.random.key(3), (24, 24, 8, 5))

  def loss(p):
    return jnp.mean(jnp.abs(p["spectral"] - target) ** 2)

  tx = tensor_galore_adamw(3e-2, rank=0.5, min_size=1, second_moment="factored", mu_dtype="int8")

  @jax.jit
  def step(p, s):
    g = jax.tree.map(jnp.conj, jax.grad(loss)(p))
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  w = {"spectral": jnp.zeros((24, 24, 8, 5), jnp.complex64)}
  state, first = tx.init(w), loss(w)
  for _ in range(100):
    w, state = step(w, state)
  assert w["spectral"].dtype == jnp.complex64
  assert loss(w) < 0.7 * first  # half the rank of a full-rank target, as with bfloat16
