"""Tests of the benchmarks' machinery: the training harness and its optimizer variants, the
memory recipe, the losses, XLA's peak breakdown, the refresh benchmark and the accuracy studies."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import jit_call, numpy_normal, rbg_rngs, write_tiny_npz
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import accuracy, common, compare, configs, losses, memory, recipe, refresh, train
from benchmarks import variants as optimizers
from examples.fno import data, model
from tensor_galore_optax import TuckerSpec

TINY = ["--width", "8", "--modes", "4", "--batch-size", "8", "--eval-batch-size", "8"]
TINY += ["--no-progress"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """32 train and 8 test samples of a shift-plus-square map on a 16 x 16 grid."""
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  write_tiny_npz(path)
  return path


# --------------------------------------------------------------------------
# The training harness and its optimizer variants
# --------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["galore", "adafactor"])
def test_harness_training_lowers_the_loss_and_writes_complete_outputs(
  tiny_npz, tmp_path, optimizer
):
  out = tmp_path / optimizer
  argv = ["--data", str(tiny_npz), "--optimizer", optimizer, "--epochs", "2", "--out", str(out)]
  assert train.main(argv + TINY) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("test_rel_l2", "train_rel_l2", "optimizer_state_bytes", "step_seconds"):
    assert math.isfinite(metrics[key]), key
  assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
  assert metrics["test_rel_l2"] < metrics["identity_rel_l2"]
  # Projected or factored moments: less state than AdamW's two full-size moments.
  assert metrics["optimizer_state_bytes"] < metrics["adamw_state_bytes"]
  if optimizer == "galore":
    assert isinstance(metrics["rank"], int)  # matched to Tensor-GaLore's bytes
  for name in ("loss.png", "samples.png"):
    assert (out / name).stat().st_size > 0


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--lr", "nan"], "--lr must be"),
    (["--lr", "0"], "--lr must be"),
    (["--weight-decay=-1e-4"], "--weight-decay must be"),
    (["--epochs", "0"], "--epochs must be"),
    (["--update-proj-gap", "0"], "--update-proj-gap must be"),
    (["--rank", "1.5"], "--rank must be"),
    (["--scale", "auto"], "--scale"),
    (["--preset", "cnn", "--modes", "4"], "--modes applies to the FNO presets"),
    (["--preset", "mlp", "--optimizer", "adamw", "--remat"], "--preset mlp has no memory recipe"),
    (["--preset", "cnn", "--optimizer", "tensor_galore"], "projects spectral weights only"),
  ],
)
def test_bad_settings_exit_2_naming_the_flag_before_any_data(
  tmp_path, monkeypatch, capsys, flags, message
):
  def no_data(*args, **kwargs):
    raise AssertionError("data read or generated before the settings were checked")

  monkeypatch.setattr(data, "load_or_generate", no_data)
  monkeypatch.setattr(data, "load_dataset", no_data)
  with pytest.raises(SystemExit) as exc:
    train.main([*flags, "--out", str(tmp_path / "out")])
  assert exc.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_bad_data_exits_2_naming_the_file_and_key(tmp_path, capsys):
  x = np.ones((4, 8, 8), np.float32)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=x, x_test=x)
  with pytest.raises(SystemExit) as exc:
    train.main(["--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "out"), *TINY])
  assert exc.value.code == 2
  assert "missing key 'y_test'" in capsys.readouterr().err


def test_a_finished_run_is_kept_unless_overwritten(tiny_npz, tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["--data", str(tiny_npz), "--optimizer", "adamw", "--epochs", "1", "--out", str(out)]
  assert train.main(argv + TINY) == 0
  written = (out / "metrics.json").read_text()
  with pytest.raises(SystemExit) as exc:
    train.main(argv + TINY)
  assert exc.value.code == 2
  assert "--overwrite" in capsys.readouterr().err
  assert (out / "metrics.json").read_text() == written
  assert train.main(argv + TINY + ["--overwrite"]) == 0


def test_an_error_during_training_propagates_with_its_traceback(tiny_npz, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError("not a usage error")

  monkeypatch.setattr(train, "build", broken)
  argv = ["--data", str(tiny_npz), "--out", str(tmp_path / "out")] + TINY
  with pytest.raises(ValueError, match="not a usage error") as exc:
    train.main(argv)
  assert not isinstance(exc.value, configs.ConfigError)


def test_every_field_is_a_flag_with_the_config_default():
  parser = train.parser()
  assert configs.from_args(parser.parse_args([])) == configs.Config()
  flags = {option for action in parser._actions for option in action.option_strings}
  fields = {configs.flag(f) for f in configs.Config.__dataclass_fields__} - {"--progress"}
  assert flags == fields | {"-h", "--help", "--no-progress"}
  args = parser.parse_args(["--rank", "8", "--remat", "--no-progress", "--modes", "4"])
  config = configs.from_args(args)
  assert (config.rank, config.remat, config.progress, config.modes) == (8, True, False, 4)
  assert "steps between factor refreshes (default: 200)" in parser.format_help()


def test_the_harness_default_is_the_librarys_default():
  config = configs.Config()
  assert config.optimizer == optimizers.DEFAULT == "tensor_galore_defaults"
  assert (config.lr, config.tensor_rank, config.scale) == (2.4e-2, 0.25, "matched")


def test_a_new_optimizer_variant_is_one_registry_entry(monkeypatch):
  channels = optimizers.Variant(lambda rank: TuckerSpec(rank=(rank, rank, None, None)))
  monkeypatch.setitem(optimizers.OPTIMIZERS, "tensor_galore_channels", channels)
  config = configs.from_args(train.parser().parse_args(["--optimizer", "tensor_galore_channels"]))
  configs.validate(config)
  params = {"w": jax.ShapeDtypeStruct((8, 8, 4, 3), np.complex64)}
  optimizer, rank = optimizers.build(config.optimizer, 1e-3, params, tensor_rank=0.5)
  assert rank == 0.5
  state = optimizer.init(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params))
  assert [f.shape for f in state[0].factors["w"]] == [(8, 4), (8, 4)]


def test_in_channels_variant_projects_the_input_channels_only():
  # More frequencies than channels on one axis: the input channels are still the projected mode.
  params = {"w": np.ones((8, 8, 12, 4), np.complex64), "b": np.ones((8,), np.float32)}
  tx = optimizers.make_optimizer("tensor_galore_in_channels", 1e-2, rank=0.25)
  galore = tx.init(params)[0]
  assert [u.shape for u in galore.factors["w"]] == [(8, 2)]
  assert galore.base_optimizer_state.mu["w"].shape == (2, 8, 12, 4)


def test_galore_projects_the_larger_side_of_the_matricised_weight():
  params = {"w": np.ones((4, 4, 6, 4), np.complex64)}
  # An int rank, as a matched GaLore rank is: 3 of the 96 columns of the (4, 96) matrix.
  tx = optimizers.make_optimizer("galore", 1e-2, rank=3)
  assert [u.shape for u in tx.init(params)[0].factors["w"]] == [(96, 3)]


@pytest.mark.parametrize("name", ["galore", "tensor_galore"])
def test_scale_reaches_the_library_as_given(name):
  params = {"w": np.ones((8, 8, 6, 4), np.complex64), "b": np.ones((8,), np.float32)}
  grads = {
    "w": np.arange(1536, dtype=np.float32).reshape(8, 8, 6, 4) * (1 - 0.5j),
    "b": np.linspace(-1, 1, 8, dtype=np.float32),
  }

  def update(scale):
    tx = optimizers.make_optimizer(name, 1e-2, rank=0.25, scale=scale)
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]

  one, doubled, matched = update(1.0), update(2.0), update("matched")
  decay = -1e-2 * 1e-4 * params["w"]  # decoupled weight decay is not scaled
  np.testing.assert_allclose(doubled["w"], 2 * (one["w"] - decay) + decay, rtol=1e-5)
  step = lambda u: np.linalg.norm(u["w"] - decay)
  assert step(matched) > 1.5 * step(one)  # the matched step is sqrt(entries / core) longer
  np.testing.assert_allclose(doubled["b"], one["b"], rtol=1e-6)  # not projected: unscaled


@pytest.mark.parametrize("preset", ["small", "darcy"])
def test_the_librarys_defaults_project_the_fno_as_the_in_channels_variant(preset):
  fno = model.PRESETS[preset].make(1, 1, resolution=(64, 64), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(fno, nnx.Param))
  rng = np.random.default_rng(0)
  grads = jax.tree.map(
    lambda p: (rng.standard_normal(p.shape) * (1 + 1j if np.iscomplexobj(p) else 1)).astype(
      p.dtype
    ),
    params,
  )
  updates = []
  for name in ("tensor_galore_defaults", "tensor_galore_in_channels"):
    tx = optimizers.make_optimizer(name, 1e-2, rank=0.25, update_proj_gap=2)
    updates.append(jax.jit(tx.update)(grads, tx.init(params), params)[0])
  # Tolerance: the same arithmetic on the same leaves, up to float32 round-off.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *updates)


def test_projection_all_projects_every_mode_the_rank_cuts():
  params = {"conv": np.zeros((3, 3, 64, 64), np.float32)}
  for projection, expected in (("fewest", [(64, 16)]), ("all", [(64, 32), (64, 32)])):
    tx = optimizers.make_optimizer("tensor_galore_defaults", 1e-3, rank=0.25, projection=projection)
    assert [f.shape for f in tx.init(params)[0].factors["conv"]] == expected, projection


def test_the_mlp_trains_with_the_librarys_defaults(tiny_npz, tmp_path, capsys):
  out = tmp_path / "mlp"
  argv = ["--data", str(tiny_npz), "--preset", "mlp", "--width", "64", "--epochs", "2"]
  argv += ["--lr", "3e-3", "--optimizer", "tensor_galore_defaults", "--out", str(out)]
  assert train.main([*argv, "--batch-size", "8", "--eval-batch-size", "8", "--no-progress"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
  # The plan is printed before training: the weights large enough are projected.
  printed = capsys.readouterr().out
  assert "modes (size->rank)" in printed and "->" in printed.split("modes (size->rank)")[1]
  assert metrics["optimizer_state_bytes"] < 0.5 * metrics["adamw_state_bytes"]


@pytest.mark.slow
def test_compare_writes_one_table_and_figure(tiny_npz, tmp_path):
  out = tmp_path / "compare"
  argv = ["--data", str(tiny_npz), "--ranks", "0.5", "--epochs", "1", "--out", str(out)]
  assert compare.main(argv + TINY) == 0
  rows = json.loads((out / "compare.json").read_text())
  projected = [n for n in optimizers.OPTIMIZERS if n not in ("adamw", "adafactor")]
  assert [r["optimizer"] for r in rows] == ["adamw", *projected]
  assert rows[0]["state_ratio"] == 1.0
  by = {r["optimizer"]: r for r in rows}
  assert by["tensor_galore"]["rank"] == 0.5 and by["galore"]["tensor_rank"] == 0.5
  # GaLore's rank is matched to Tensor-GaLore's state size.
  assert by["galore"]["optimizer_state_bytes"] == pytest.approx(
    by["tensor_galore"]["optimizer_state_bytes"], rel=0.25
  )
  assert "| tensor_galore |" in (out / "compare.md").read_text()
  assert (out / "compare.png").stat().st_size > 0


def _unstacked_tree(tree: dict, n: int) -> dict:
  """A scanned FNO's pure dict in the unrolled layout: ``blocks`` split into ``n`` layers."""
  tree = dict(tree)
  stacked = tree.pop("blocks")
  tree["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)}
  return tree


@pytest.mark.parametrize("name", ["galore", "tensor_galore"])
def test_stacked_spectral_weights_get_per_layer_projections(name):
  """The scanned FNO starts from the unrolled one's parameters and gets the same updates."""

  def params_of(cls, **kwargs):
    fno = cls(1, 1, modes=(6, 6), width=8, n_layers=3, rngs=nnx.Rngs(0), **kwargs)
    return nnx.to_pure_dict(nnx.state(fno, nnx.Param))

  plain, scanned = params_of(model.FNO), params_of(recipe.RecipeFNO, scan_layers=True)
  assert scanned["blocks"]["spectral"]["weight"].shape == (3, 8, 8, 6, 4)
  jax.tree.map(np.testing.assert_array_equal, _unstacked_tree(scanned, 3), plain)

  settings = dict(tensor_rank=0.5, update_proj_gap=2, weight_decay=1e-2)
  tx_plain, rank_plain = optimizers.build(name, 1e-2, plain, **settings)
  tx_scanned, rank_scanned = optimizers.build(name, 1e-2, scanned, **settings)
  assert rank_plain == rank_scanned
  state_plain, state_scanned = tx_plain.init(plain), tx_scanned.init(scanned)
  rng = np.random.default_rng(0)
  for _ in range(5):  # refreshes at steps 0, 2 and 4
    grads = jax.tree.map(
      lambda p: (
        rng.standard_normal(p.shape) + 1j * rng.standard_normal(p.shape)
        if np.iscomplexobj(p)
        else rng.standard_normal(p.shape)
      ).astype(p.dtype),
      scanned,
    )
    updates_scanned, state_scanned = tx_scanned.update(grads, state_scanned, scanned)
    updates_plain, state_plain = tx_plain.update(_unstacked_tree(grads, 3), state_plain, plain)
    # Tolerance: one layer's arithmetic batched against unbatched, float32 round-off.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      _unstacked_tree(updates_scanned, 3),
      updates_plain,
    )


# --------------------------------------------------------------------------
# The memory recipe and the losses
# --------------------------------------------------------------------------


_rngs = rbg_rngs


_normal = numpy_normal


_call = jit_call


def _tiny_fno(**kwargs):
  config = dict(modes=(6, 6), width=8, n_layers=2)
  config.update(kwargs)
  return recipe.RecipeFNO(2, 3, rngs=_rngs(0), **config)


def _loss_and_grads(fno, x, y):
  graphdef, params = nnx.split(fno)

  @jax.jit
  def loss_and_grads(params):
    return jax.value_and_grad(lambda p: losses.relative_lp(nnx.merge(graphdef, p)(x), y))(params)

  return loss_and_grads(params)


def test_remat_matches_plain():
  x = _normal(0, (2, 16, 16, 2))
  y = _normal(1, (2, 16, 16, 3))
  plain, remat = _tiny_fno(), _tiny_fno(remat=True)

  def jaxpr(fno):
    graphdef, params = nnx.split(fno)
    return str(jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(x))(params))

  # jax.checkpoint appears in a jaxpr as a ``remat`` primitive.
  assert "remat" in jaxpr(remat)
  assert "remat" not in jaxpr(plain)
  np.testing.assert_allclose(_call(remat, x), _call(plain, x), atol=1e-6)
  loss_plain, grads_plain = _loss_and_grads(plain, x, y)
  loss_remat, grads_remat = _loss_and_grads(remat, x, y)
  np.testing.assert_allclose(loss_remat, loss_plain, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_remat, grads_plain)


def _unstacked(grads):
  """The gradients of a scanned model (a pure dict) in the layout of the unrolled one."""
  blocks = grads.pop("blocks")
  n = jax.tree.leaves(blocks)[0].shape[0]
  grads["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(n)}
  return grads


@pytest.mark.parametrize(
  "settings",
  [
    dict(scan_layers=True),
    dict(scan_layers=True, remat=True),
    dict(scan_layers=True, remat=True, pointwise_chunk=1),
    dict(remat=True, pointwise_chunk=1, remat_policy="dots_with_no_batch_dims_saveable"),
  ],
  ids=lambda r: "+".join(f"{k}={v}" for k, v in r.items()),
)
def test_memory_recipes_compute_the_same_function_and_gradients(settings):
  x = _normal(0, (2, 16, 16, 2))
  y = _normal(1, (2, 16, 16, 3))
  # Three blocks, so that the scan has inner blocks (with GELUs) and a last
  # one (without).
  plain, other = _tiny_fno(n_layers=3), _tiny_fno(n_layers=3, **settings)
  if settings.get("scan_layers"):
    assert other.blocks.spectral.weight.shape == (3, 8, 8, 6, 4)
  np.testing.assert_allclose(_call(other, x), _call(plain, x), atol=1e-5)
  loss_plain, grads_plain = _loss_and_grads(plain, x, y)
  loss_other, grads_other = _loss_and_grads(other, x, y)
  np.testing.assert_allclose(loss_other, loss_plain, rtol=1e-5)
  grads_other = nnx.to_pure_dict(grads_other)
  if settings.get("scan_layers"):
    grads_other = _unstacked(grads_other)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    grads_other,
    nnx.to_pure_dict(grads_plain),
  )


def test_bfloat16_pointwise_layers_keep_float32_parameters_and_output():
  x = _normal(0, (2, 16, 16, 2))
  plain, low = _tiny_fno(), _tiny_fno(dtype=jnp.bfloat16, scan_layers=True)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(low, nnx.Param))} == {
    np.dtype(np.float32),
    np.dtype(np.complex64),
  }
  out, reference = _call(low, x), _call(plain, x)
  assert out.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: a relative error of a few 1e-3.
  error = np.linalg.norm(out - reference) / np.linalg.norm(reference)
  assert 1e-5 < error < 3e-2


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat_policy"):
    _tiny_fno(remat=True, remat_policy="sometimes")


def test_relative_lp():
  y = jnp.array([[3.0, 4.0], [1.0, 0.0]])
  pred = jnp.array([[0.0, 4.0], [1.0, 2.0]])
  # Errors (3, 2) over target norms (5, 1).
  np.testing.assert_allclose(losses.relative_lp(pred, y), (3 / 5 + 2) / 2, rtol=1e-6)
  # p = 1: errors (3, 2) over target norms (7, 1).
  np.testing.assert_allclose(losses.relative_lp(pred, y, p=1), (3 / 7 + 2) / 2, rtol=1e-6)
  # Every non-batch axis is reduced.
  np.testing.assert_allclose(
    losses.relative_lp(pred.reshape(2, 1, 2, 1), y.reshape(2, 1, 2, 1)), (3 / 5 + 2) / 2, rtol=1e-6
  )


def test_relative_h1():
  n, offset = 16, 0.5
  grid = jnp.arange(n) / n
  u, v = jnp.meshgrid(grid, grid, indexing="ij")
  y = jnp.sin(2 * jnp.pi * u) + jnp.cos(4 * jnp.pi * v)
  # A periodic central difference of sin(2 pi k x) with spacing h is
  # sin(2 pi k h) / h * cos(2 pi k x); each mode has mean square 1/2.
  norm_sq = (
    n * n / 2 * (2 + (n * math.sin(2 * math.pi / n)) ** 2 + (n * math.sin(4 * math.pi / n)) ** 2)
  )
  # A constant error has no derivative.
  expected = math.sqrt(n * n * offset**2 / norm_sq)
  y, pred = y[None, ..., None], (y + offset)[None, ..., None]
  np.testing.assert_allclose(losses.relative_h1(pred, y), expected, rtol=1e-5)
  # The loss is the batch mean; a prediction of 0 has relative error 1.
  np.testing.assert_allclose(
    losses.relative_h1(jnp.concatenate([pred, 0 * y]), jnp.concatenate([y, y])),
    (expected + 1) / 2,
    rtol=1e-5,
  )


# --------------------------------------------------------------------------
# The refresh benchmark
# --------------------------------------------------------------------------


def test_the_reference_hosvd_has_orthonormal_factors_of_the_leading_subspace():
  rng = np.random.default_rng(0)
  tensor = (rng.standard_normal((6, 5, 4)) + 1j * rng.standard_normal((6, 5, 4))).astype(
    np.complex64
  )
  factors = refresh.hosvd(jnp.asarray(tensor), (6, 5, 4))
  for factor in factors:  # full ranks: unitary factors, all the energy kept
    # Tolerance: float32 round-off of a small SVD.
    np.testing.assert_allclose(factor.conj().T @ factor, np.eye(len(factor)), atol=1e-5)
  np.testing.assert_allclose(refresh.energy(tensor, factors), 1.0, rtol=1e-5)
  # Truncated, a mode keeps its leading singular vectors: the energy of the first unfolding's
  # largest singular value, at rank 1 on that mode alone.
  (u,) = refresh.hosvd(jnp.asarray(tensor), (1,))
  sigma = np.linalg.svd(tensor.reshape(6, -1), compute_uv=False)
  np.testing.assert_allclose(
    refresh.energy(tensor, (u,)), sigma[0] ** 2 / np.sum(sigma**2), rtol=1e-4
  )


def test_the_refresh_benchmark_compares_the_librarys_refresh_with_hosvd(monkeypatch):
  tiny = (model.FNOConfig(modes=(8, 8), width=24), 16, 4)
  monkeypatch.setitem(refresh.CONFIGS, "tiny", tiny)
  result = refresh.run("tiny", repeats=1)
  assert result["shape"] == [24, 24, 8, 5]
  assert len(result["ranks"]) == 4  # every mode projected
  for key in ("first", "later"):
    # ST-HOSVD truncates mode by mode, HOSVD from the whole tensor: on these gradients both keep
    # all but a few 1e-4 of the energy, and neither keeps much more than the other.
    assert abs(result[f"energy_{key}"] - result[f"hosvd_energy_{key}"]) < 1e-2
    assert 0 < result[f"energy_{key}"] <= 1 + 1e-5  # float32 round-off
  assert "| tiny: (24, 24, 8, 5)" in refresh.markdown([result])


# --------------------------------------------------------------------------
# XLA's peak breakdown and the memory benchmark
# --------------------------------------------------------------------------


def test_peak_breakdown_is_found_for_a_program_already_in_the_persistent_cache(tmp_path):
  """A cache hit skips XLA's compilation, and with it the dump the breakdown reads."""
  step = jax.jit(lambda x: jnp.tanh(x) @ x.T)
  x = jax.ShapeDtypeStruct((128, 128), jnp.float32)
  settings = {
    "jax_compilation_cache_dir": str(tmp_path),
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_enable_compilation_cache": True,
  }
  before = {name: getattr(jax.config, name) for name in settings}
  try:
    for name, value in settings.items():
      jax.config.update(name, value)
    # JAX fixes the cache's directory when it first uses it (the suite's own cache may already
    # be open in this process): reset so that this test's directory is the one used.
    compilation_cache.reset_cache()
    common.compiled_memory(step, x)  # now in the cache
    assert any(tmp_path.iterdir())
    assert common.compiled_memory(step, x, breakdown=True)["peak_bytes"] > 0
    assert jax.config.jax_enable_compilation_cache  # restored
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_peak_breakdown_sums_to_the_peak_and_sorts_forward_backward_and_optimizer():
  def loss(params, x):
    with jax.named_scope("spectral"):
      h = jnp.tanh(x @ params["w"])
    return jnp.sum(jnp.tanh(h @ params["v"]) ** 2)

  optimizer = optax.adam(1e-3)

  def step(params, state, x):
    grads = jax.grad(loss)(params, x)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = {"w": jnp.ones((256, 256)), "v": jnp.ones((256, 256))}
  x = jnp.ones((1024, 256))
  jitted = jax.jit(step, donate_argnums=(0, 1))
  sizes = common.compiled_memory(jitted, params, optimizer.init(params), x, breakdown=True)
  peak = {k: sizes[f"peak_{k}_bytes"] for k in common.PEAK_CATEGORIES}
  assert sizes["peak_bytes"] == sum(peak.values()) > 0
  # The peak is in the backward pass: the forward's tanh outputs (1024 x 256
  # floats each, one of them in the "spectral" scope) are live there.
  assert peak["saved_spectral"] >= 1024 * 256 * 4
  assert peak["params"] + peak["optimizer_state"] + peak["optimizer_update"] > 0
  assert sizes["step_bytes"] >= sizes["peak_bytes"] - sizes["argument_bytes"]


def test_parse_peak_breakdown_reads_xla_names_and_nested_parameters():
  text = """Live ranges at 3 (peak):
  Stack trace breakdown for peak usage: 1 700 bytes
    main.1 (100.0%, total: 1 700 bytes, current: 0 bytes)
      ├── jit(f)/jvp(spectral)/fft (10%, total: 100 bytes, current: 100 bytes)
      ├── jit(f)/jvp()/tanh (10%, total: 200 bytes, current: 200 bytes)
      ├── jit(f)/transpose(jvp())/add_any (10%, total: 300 bytes, current: 300 bytes)
      ├── jit(f)/cond/branch_1_fun/qr (10%, total: 400 bytes, current: 400 bytes)
      ├── params (10%, total: 500 bytes, current: 0 bytes)
      │   └── w (10%, total: 500 bytes, current: 500 bytes)
      ├── opt_state[0].mu['w'] (10%, total: 150 bytes, current: 150 bytes)
      └── copy.3 (10%, total: 50 bytes, current: 50 bytes)
"""
  sizes = common.parse_peak_breakdown(text)
  assert sizes == {
    "params": 500,
    "optimizer_state": 150,
    "batch": 0,
    "saved_spectral": 100,
    "saved_pointwise": 200,
    "backward": 300,
    "optimizer_update": 400,
    "other": 50,
  }


@pytest.mark.slow
def test_memory_rows_compare_recipes_on_the_small_model():
  rows = memory.rows_for(
    "small", ranks=(0.25,), recipes=("none", common.FULL_RECIPE), projected=("tensor_galore",)
  )
  by = {(r["recipe"], r["optimizer"]): r for r in rows}
  assert len(rows) == 4
  for name in ("none", common.FULL_RECIPE):
    assert by[(name, "adamw")]["step_vs_adamw"] == 1.0
    assert by[(name, "tensor_galore")]["state_vs_adamw"] < 0.35
  # Same parameters in both layouts: the recipe moves activations, not weights.
  assert by[("none", "adamw")]["params_bytes"] == by[(common.FULL_RECIPE, "adamw")]["params_bytes"]
  # On the small model the activations dominate: the recipe shrinks every step.
  for name in ("adamw", "tensor_galore"):
    assert by[(common.FULL_RECIPE, name)]["step_bytes"] < 0.8 * by[("none", name)]["step_bytes"]
  np.testing.assert_allclose(
    by[(common.FULL_RECIPE, "adamw")]["step_vs_plain_adamw"],
    by[(common.FULL_RECIPE, "adamw")]["step_bytes"] / by[("none", "adamw")]["step_bytes"],
  )


def _study_runs(rows: dict[str, list[float]]) -> tuple[accuracy.Study, list[dict]]:
  """A study with one row per key, and a recorded run per error (seeds from 0)."""
  study = accuracy.Study(
    "test",
    tasks=("ns64",),
    rows=tuple(accuracy.Row(label, {"optimizer": label.split()[0], "lr": 0.01}) for label in rows),
  )
  runs = [
    {
      "task": "ns64",
      "row": label,
      "seed": seed,
      "test_rel_l2": error,
      "optimizer_state_bytes": 25 if label.startswith("tensor") else 100,
      "adamw_state_bytes": 100,
      "test_rel_l2_per_epoch": [2 * error, error],
      "config": {"optimizer": label.split()[0], "lr": 0.01},
    }
    for label, errors in rows.items()
    for seed, error in enumerate(errors)
  ]
  return study, runs


def test_accuracy_ratios_are_to_the_best_adamw_row_of_the_most_seeds():
  study, runs = _study_runs(
    {
      "adamw x1": [0.010, 0.012],
      "adamw x2": [0.008, 0.010, 0.012],
      "adamw x4": [0.005],  # one seed only: not the reference, however low
      "tensor_galore": [0.015],
    }
  )
  rows = {r["row"]: r for r in accuracy.summarise(study, runs)}
  np.testing.assert_allclose(rows["adamw x1"]["mean"], 0.011)
  np.testing.assert_allclose(rows["adamw x2"]["ratio"], 1.0)  # the best of three seeds: 0.010
  np.testing.assert_allclose(rows["adamw x4"]["ratio"], 0.5)
  np.testing.assert_allclose(rows["tensor_galore"]["ratio"], 1.5)
  assert rows["tensor_galore"]["state_ratio"] == 0.25


def test_accuracy_refuses_data_recorded_with_other_settings():
  study, runs = _study_runs({"adamw": [0.01], "tensor_galore": [0.02]})
  runs[1]["config"]["lr"] = 0.02
  with pytest.raises(ValueError, match="tensor_galore"):
    accuracy.summarise(study, runs)


def test_every_committed_study_re_makes_its_committed_table(tmp_path, monkeypatch):
  """The tables on the results page come from committed data, by the committed definitions."""
  committed = accuracy.RESULTS
  monkeypatch.setattr(accuracy, "FIGURES", tmp_path)
  monkeypatch.setattr(accuracy, "RESULTS", tmp_path)
  with_data = sorted(p.stem for p in committed.glob("*.json"))
  assert set(with_data) <= set(accuracy.STUDIES)  # no data without its study's definition
  for name in with_data:
    (tmp_path / f"{name}.json").write_text((committed / f"{name}.json").read_text())
    table = accuracy.collect(name)
    assert table + "\n" == (committed / f"{name}.md").read_text(), name


# --------------------------------------------------------------------------
# The summary table
# --------------------------------------------------------------------------


def test_the_summary_puts_each_result_against_adamws(tmp_path, monkeypatch):
  from benchmarks import summary

  monkeypatch.setattr(summary, "RESULTS", tmp_path)
  monkeypatch.setattr(summary, "DEMO", tmp_path / "demo_ns64.json")
  for name, error, state in (("adamw", 0.010, 100), ("tensor_galore", 0.011, 20)):
    run = tmp_path / name
    run.mkdir()
    metrics = dict(optimizer=name, lr=0.024, test_rel_l2=error, optimizer_state_bytes=state)
    metrics.update(adamw_state_bytes=100, seconds=600.0, history=[{"test_rel_l2": error}])
    (run / "metrics.json").write_text(json.dumps(metrics))
  summary.record_demo([str(tmp_path / "adamw"), str(tmp_path / "tensor_galore")])
  rows = [
    {"optimizer": n, "recipe": "none", "step_vs_adamw": m, "state_vs_adamw": s}
    for n, m, s in (("adamw", 1.0, 1.0), ("tensor_galore_defaults", 0.98, 0.2))
  ]
  (tmp_path / "memory_small.json").write_text(json.dumps({"rows": rows}))
  monkeypatch.setattr(summary.accuracy, "load_runs", lambda name: [])  # no layers data
  lines = {
    line.split(" | ")[1]: line.split(" | ")[2:] for line in summary.table().splitlines()[2:5]
  }
  # error x AdamW, state x AdamW, step time (not measured), compiled step memory
  assert lines["`tensor_galore_adamw` (defaults)"] == ["1.10", "0.200", "-", "0.980 |"]
  assert lines["`optax.adafactor` (factored)"] == ["-", "-", "-", "- |"]
  assert "| 0.0110 | 1.10 | 0.200 |" in summary.demo_table()


def test_speed_times_each_optimizer_against_adamw_in_the_same_round():
  from benchmarks import speed

  rows = speed.measure("mlp16", 0.25, gap=200, repeats=2, names=["tensor_galore_defaults"])
  assert [r["optimizer"] for r in rows] == ["adamw", "tensor_galore_defaults"]
  assert rows[0]["steady_vs_adamw"] == 1.0  # AdamW's steady step against itself, every round
  for row in rows:
    assert row["steady_seconds"] > 0 and row["refresh_seconds"] > 0
    # The amortised step lies between the steady and the refresh step.
    low, high = sorted((row["steady_seconds"], row["refresh_seconds"]))
    assert low <= row["amortised_seconds"] <= high
  assert "| tensor_galore_defaults 0.25 |" in speed.markdown(rows)
