"""Tests for the benchmarks' own machinery: XLA's peak breakdown and the memory recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import accuracy, common, memory


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
  for name in accuracy.STUDIES:
    (tmp_path / f"{name}.json").write_text((committed / f"{name}.json").read_text())
    table = accuracy.collect(name)
    assert table + "\n" == (committed / f"{name}.md").read_text(), name
