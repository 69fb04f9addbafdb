"""Tests for the benchmarks' own machinery: XLA's peak breakdown and the memory recipes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import common, memory, run_tables


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
  for recipe in ("none", common.FULL_RECIPE):
    assert by[(recipe, "adamw")]["step_vs_adamw"] == 1.0
    assert by[(recipe, "tensor_galore")]["state_vs_adamw"] < 0.35
  # Same parameters in both layouts: the recipe moves activations, not weights.
  assert by[("none", "adamw")]["params_bytes"] == by[(common.FULL_RECIPE, "adamw")]["params_bytes"]
  # On the small model the activations dominate: the recipe shrinks every step.
  for name in ("adamw", "tensor_galore"):
    assert by[(common.FULL_RECIPE, name)]["step_bytes"] < 0.8 * by[("none", name)]["step_bytes"]
  np.testing.assert_allclose(
    by[(common.FULL_RECIPE, "adamw")]["step_vs_plain_adamw"],
    by[(common.FULL_RECIPE, "adamw")]["step_bytes"] / by[("none", "adamw")]["step_bytes"],
  )


def test_run_tables_average_the_seeds_and_divide_by_the_best_adamw_of_most_seeds(tmp_path):
  def write(prefix, seed, error, state):
    run = tmp_path / f"{prefix}{seed}"
    run.mkdir()
    metrics = {
      "config": {"lr": 0.01},
      "test_rel_l2": error,
      "train_rel_l2": error / 2,
      "optimizer_state_bytes": state,
      "adamw_state_bytes": 100,
      "history": [{"test_rel_l2": 2 * error}, {"test_rel_l2": error}],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))

  for seed, error in enumerate([0.010, 0.012]):
    write("a1_", seed, error, 100)
  for seed, error in enumerate([0.008, 0.010, 0.012]):
    write("a2_", seed, error, 100)
  write("a3_", 0, 0.005, 100)  # one seed only: not the reference, however low
  write("tg_", 1, 0.015, 25)  # seed 0 missing: skipped
  groups = [
    ("adamw", "x1", str(tmp_path / "a1_")),
    ("adamw", "x2", str(tmp_path / "a2_")),
    ("adamw", "x4", str(tmp_path / "a3_")),
    ("tensor_galore", "x2", str(tmp_path / "tg_")),
  ]
  figure = tmp_path / "curves.png"
  table = run_tables.collect(
    groups, task="ns64", setting="step", out=tmp_path / "out", figure=figure
  )
  assert figure.stat().st_size > 0
  assert (tmp_path / "out" / "table.md").read_text() == table + "\n"
  rows = {
    r["optimizer"]: r for r in json.loads((tmp_path / "out" / "runs.json").read_text())["summary"]
  }
  np.testing.assert_allclose(rows["adamw | x1"]["mean"], 0.011)
  np.testing.assert_allclose(rows["adamw | x2"]["ratio"], 1.0)  # the best of three seeds: 0.010
  np.testing.assert_allclose(rows["adamw | x4"]["ratio"], 0.5)
  np.testing.assert_allclose(rows["tensor_galore | x2"]["ratio"], 1.5)
  assert rows["tensor_galore | x2"]["seeds"] == [1]
  assert "| tensor_galore | x2 | 1 | 0.0150 | 0.0150 +- 0.0000 | 1.50 | 0.250 |" in table
