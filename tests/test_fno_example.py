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

from examples.fno import compare, configs, train

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


@pytest.mark.parametrize("optimizer", configs.OPTIMIZERS)
def test_training_lowers_the_loss_and_writes_complete_outputs(tiny_npz, tmp_path, optimizer):
  out = tmp_path / optimizer
  argv = ["--data", str(tiny_npz), "--optimizer", optimizer, "--epochs", "2", "--out", str(out)]
  assert train.main(argv + TINY) == 0

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
    ("optimizer", "invalid choice"),
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
  elif case == "optimizer":
    argv += ["--optimizer", "sgd"]
  else:
    argv += ["--data", _write(tmp_path / "d.npz", **arrays), "--mesh", "data=two"]
  with pytest.raises(SystemExit) as exc:
    train.main(argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


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


def test_mesh_runs_data_parallel_and_fsdp(tiny_npz, tmp_path):
  # JAX fixes its device count at start-up: 4 CPU devices need a new process.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = tmp_path / "mesh"
  argv = [
    "--data",
    str(tiny_npz),
    "--optimizer",
    "tensor_galore",
    "--epochs",
    "1",
    "--mesh",
    "data=2,fsdp=2",
    "--width",
    "16",
    "--modes",
    "4",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "8",
    "--no-progress",
    "--out",
    str(out),
  ]
  result = subprocess.run(
    [sys.executable, str(ROOT / "examples/fno/train.py"), *argv],
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
  assert [r["optimizer"] for r in rows] == ["adamw", "galore", "tensor_galore"]
  assert rows[0]["state_ratio"] == 1.0
  assert rows[2]["rank"] == 0.5 and rows[1]["tensor_rank"] == 0.5
  # GaLore's rank is matched to Tensor-GaLore's state size.
  assert rows[1]["optimizer_state_bytes"] == pytest.approx(
    rows[2]["optimizer_state_bytes"], rel=0.25
  )
  assert "| tensor_galore |" in (out / "compare.md").read_text()
  assert (out / "compare.png").stat().st_size > 0
