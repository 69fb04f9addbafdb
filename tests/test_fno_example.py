"""Tests of the FNO training example: CLI runs, outputs, bad input, resume, mesh, compare."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from examples.fno import compare, configs, data, main, optimizers, train
from tensor_galore_optax import TuckerSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
  "--width",
  "8",
  "--modes",
  "4",
  "--batch-size",
  "8",
  "--eval-batch-size",
  "8",
  "--no-progress",
]
METRIC_KEYS = (
  "test_rel_l2",
  "train_rel_l2",
  "identity_rel_l2",
  "optimizer_state_bytes",
  "params_bytes",
  "step_seconds",
  "epochs",
  "wall_seconds",
)


def _smooth_fields(rng, n, size=16, cutoff=4):
  """Random fields with only low Fourier modes, so that an FNO can fit maps of them."""
  spectrum = np.fft.rfft2(rng.standard_normal((n, size, size)))
  spectrum[:, cutoff:-cutoff] = 0
  spectrum[:, :, cutoff:] = 0
  return (10 * np.fft.irfft2(spectrum, s=(size, size))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """32 train and 8 test samples of a shift-plus-square map on a 16 x 16 grid."""
  rng = np.random.default_rng(0)
  x = _smooth_fields(rng, 40)
  y = np.roll(x, 2, axis=1) + 0.3 * x**2
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:], note=np.ones(3))
  return path


@pytest.mark.parametrize("optimizer", list(optimizers.OPTIMIZERS))
def test_training_lowers_the_loss_and_writes_complete_outputs(tiny_npz, tmp_path, optimizer):
  out = tmp_path / optimizer
  argv = ["--data", str(tiny_npz), "--optimizer", optimizer, "--epochs", "2", "--out", str(out)]
  assert main.main(argv + TINY) == 0

  metrics = json.loads((out / "metrics.json").read_text())
  for key in METRIC_KEYS:
    assert math.isfinite(metrics[key]), key
  assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
  assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
  assert metrics["test_rel_l2"] < metrics["identity_rel_l2"]
  assert metrics["config"]["optimizer"] == optimizer
  if optimizer == "adamw":
    assert metrics["rank"] is None
  else:
    # Projected moments: less state than AdamW's two full-size moments.
    assert metrics["optimizer_state_bytes"] < 2 * metrics["params_bytes"]
  if optimizer == "galore":
    assert isinstance(metrics["rank"], int)  # matched to Tensor-GaLore's bytes
  for name in ("loss.png", "samples.png"):
    assert (out / name).stat().st_size > 0
  assert (out / "checkpoints" / "2").is_dir()


def _write(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


@pytest.mark.parametrize(
  "case, message",
  [
    ("missing_file", "absent.npz"),
    ("missing_key", "missing key 'y_test'"),
    ("mismatched", "spatial shape"),
    ("nan", "non-finite"),
    ("empty", "'x_test' is empty"),
    ("optimizer", "invalid choice"),
    ("refresh_method", "invalid choice"),
    ("mesh", "invalid --mesh"),
  ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, case, message):
  x = np.ones((4, 8, 8), np.float32)
  arrays = dict(x_train=x, y_train=x, x_test=x, y_test=x)
  argv = ["--out", str(tmp_path / "out")] + TINY
  if case == "missing_file":
    argv += ["--data", str(tmp_path / "absent.npz")]
  elif case == "missing_key":
    argv += ["--data", _write(tmp_path / "d.npz", x_train=x, y_train=x, x_test=x)]
  elif case == "mismatched":
    argv += ["--data", _write(tmp_path / "d.npz", **{**arrays, "y_test": np.ones((4, 6, 6))})]
  elif case == "nan":
    argv += ["--data", _write(tmp_path / "d.npz", **{**arrays, "x_train": x * np.nan})]
  elif case == "empty":
    empty = np.ones((0, 8, 8), np.float32)
    argv += ["--data", _write(tmp_path / "d.npz", **{**arrays, "x_test": empty, "y_test": empty})]
  elif case == "optimizer":
    argv += ["--optimizer", "sgd"]
  elif case == "refresh_method":
    argv += ["--refresh-method", "qr"]
  else:
    argv += ["--data", _write(tmp_path / "d.npz", **arrays), "--mesh", "data=two"]
  with pytest.raises(SystemExit) as exc:
    main.main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert message in err
  if case == "empty":
    assert str(tmp_path / "d.npz") in err


@pytest.mark.parametrize(
  "flag, value",
  [
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--lr", "0"),
    ("--lr", "-0.001"),
    ("--weight-decay", "-1e-4"),
    ("--weight-decay", "nan"),
    ("--modes", "0"),
    ("--width", "-8"),
    ("--epochs", "0"),
    ("--batch-size", "0"),
    ("--eval-batch-size", "-5"),
    ("--update-proj-gap", "0"),
    ("--n-train", "0"),
    ("--rank", "1.5"),
    ("--tensor-rank", "0"),
  ],
)
def test_bad_settings_exit_2_naming_the_flag_before_any_data(
  tmp_path, monkeypatch, capsys, flag, value
):
  def no_data(*args, **kwargs):
    raise AssertionError("data read or generated before the settings were checked")

  monkeypatch.setattr(data, "load_or_generate", no_data)
  monkeypatch.setattr(data, "load_dataset", no_data)
  with pytest.raises(SystemExit) as exc:
    main.main(["--out", str(tmp_path / "out")] + TINY + [f"{flag}={value}"])
  assert exc.value.code == 2
  assert f"{flag} must be" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_an_existing_run_is_kept_unless_resumed_or_overwritten(tiny_npz, tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["--data", str(tiny_npz), "--optimizer", "adamw", "--epochs", "1", "--out", str(out)]
  assert main.main(argv + TINY) == 0
  checkpoint = out / "checkpoints" / "1"
  saved = sorted(p.relative_to(out) for p in out.rglob("*"))

  with pytest.raises(SystemExit) as exc:
    main.main(argv + TINY)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert str(out) in err and "--resume" in err and "--overwrite" in err
  assert sorted(p.relative_to(out) for p in out.rglob("*")) == saved

  (out / "metrics.json").unlink()  # checkpoints alone are a run too
  with pytest.raises(SystemExit):
    main.main(argv + TINY)
  assert checkpoint.is_dir()

  assert main.main(argv + TINY + ["--overwrite"]) == 0
  assert checkpoint.is_dir() and (out / "metrics.json").is_file()


def test_an_error_during_training_propagates_with_its_traceback(tiny_npz, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError("not a usage error")

  monkeypatch.setattr(train, "build", broken)
  argv = ["--data", str(tiny_npz), "--out", str(tmp_path / "out")] + TINY
  with pytest.raises(ValueError, match="not a usage error") as exc:
    main.main(argv)
  assert not isinstance(exc.value, configs.ConfigError)


def test_every_field_is_a_flag_with_the_config_default():
  parser = main.parser()
  assert configs.from_args(parser.parse_args([])) == configs.Config()
  flags = {option for action in parser._actions for option in action.option_strings}
  assert flags == {
    "-h",
    "--help",
    "--data",
    "--pde",
    "--n-train",
    "--n-test",
    "--resolution",
    "--optimizer",
    "--rank",
    "--tensor-rank",
    "--update-proj-gap",
    "--scale",
    "--moment-policy",
    "--refresh-method",
    "--residual-scale",
    "--projection",
    "--preset",
    "--modes",
    "--width",
    "--remat",
    "--remat-policy",
    "--scan-layers",
    "--pointwise-chunk",
    "--activation-dtype",
    "--epochs",
    "--batch-size",
    "--eval-batch-size",
    "--lr",
    "--weight-decay",
    "--loss",
    "--seed",
    "--out",
    "--resume",
    "--overwrite",
    "--mesh",
    "--fsdp-min-size",
    "--no-progress",
  }
  args = parser.parse_args(["--rank", "8", "--remat", "--no-progress", "--modes", "4"])
  config = configs.from_args(args)
  assert (config.rank, config.remat, config.progress, config.modes) == (8, True, False, 4)
  assert "steps between factor refreshes (default: 100)" in parser.format_help()


def test_a_new_optimizer_variant_is_one_registry_entry(monkeypatch):
  channels = optimizers.Variant(lambda rank: TuckerSpec(rank=(rank, rank, None, None)))
  monkeypatch.setitem(optimizers.OPTIMIZERS, "tensor_galore_channels", channels)
  config = configs.from_args(main.parser().parse_args(["--optimizer", "tensor_galore_channels"]))
  configs.validate(config)
  params = {"w": jax.ShapeDtypeStruct((8, 8, 4, 3), np.complex64)}
  optimizer, rank = optimizers.build(config.optimizer, 1e-3, params, tensor_rank=0.5)
  assert rank == 0.5
  state = optimizer.init(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params))
  assert [f.shape for f in state[0].factors["w"]] == [(8, 4), (8, 4)]


def test_the_default_run_trains_the_recommended_setting():
  config = configs.Config()
  assert config.optimizer == optimizers.RECOMMENDED == "tensor_galore_in_channels"
  assert (config.lr, config.tensor_rank, config.scale) == (2.4e-2, 0.25, "matched")


def test_in_channels_variant_projects_the_input_channels_only():
  # More frequencies than channels on one axis: the input channels are still the projected mode.
  params = {"w": np.ones((8, 8, 12, 4), np.complex64), "b": np.ones((8,), np.float32)}
  tx = optimizers.make_optimizer("tensor_galore_in_channels", 1e-2, rank=0.25)
  galore = tx.init(params)[0]
  # rank 0.25 of the input channels: 2 of 8; every other axis kept.
  assert [u.shape for u in galore.factors["w"]] == [(8, 2)]
  assert galore.base_optimizer_state.mu["w"].shape == (2, 8, 12, 4)


def test_galore_projects_the_larger_side_of_the_matricised_weight():
  params = {"w": np.ones((4, 4, 6, 4), np.complex64)}
  # An int rank, as a matched GaLore rank is: 3 of the 96 columns of the (4, 96) matrix.
  tx = optimizers.make_optimizer("galore", 1e-2, rank=3)
  assert [u.shape for u in tx.init(params)[0].factors["w"]] == [(96, 3)]


@pytest.mark.parametrize("name", ["galore", "tensor_galore", "tensor_galore_in_channels"])
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


@pytest.mark.parametrize("value", ["0", "-1", "auto", "nan"])
def test_a_bad_scale_is_a_usage_error_naming_the_flag(value, capsys):
  with pytest.raises(SystemExit) as exc:
    main.main(["--scale", value])
  assert exc.value.code == 2
  assert "--scale" in capsys.readouterr().err


def _final_params(out: pathlib.Path, epoch: int) -> list[np.ndarray]:
  """The parameters saved at ``epoch``, as host arrays in tree order."""
  with ocp.CheckpointManager(out.absolute() / "checkpoints") as manager:
    restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return [np.asarray(a) for a in jax.tree.leaves(restored.state["params"])]


def test_resume_continues_bit_identically(tiny_npz, tmp_path):
  # Tensor-GaLore refreshing every 3 steps (4 steps per epoch): the factors,
  # the projected moments, the step count and the shuffling key all have to
  # survive the restart.
  config = configs.Config(
    data=str(tiny_npz),
    optimizer="tensor_galore",
    epochs=2,
    update_proj_gap=3,
    width=8,
    modes=4,
    batch_size=8,
    eval_batch_size=8,
    progress=False,
  )
  straight = tmp_path / "straight"
  train.train_and_evaluate(dataclasses.replace(config, out=str(straight)))

  # A run interrupted after epoch 1 leaves the straight run's directory
  # without the epoch 2 checkpoint.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(straight, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "2")
  (interrupted / "metrics.json").unlink()
  resumed = train.train_and_evaluate(dataclasses.replace(config, out=str(interrupted), resume=True))

  assert [h["epoch"] for h in resumed["history"]] == [1, 2]
  for a, b in zip(_final_params(straight, 2), _final_params(interrupted, 2), strict=True):
    np.testing.assert_array_equal(a, b)


def test_resuming_a_checkpoint_of_another_optimizer_state_is_a_usage_error(
  tiny_npz, tmp_path, capsys
):
  out = tmp_path / "run"
  argv = ["--data", str(tiny_npz), "--epochs", "1", "--out", str(out), *TINY]
  assert main.main([*argv, "--optimizer", "tensor_galore"]) == 0
  (out / "metrics.json").unlink()  # as if interrupted after its last checkpoint
  with pytest.raises(SystemExit) as exc:
    main.main([*argv, "--optimizer", "adamw", "--epochs", "2", "--resume"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--resume: the checkpoint of epoch 1" in err and "--overwrite" in err


def test_mesh_runs_data_parallel_and_fsdp(tiny_npz, tmp_path):
  # JAX fixes its device count at start-up: 4 CPU devices need a new process.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = tmp_path / "mesh"
  argv = ["--data", str(tiny_npz), "--epochs", "1", "--mesh", "data=2,fsdp=2", "--out", str(out)]
  # Width 16: some parameters reach --fsdp-min-size, so that fsdp shards them.
  argv += TINY + ["--optimizer", "tensor_galore", "--width", "16"]
  result = subprocess.run(
    [sys.executable, "-m", "examples.fno", *argv],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["devices"] == 4 and math.isfinite(metrics["test_rel_l2"])


@pytest.mark.slow
def test_compare_writes_one_table_and_figure(tiny_npz, tmp_path):
  out = tmp_path / "compare"
  argv = ["--data", str(tiny_npz), "--ranks", "0.5", "--epochs", "1", "--out", str(out)]
  assert compare.main(argv + TINY) == 0

  rows = json.loads((out / "compare.json").read_text())
  assert [r["optimizer"] for r in rows] == list(optimizers.OPTIMIZERS)
  assert rows[0]["state_ratio"] == 1.0
  assert rows[2]["rank"] == 0.5 and rows[1]["tensor_rank"] == 0.5
  # GaLore's rank is matched to Tensor-GaLore's state size.
  assert rows[1]["optimizer_state_bytes"] == pytest.approx(
    rows[2]["optimizer_state_bytes"], rel=0.25
  )
  assert "| tensor_galore |" in (out / "compare.md").read_text()
  assert (out / "compare.png").stat().st_size > 0


@pytest.mark.slow
def test_accuracy_study_trains_what_its_data_lacks_then_collects(tmp_path, monkeypatch, capsys):
  from benchmarks import accuracy

  tiny = {"n_train": 8, "n_test": 4, "resolution": 16, "batch_size": 4, "eval_batch_size": 4}
  study = accuracy.Study(
    "tiny",
    tasks=("ns64",),
    rows=(
      accuracy.Row("adamw", {"optimizer": "adamw"}),
      accuracy.Row("in channels", {"optimizer": "tensor_galore_in_channels"}),
    ),
    seeds=(0,),
    settings={**tiny, "modes": 4, "width": 8, "epochs": 1, "lr": 1e-2},
  )
  monkeypatch.setitem(accuracy.STUDIES, "tiny", study)
  monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
  monkeypatch.setattr(accuracy, "FIGURES", tmp_path / "figures")
  runs = ["--runs", str(tmp_path / "runs")]
  assert accuracy.main(["--study", "tiny", *runs]) == 0
  data = json.loads((tmp_path / "results" / "tiny.json").read_text())
  assert [(r["row"], r["seed"]) for r in data["runs"]] == [("adamw", 0), ("in channels", 0)]
  table = (tmp_path / "results" / "tiny.md").read_text()
  assert "| ns64 | adamw | 0 |" in table and "| 1.00 | 1.000 |" in table
  assert (tmp_path / "figures" / "accuracy_tiny.png").stat().st_size > 0

  # Nothing is missing: a second call trains nothing; --collect re-makes the same table.
  assert accuracy.main(["--study", "tiny", *runs]) == 0
  assert "0 runs to train" in capsys.readouterr().out
  (tmp_path / "results" / "tiny.md").unlink()
  assert accuracy.main(["--collect", "--study", "tiny"]) == 0
  assert (tmp_path / "results" / "tiny.md").read_text() == table


def _unstacked(tree: dict, n: int) -> dict:
  """A scanned FNO's pure dict in the unrolled layout: ``blocks`` split into ``n`` layers."""
  tree = dict(tree)
  stacked = tree.pop("blocks")
  tree["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)}
  return tree


@pytest.mark.parametrize("name", ["galore", "tensor_galore"])
def test_stacked_spectral_weights_get_per_layer_projections(name):
  """The scanned FNO starts from the unrolled one's parameters and gets the same updates."""
  from flax import nnx

  from examples.fno import model

  def params_of(**recipe):
    fno = model.FNO(1, 1, modes=(6, 6), width=8, n_layers=3, rngs=nnx.Rngs(0), **recipe)
    return nnx.to_pure_dict(nnx.state(fno, nnx.Param))

  plain, scanned = params_of(), params_of(scan_layers=True)
  assert scanned["blocks"]["spectral"]["weight"].shape == (3, 8, 8, 6, 4)
  jax.tree.map(np.testing.assert_array_equal, _unstacked(scanned, 3), plain)

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
    updates_plain, state_plain = tx_plain.update(_unstacked(grads, 3), state_plain, plain)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      _unstacked(updates_scanned, 3),
      updates_plain,
    )


@pytest.mark.parametrize("preset", ["cnn", "mlp"])
def test_the_other_models_train_with_the_librarys_defaults(tiny_npz, tmp_path, preset, capsys):
  out = tmp_path / preset
  argv = ["--data", str(tiny_npz), "--preset", preset, "--width", "64", "--epochs", "2"]
  argv += ["--lr", "3e-3"]  # 2.4e-2 is the FNO's rate
  argv += ["--optimizer", "tensor_galore_defaults", "--out", str(out), "--batch-size", "8"]
  argv += ["--eval-batch-size", "8", "--no-progress"]
  assert main.main(argv) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
  # The plan is printed before training: the weights large enough are projected.
  printed = capsys.readouterr().out
  assert "modes (size->rank)" in printed and "->" in printed.split("modes (size->rank)")[1]
  assert metrics["optimizer_state_bytes"] < 0.5 * metrics["adamw_state_bytes"]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--preset", "cnn", "--modes", "4"], "--modes applies to the FNO presets"),
    (["--preset", "mlp", "--optimizer", "adamw", "--remat"], "--preset mlp has no memory recipe"),
  ],
)
def test_fno_only_settings_on_the_other_models_are_usage_errors(tmp_path, flags, message, capsys):
  with pytest.raises(SystemExit) as exc:
    main.main([*flags, "--out", str(tmp_path / "out")])
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["small", "darcy"])
def test_the_librarys_defaults_project_the_fno_as_the_recommended_setting(preset):
  """On the FNO presets, no spec at rank 0.25 is the input channels with the matched step."""
  from flax import nnx

  from examples.fno import model

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
  for name in ("tensor_galore_defaults", optimizers.RECOMMENDED):
    tx = optimizers.make_optimizer(name, 1e-2, rank=0.25, update_proj_gap=2)
    updates.append(jax.jit(tx.update)(grads, tx.init(params), params)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *updates)


def test_projection_all_projects_every_mode_the_rank_cuts():
  params = {"conv": np.zeros((3, 3, 64, 64), np.float32)}
  for projection, expected in (("fewest", [(64, 16)]), ("all", [(64, 32), (64, 32)])):
    tx = optimizers.make_optimizer("tensor_galore_defaults", 1e-3, rank=0.25, projection=projection)
    assert [f.shape for f in tx.init(params)[0].factors["conv"]] == expected, projection


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--preset", "cnn", "--optimizer", "tensor_galore"], "projects spectral weights only"),
    (["--scan-layers", "--optimizer", "tensor_galore_defaults"], "would project as a mode"),
  ],
)
def test_optimizers_that_would_not_do_what_they_say_are_usage_errors(
  tmp_path, flags, message, capsys
):
  with pytest.raises(SystemExit) as exc:
    main.main([*flags, "--out", str(tmp_path / "out")])
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_redirected_output_has_plain_epoch_lines_not_progress_bar_frames(
  tiny_npz, tmp_path, capsys
):
  argv = ["--data", str(tiny_npz), "--epochs", "2", "--out", str(tmp_path / "run")]
  argv += [a for a in TINY if a != "--no-progress"]  # progress on, as by default
  assert main.main(argv) == 0
  captured = capsys.readouterr()
  assert "\r" not in captured.err + captured.out  # pytest's capture is not a terminal
  assert "epoch 1: train loss" in captured.out and "epoch 2: train loss" in captured.out
