"""Tests of the Tucker algebra: rank resolution, tensor views, projections."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensor_galore_optax import _plan, _tucker
from tensor_galore_optax._tucker import TuckerSpec


@pytest.mark.parametrize(
  "rank, sizes, num_projected, expected",
  [
    (4, (8, 3, 16), None, (4, None, None)),  # an int: the first mode it cuts, like a float
    (4, (8, 3, 16), "all", (4, None, 4)),  # every mode it cuts; a mode kept whole is not projected
    (8, (4, 8, 16), None, (None, None, 8)),  # the first mode that an int cuts
    (100, (32, 32, 16, 9), None, (None, None, None, None)),  # cuts nothing
    (1.0, (8, 3, 16), None, (None, None, None)),  # full rank: nothing to project
    (0.25, (64, 64, 64, 33), None, (16, None, None, None)),  # the fewest modes: the first
    (0.25, (64, 64, 64, 33), "all", (46, 46, 46, 24)),  # the paper's: ceil(I * 0.25 ** (1/4))
    (0.25, (3, 3, 64, 64), None, (None, None, 16, None)),  # a 3 x 3 kernel's input channels
    (0.25, (3, 3, 64, 64), "all", (None, None, 32, 32)),  # its 3 x 3 modes left whole
    (0.25, (16, 16, 32, 17), None, (4, None, None, None)),  # axis order, not size
    (0.25, (64, 64), None, (16, None)),
    (0.5, (10, 40), 1, (5, None)),  # one side of a matrix: the smaller
    (0.5, (40, 10), 1, (None, 5)),
    (3, (7, 7), 1, (3, None)),  # ties: the earlier mode
    (0.02, (3, 3, 64, 64), None, (None, None, 10, 10)),  # one mode would keep 1.6x the budget
    ((2, None, 0.5), (8, 3, 16), None, (2, None, 8)),
    ((1.0, None), (8, 3), None, (8, None)),  # a tuple projects as given, whole modes too
  ],
)
def test_resolve_ranks(rank, sizes, num_projected, expected):
  assert _tucker.resolve_ranks(rank, sizes, num_projected, "t") == expected


@pytest.mark.parametrize(
  "rank, expected",
  [(np.int64(8), 8), (np.int32(3), 3), (np.float32(0.25), 0.25), ((np.int64(2), None), (2, None))],
)
def test_numpy_ranks_are_python_numbers(rank, expected):
  canonical = _tucker.canonical_rank(rank)
  assert canonical == expected
  assert type(canonical) is type(expected)


@pytest.mark.parametrize(
  "shape, batch",
  [
    ((4, 32, 32, 16, 9), (0,)),  # a scanned FNO stack
    ((12, 768, 3072), (0,)),  # a scanned transformer stack
    ((3, 3, 64, 64), ()),  # a Flax convolution kernel leads with one of two equal axes
    ((64, 64, 16, 9), ()),  # an FNO spectral weight
    ((256, 512), ()),  # a matrix is never stacked
  ],
)
def test_a_short_leading_axis_of_three_or_more_is_a_layer_axis(shape, batch):
  assert _tucker.stacked_axes(shape) == batch
  plan = _tucker.make_plan(shape, TuckerSpec(), 0.25, "t")
  assert plan.batch_shape == tuple(shape[a] for a in batch)
  # Named explicitly, none: the leading axis is a mode like the others.
  assert _tucker.make_plan(shape, TuckerSpec(batch_axes=()), 0.25, "t").batch_shape == ()


@pytest.mark.parametrize("rank", [0.25, 0.1, 8, 2])
@pytest.mark.parametrize("shape", [(4, 32, 32, 16, 9), (12, 768, 3072), (2, 64, 64, 16, 9)])
def test_a_default_never_cuts_a_layer_axis(shape, rank):
  """Stacked leaves at the defaults, float and int ranks: the layer axis is a batch axis."""
  plan = _tucker.make_plan(shape, TuckerSpec(), rank, "t")
  assert plan.batch_shape == shape[:1]
  assert plan.permutation[0] == 0


def test_a_five_axis_leaf_whose_leading_axis_would_be_cut_is_named_in_a_note():
  """Eight layers of (24, 24, 8, 5) weights: the leading axis is not the shortest, so nothing
  tells it from a tensor; a default that would cut it says so, naming both answers."""
  plan = _tucker.make_plan((8, 24, 24, 8, 5), TuckerSpec(), 0.25, "leaf ['w']")
  assert plan.batch_shape == () and plan.ranks[0] is not None
  note = _plan._note(plan, 0.25, "leaf ['w']", automatic=True)
  assert "leaf ['w']" in note and "batch_axes=0" in note and "batch_axes=()" in note
  assert _plan._note(plan, 0.25, "leaf ['w']", automatic=False) is None


_SIZES = st.lists(st.integers(1, 80), min_size=1, max_size=5)


@given(sizes=_SIZES, rank=st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.75]))
def test_a_float_rank_keeps_about_that_fraction_when_the_shape_allows(sizes, rank):
  plan = _tucker.make_plan(sizes, TuckerSpec(batch_axes=()), rank, "t")
  ranks = plan.ranks
  kept = math.prod(r or i for r, i in zip(ranks, sizes)) / math.prod(sizes)
  # Never a mode rotated whole: a projected mode is cut.
  assert all(r is None or r < i for r, i in zip(ranks, sizes))
  # The fraction asked for, give or take the rounding, or a note (a warning at init) saying so.
  note = _plan._note(plan, rank, "t")
  assert kept <= 1.5 * rank or (note and (f"keeps {kept:.3g}" in note or "cuts none" in note))
  # A mode as long as a quarter of the budget's inverse can alone keep about the fraction.
  if any(i * rank >= 4 and i * i <= math.prod(sizes) for i in sizes):
    assert 0.5 * rank <= kept <= 1.25 * rank


@pytest.mark.filterwarnings("ignore:.*too short to cut")
@given(a=st.integers(2, 300), b=st.integers(2, 300), rank=st.sampled_from([0.1, 0.25, 0.5]))
def test_a_matrix_projects_its_smaller_side_at_a_float_rank(a, b, rank):
  ranks = _tucker.resolve_ranks(rank, (a, b), 1, "t")
  projected = [n for n, r in enumerate(ranks) if r is not None]
  assert len(projected) <= 1
  if projected:
    assert (a, b)[projected[0]] == min(a, b)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_float_rank_keeps_at_least_that_fraction_of_entries(fraction):
  sizes = (64, 64, 64, 33)
  for num_projected in (None, "all"):
    ranks = _tucker.resolve_ranks(fraction, sizes, num_projected, "t")
    assert math.prod(r or i for r, i in zip(ranks, sizes)) >= fraction * math.prod(sizes)


def test_plan_views_round_trip_and_group_axes():
  x = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
  plan = _tucker.make_plan(x.shape, TuckerSpec(modes=((3, 1), 0, 2), rank=1.0), 0.5, "t")
  assert plan.mode_sizes == (15, 2, 4)
  t = plan.to_tensor(x)
  assert t.shape == (15, 2, 4)
  np.testing.assert_array_equal(t[:, 1, 2], x[1, :, 2, :].T.reshape(-1))
  np.testing.assert_array_equal(plan.from_tensor(t), x)


def test_projection_and_back_projection_are_adjoint():
  key = jax.random.key(0)
  shape, ranks = (6, 5, 4), (3, 2, 4)
  keys = jax.random.split(key, 5)
  factors = tuple(
    jnp.linalg.qr(jax.random.normal(keys[n], (i, r)) + 1j * jax.random.normal(keys[3], (i, r)))[0]
    for n, (i, r) in enumerate(zip(shape, ranks))
  )
  modes = (0, 1, 2)
  g = jax.random.normal(keys[4], shape) + 0j
  c = jax.random.normal(keys[3], ranks) + 1j * jax.random.normal(keys[2], ranks)
  lhs = jnp.vdot(c, _tucker.project(g, factors, modes))
  rhs = jnp.vdot(_tucker.back_project(c, factors, modes), g)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_mode_dot_matches_unfolding_product():
  key = jax.random.key(1)
  t = jax.random.normal(key, (4, 5, 6))
  m = jax.random.normal(key, (5, 3))
  out = _tucker.mode_dot(t, m, 1)
  chex.assert_shape(out, (4, 3, 6))
  chex.assert_trees_all_close(_tucker.unfold(out, 1), m.T @ _tucker.unfold(t, 1), atol=1e-5)


@pytest.mark.parametrize(
  "modes, match",
  [((0, (1, 5)), "out of range"), ((0, 0, 1), "more than once"), ((0, 1), "leave axes \\[2\\]")],
)
def test_bad_modes_name_the_leaf(modes, match):
  with pytest.raises(ValueError, match=f"leaf x.*{match}"):
    _tucker.make_plan((3, 4, 5), TuckerSpec(modes=modes), 0.5, "leaf x")


def test_scalar_leaf_is_refused():
  with pytest.raises(ValueError, match="scalar"):
    _tucker.make_plan((), TuckerSpec(), 0.5, "leaf s")


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(modes=0), TypeError, "TuckerSpec.modes"),
    (dict(modes=(False, True, 2)), TypeError, "TuckerSpec.modes"),
    (dict(modes=(0, ())), ValueError, "TuckerSpec.modes: empty group"),
    (dict(modes=(0, "12")), TypeError, "TuckerSpec.modes"),
    (dict(rank=-3), ValueError, "TuckerSpec.rank"),
    (dict(rank="full"), TypeError, "TuckerSpec.rank"),
    (dict(num_projected=0), ValueError, "num_projected"),
    (dict(num_projected=1.5), TypeError, "num_projected"),
    (dict(batch_axes=(0.5,)), TypeError, "TuckerSpec.batch_axes"),
  ],
)
def test_spec_is_validated_at_construction_and_names_the_field(kwargs, error, match):
  with pytest.raises(error, match=match):
    TuckerSpec(**kwargs)


def test_spec_normalises_sequences_and_is_hashable():
  spec = TuckerSpec(modes=[0, [1, 2]], rank=[2, None], batch_axes=3)
  assert spec == TuckerSpec(modes=(0, (1, 2)), rank=(2, None), batch_axes=(3,))
  assert hash(spec) == hash(TuckerSpec(modes=(0, (1, 2)), rank=(2, None), batch_axes=(3,)))


def test_batch_axes_come_first_and_every_batch_entry_is_projected_alone():
  key = jax.random.key(2)
  x = jax.random.normal(key, (4, 3, 5, 6))  # axis 1 stacks three tensors
  plan = _tucker.make_plan(x.shape, TuckerSpec(batch_axes=(1,)), (2, 3, 4), "t")
  assert plan.batch_shape == (3,) and plan.mode_sizes == (4, 5, 6)
  assert plan.factor_shapes == ((3, 4, 2), (3, 5, 3), (3, 6, 4)) and plan.core_shape == (3, 2, 3, 4)
  t = plan.to_tensor(x)
  np.testing.assert_array_equal(plan.from_tensor(t), x)
  factors = tuple(
    jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, n), s))[0]
    for n, s in enumerate(plan.factor_shapes)
  )
  core = plan.project(t, factors)
  for b in range(3):
    alone = _tucker.project(x[:, b], tuple(f[b] for f in factors), (0, 1, 2))
    chex.assert_trees_all_close(core[b], alone, atol=1e-5)
  chex.assert_trees_all_close(
    plan.back_project(core, factors)[1],
    _tucker.back_project(core[1], tuple(f[1] for f in factors), (0, 1, 2)),
    atol=1e-5,
  )
