"""Smoke tests of the frontier benchmark: one tiny run gives a valid, cached JSON row."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import frontier, frontier_tasks


def _tiny_task() -> frontier_tasks.Task:
  """A 2-block transformer of width 16 on 40 random fields of 8 tokens."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((50, 8, 1)).astype(np.float32)
  y = np.roll(x, 1, axis=1) ** 2  # a map the model can learn something of

  def model(seed):
    return frontier_tasks.Transformer(
      width=16, n_blocks=2, n_heads=2, mlp_ratio=2, tokens=8, rngs=nnx.Rngs(seed)
    )

  return frontier_tasks.Task(
    "tiny",
    "a 2-block transformer on random fields",
    lambda: (x[:40], y[:40], x[40:], y[40:]),
    model,
    epochs=2,
    batch_size=10,
    lrs=(1e-3, 3e-3, 1e-2),
    settings={"tiny": 1},
  )


def test_one_run_writes_a_valid_cached_row(tmp_path, monkeypatch):
  task = _tiny_task()
  monkeypatch.setitem(frontier_tasks.TASKS, "tiny", task)
  monkeypatch.setattr(frontier, "RESULTS", tmp_path)
  # min_size 64 projects the tiny model's kernels (16 x 16 and larger).
  monkeypatch.setitem(
    frontier.OPTIMIZERS, "tg", frontier.Optimizer("tensor_galore_adamw(lr, rank=0.25, min_size=64)")
  )
  row = frontier.run("tiny", "tg", 3e-3, 0)
  (path,) = (tmp_path / "runs" / "tiny").glob("*.json")
  assert json.loads(path.read_text()) == row
  for field in ("optimizer", "call", "lr", "seed", "test_error", "state_bytes", "step_time_s"):
    assert field in row
  assert row["call"] == "tensor_galore_adamw(lr, rank=0.25, min_size=64)"
  assert 0 < row["test_error"] < 10
  assert 0 < row["state_bytes"] < row["adamw_state_bytes"]
  assert len(row["history"]) == task.epochs
  # A second call reads the file: the same row, nothing trained (the file is untouched).
  mtime = path.stat().st_mtime_ns
  assert frontier.run("tiny", "tg", 3e-3, 0) == row
  assert path.stat().st_mtime_ns == mtime


def test_library_runs_are_keyed_by_the_librarys_generation_and_older_ones_are_shown_as_such(
  tmp_path, monkeypatch
):
  """A release that changes what a call trains bumps `LIBRARY_GENERATION`: the library's calls
  then train anew, optax's keep their runs, and a sweep finished only with the earlier
  generation is still summarised, marked with its versions."""
  task = _tiny_task()
  monkeypatch.setitem(frontier_tasks.TASKS, "tiny", task)
  monkeypatch.setattr(frontier, "RESULTS", tmp_path)
  call = "tensor_galore_adamw(lr, rank=0.25, min_size=64)"
  monkeypatch.setitem(frontier.OPTIMIZERS, "tg", frontier.Optimizer(call, library=True))
  current = frontier.LIBRARY_GENERATION
  assert frontier.run_key(task, call, 1e-3, 0)["library_generation"] == current
  assert "library_generation" not in frontier.run_key(task, "optax.adamw(lr)", 1e-3, 0)
  assert "library_generation" not in frontier.run_key(task, call, 1e-3, 0, generation=1)
  # Seed 0's sweep and seeds 1 and 2, as the earlier generation wrote them.
  for lr, error in zip(task.lrs, (0.3, 0.2, 0.4)):
    for seed in (0, 1, 2) if lr == 3e-3 else (0,):
      path = frontier.run_path(frontier.run_key(task, call, lr, seed, generation=1))
      path.parent.mkdir(parents=True, exist_ok=True)
      row = dict(test_error=error + seed / 100, state_bytes=1, adamw_state_bytes=4, step_time_s=1)
      path.write_text(json.dumps(row))
  assert frontier.best_lr("tiny", "tg") is None  # nothing of the current generation
  (point,) = [p for p in frontier.summarise("tiny") if p["optimizer"] == "tg"]
  assert point["generation"] == 1 and point["lr"] == 3e-3
  assert point["errors"] == pytest.approx([0.2, 0.21, 0.22])
  table = frontier.markdown({"tiny": [dict(point, error_ratio=1.0, time_ratio=1.0)]})
  assert f"| tg ({frontier.GENERATION_VERSIONS[1]}) |" in table


def test_every_optimizer_builds_and_counts_its_state():
  params = nnx.to_pure_dict(nnx.split(_tiny_task().model(0))[1])
  adamw = frontier.state_bytes(frontier.build_optimizer("optax.adamw(lr)", 1e-3, params), params)
  for name, opt in frontier.OPTIMIZERS.items():
    # The call of the task it applies to (a few apply to the FNO only: its params are these too).
    call = next(c for t in frontier_tasks.TASKS if (c := opt.call_for(t)) is not None)
    tx = frontier.build_optimizer(call, 1e-3, params)
    assert frontier.state_bytes(tx, params) > 0, name
  # AdamW keeps two float32 moments per parameter and one step counter.
  n = sum(a.size for a in jax.tree.leaves(params))
  assert adamw == 8 * n + 4


def test_each_named_setting_is_a_measured_point_and_plain_json():
  """settings.json maps names to keyword arguments of `tensor_galore_adamw` that a config
  file can hold, each the call of one of the frontier's library points."""
  calls = {opt.call for opt in frontier.OPTIMIZERS.values() if opt.library}
  for name, kwargs in frontier.SETTINGS.items():
    assert json.loads(json.dumps(kwargs)) == kwargs, name
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()).replace("'", '"')
    assert f"tensor_galore_adamw(lr, {arguments})" in calls, name
    params = {"w": jnp.zeros((24, 24, 8, 5), jnp.complex64)}
    assert frontier.state_bytes(frontier.tensor_galore_adamw(1e-3, **kwargs), params) > 0


def test_refresh_overlap_is_one_for_the_same_subspace_and_zero_for_orthogonal_ones():
  from benchmarks.refresh_overlap import overlap

  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (12, 12)))
  a, b = q[:, :3], q[:, 3:6]
  rotated = a @ jnp.linalg.qr(jax.random.normal(jax.random.key(1), (3, 3)))[0]
  np.testing.assert_allclose(overlap(a, rotated), 1.0, rtol=1e-5)  # a basis change within it
  np.testing.assert_allclose(overlap(a, b), 0.0, atol=1e-6)
  mixed = (a + b) / np.sqrt(2)  # each new column half in the old subspace
  np.testing.assert_allclose(overlap(a, mixed), 0.5, rtol=1e-5)
