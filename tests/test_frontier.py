"""Smoke tests of the frontier benchmark: one tiny run gives a valid, cached JSON row."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks import frontier, frontier_levers, frontier_tasks


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


def test_every_optimizer_builds_and_counts_its_state():
  params = nnx.to_pure_dict(nnx.split(_tiny_task().model(0))[1])
  adamw = frontier.state_bytes(frontier.build_optimizer("optax.adamw(lr)", 1e-3, params), params)
  for name, opt in frontier.OPTIMIZERS.items():
    call = opt.call_for("burgers")
    tx = frontier.build_optimizer(call, 1e-3, params)
    assert frontier.state_bytes(tx, params) > 0, name
  # AdamW keeps two float32 moments per parameter and one step counter.
  n = sum(a.size for a in jax.tree.leaves(params))
  assert adamw == 8 * n + 4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_factored_adam_is_adam_where_nothing_is_factored(dtype):
  # With factoring off (min_dim larger than any axis), the factored Adam is Adam.
  g = jax.random.normal(jax.random.key(0), (6, 5)).astype(dtype)
  params = {"w": jnp.zeros((6, 5), dtype)}
  ours = frontier_levers.scale_by_factored_adam(min_dim_size_to_factor=100)
  adam = optax.scale_by_adam()
  s1, s2 = ours.init(params), adam.init(params)
  for _ in range(3):
    u1, s1 = ours.update({"w": g}, s1)
    u2, s2 = adam.update({"w": g}, s2)
    g = g * 0.5 + 0.1
  # The same float32 arithmetic (optax's bias correction, whose 1 - b2**t alone has a relative
  # error of ~6e-5 at t = 1): only XLA's fusion may round differently, a few ulps.
  np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
  # The second moment of a complex leaf is real.
  assert not jnp.iscomplexobj(s1.v_row["w"])
