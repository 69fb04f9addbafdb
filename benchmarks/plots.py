"""Figures of the benchmarks: loss curves, sample predictions, optimizer comparison.

Every function writes one PNG with matplotlib's non-interactive Agg backend,
so the figures are made on machines without a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, ax, path: str | os.PathLike, xlabel: str, ylabel: str) -> None:
  """Labels the axes, adds a grid and the legend, writes ``path`` and closes the figure."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_history(
  history: Sequence[dict], path: str | os.PathLike, *, identity: float | None = None
) -> None:
  """Plots the training loss and the test relative L2 error per epoch.

  Args:
    history: One dict per epoch with ``epoch``, ``train_loss`` and
      ``test_rel_l2``.
    path: The PNG to write.
    identity: The error of predicting ``y = x``, drawn as a reference line.
  """
  epochs = [h["epoch"] for h in history]
  fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
  ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
  ax.plot(epochs, [h["test_rel_l2"] for h in history], "s-", label="test relative L2")
  if identity is not None:
    ax.axhline(identity, color="gray", linestyle="--", label="identity (y = x)")
  ax.set_yscale("log")
  _save(fig, ax, path, "epoch", "relative error")


def plot_samples(x: np.ndarray, y: np.ndarray, pred: np.ndarray, path: str | os.PathLike) -> None:
  """Shows input, truth, prediction and error, one test sample per row.

  Multi-channel fields show their last channel (the final snapshot of a
  trajectory). Truth and prediction share a colour scale per sample.

  Args:
    x: Inputs, ``(N, H, W, C_in)``.
    y: Targets, ``(N, H, W, C_out)``.
    pred: Predictions shaped like ``y``.
    path: The PNG to write.
  """
  n = len(x)
  fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False, layout="constrained")
  for i, row in enumerate(axes):
    truth, guess = y[i, ..., -1], pred[i, ..., -1]
    low, high = truth.min(), truth.max()
    error = np.linalg.norm(guess - truth) / np.linalg.norm(truth)
    panels = [
      (x[i, ..., -1], "input", {}),
      (truth, "truth", dict(vmin=low, vmax=high)),
      (guess, "prediction", dict(vmin=low, vmax=high)),
      (guess - truth, f"error (relative L2 {error:.3f})", dict(cmap="RdBu_r")),
    ]
    for ax, (field, title, kwargs) in zip(row, panels, strict=True):
      if "cmap" in kwargs:
        limit = np.abs(field).max()
        kwargs.update(vmin=-limit, vmax=limit)
      image = ax.imshow(field, origin="lower", **kwargs)
      fig.colorbar(image, ax=ax, shrink=0.8)
      ax.set_title(title if i == 0 or title.startswith("error") else "")
      ax.set_xticks([])
      ax.set_yticks([])
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_compare(rows: Sequence[dict], path: str | os.PathLike) -> None:
  """Plots test error against optimizer-state memory, one series per optimizer.

  Args:
    rows: One dict per run with ``optimizer``, ``rank``,
      ``optimizer_state_bytes`` and ``test_rel_l2``.
    path: The PNG to write.
  """
  fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
  markers = {"adamw": "*", "galore": "o", "tensor_galore": "s"}
  for name in dict.fromkeys(r["optimizer"] for r in rows):
    series = sorted(
      (r for r in rows if r["optimizer"] == name), key=lambda r: r["optimizer_state_bytes"]
    )
    mib = [r["optimizer_state_bytes"] / 2**20 for r in series]
    errors = [r["test_rel_l2"] for r in series]
    ax.plot(mib, errors, marker=markers.get(name, "o"), markersize=9, label=name)
    for r, m, e in zip(series, mib, errors, strict=True):
      if r["rank"] is not None:
        ax.annotate(f"{r['rank']:g}", (m, e), textcoords="offset points", xytext=(5, 5))
  ax.set_xscale("log")
  _save(fig, ax, path, "optimizer state (MiB)", "test relative L2")


def plot_learning_curves(
  panels: dict[str, dict[str, Sequence[Sequence[float]]]], path: str | os.PathLike
) -> None:
  """Plots the test error per epoch of several optimizers, each the mean over its seeds.

  Args:
    panels: One panel per title (a task): for each label, one sequence of
      per-epoch test errors per seed (all of one length); the band spans the
      seeds' lowest to highest. Labels keep their colour across panels.
    path: The PNG to write.
  """
  labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
  colours = {label: f"C{k % 10}" for k, label in enumerate(labels)}
  # The legend goes below the axes: a line of height per label.
  fig, axes = plt.subplots(
    1, len(panels), figsize=(5 * len(panels) + 1, 4 + 0.22 * len(labels)), layout="constrained"
  )
  for ax, (title, curves) in zip(np.atleast_1d(axes), panels.items()):
    for label, runs in curves.items():
      runs = np.asarray(runs, dtype=float)
      epochs = np.arange(1, runs.shape[1] + 1)
      colour = colours[label]
      ax.plot(epochs, runs.mean(axis=0), color=colour)
      if len(runs) > 1:
        ax.fill_between(epochs, runs.min(axis=0), runs.max(axis=0), color=colour, alpha=0.2)
    ax.set_title(title)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test relative L2")
    ax.grid(True, which="both", alpha=0.3)
  handles = [plt.Line2D([], [], color=colours[label]) for label in labels]
  fig.legend(handles, labels, loc="outside lower center", fontsize="small")
  fig.savefig(path, dpi=120)
  plt.close(fig)
