"""Smoke tests of the FNO demo, ``python -m examples.fno`` (`examples.fno.train`)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from _helpers import write_tiny_npz

from examples.fno import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """32 train and 8 test samples of a shift-plus-square map on a 16 x 16 grid."""
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  write_tiny_npz(path, note=np.ones(3))
  return path


def test_the_demo_is_one_short_file():
  lines = (ROOT / "examples" / "fno" / "train.py").read_text().splitlines()
  assert len(lines) <= 150


def test_adamw_trains_and_writes_metrics_and_the_loss_plot(tiny_npz, tmp_path):
  out = tmp_path / "adamw"
  argv = ["--data", str(tiny_npz), "--optimizer", "adamw", "--epochs", "3", "--lr", "1e-2"]
  metrics = train.main(
    [*argv, "--batch-size", "8", "--modes", "4", "--width", "8", "--out", str(out)]
  )
  assert metrics == json.loads((out / "metrics.json").read_text())
  history = metrics["history"]
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert metrics["test_rel_l2"] == history[-1]["test_rel_l2"] < 1.0
  assert metrics["optimizer_state_bytes"] == metrics["adamw_state_bytes"] > 0
  assert (out / "loss.png").stat().st_size > 0


def test_the_default_run_as_a_module_projects_the_spectral_weights_and_logs_plain_lines(
  tiny_npz, tmp_path
):
  # The default model (width 32, 16 x 16 modes): its (32, 32, 16, 9) spectral weights are large
  # enough for the library's defaults to project. Output redirected to a pipe, as to a log file.
  out = tmp_path / "default"
  argv = ["--data", str(tiny_npz), "--epochs", "3", "--lr", "3e-3", "--batch-size", "8"]
  argv += ["--out", str(out)]
  result = subprocess.run(
    [sys.executable, "-m", "examples.fno", *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=True,
  )
  assert "\r" not in result.stdout + result.stderr  # no progress-bar frames off a terminal
  assert "epoch 1: train loss" in result.stdout and "epoch 3: train loss" in result.stdout
  assert "32->8, 32, 16, 9" in result.stdout  # the plan: a quarter of the input channels
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["optimizer"] == "tensor_galore"
  assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
  # Projected moments on the spectral weights, which hold most of the parameters.
  assert metrics["optimizer_state_bytes"] < 0.3 * metrics["adamw_state_bytes"]


def test_a_batch_larger_than_the_data_is_refused(tiny_npz, tmp_path):
  with pytest.raises(SystemExit, match="--batch-size"):
    train.main(["--data", str(tiny_npz), "--batch-size", "64", "--out", str(tmp_path / "out")])
