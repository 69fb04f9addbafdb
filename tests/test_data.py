"""Tests of the FNO example's data: solvers against exact solutions, files, CLI, cache."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.fno import darcy, data, navier_stokes


def _taylor_green(n: int, dtype) -> jax.Array:
  """``cos(2 pi x) cos(2 pi y)``: wavenumbers (+-1, +-1) only, so ``psi`` is
  proportional to ``w`` and the advection ``u . grad w`` vanishes."""
  c = jnp.cos(2 * jnp.pi * navier_stokes.torus_grid(n, dtype))
  return c[:, None] * c[None, :]


def _kinetic_energy(w: jax.Array) -> jax.Array:
  """Mean of ``|u|^2 / 2`` over the torus, per field."""
  u, v = navier_stokes.velocity(w)
  return 0.5 * jnp.mean(u**2 + v**2, axis=(-2, -1))


# ---------------------------------------------------------------- solver


# Crank-Nicolson multiplies the mode by (1 - a/2) / (1 + a/2) = exp(-a - a^3/12 - ...) per step,
# a = dt nu 8 pi^2 for wavenumbers (+-1, +-1): after n steps the relative error is n a^3 / 12
# (1.0e-8 here) on |w| <= 1, and float64 round-off adds ~1e-13: twice the former bounds it. In
# float32 each step also rounds |w| by about eps = 1.2e-7; unbiased roundings add up as a random
# walk, sqrt(n) eps = 5e-6 (n eps = 2.4e-4 at worst): 1e-4 is twenty times the former.
_TG_NU, _TG_DT, _TG_STEPS = 1e-2, 5e-4, 2000
_TG_CN = 2 * _TG_STEPS * (_TG_DT * _TG_NU * 8 * np.pi**2) ** 3 / 12


@pytest.mark.parametrize("x64, tol", [(True, _TG_CN), (False, 1e-4)])
def test_taylor_green_decays_at_the_exact_rate(x64, tol):
  nu, dt, n_steps = _TG_NU, _TG_DT, _TG_STEPS
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    w0 = _taylor_green(16, dtype)
    w = navier_stokes.navier_stokes(
      w0, viscosity=nu, dt=dt, n_steps=n_steps, n_snapshots=4, forcing=False
    )
    assert w.dtype == dtype and w.shape == (16, 16, 4)
    times = dt * n_steps * np.arange(1, 5) / 4
    exact = np.asarray(w0)[..., None] * np.exp(-8 * np.pi**2 * nu * times)
    np.testing.assert_allclose(np.asarray(w), exact, rtol=0, atol=tol)


def test_forcing_drives_its_mode_to_the_exact_solution():
  # The forcing is a single |k|^2 = 2 mode too, so from rest
  # w(t) = f (1 - exp(-nu L t)) / (nu L) with L = 8 pi^2, exactly.
  nu, dt, n_steps = 1e-2, 5e-4, 2000
  with jax.enable_x64(True):
    w = navier_stokes.navier_stokes(
      jnp.zeros((16, 16), jnp.float64), viscosity=nu, dt=dt, n_steps=n_steps
    )[..., -1]
    decay = nu * 8 * np.pi**2
    exact = (
      navier_stokes.benchmark_forcing(16, jnp.float64) * -np.expm1(-decay * dt * n_steps) / decay
    )
    np.testing.assert_allclose(np.asarray(w), np.asarray(exact), rtol=0, atol=1e-8)


def test_inviscid_energy_drift_is_first_order_in_dt():
  # Without viscosity the de-aliased semi-discrete flow conserves energy (the
  # field is kept inside the 2/3 band), so the drift is the explicit Euler
  # step's: proportional to dt.
  n = 32
  noise = np.random.default_rng(0).standard_normal((2, 2, n, n), np.float32)
  k = np.abs(np.fft.fftfreq(n, 1.0 / n))
  band = (k[:, None] <= n / 3) & (k[None, :] <= n / 3)
  w0 = 10 * jnp.fft.ifft2(jnp.fft.fft2(navier_stokes.gaussian_random_field(noise)) * band).real
  e0 = _kinetic_energy(w0)
  drifts = []
  for n_steps in (200, 400):
    w = navier_stokes.navier_stokes(
      w0, viscosity=0.0, dt=1.0 / n_steps, n_steps=n_steps, forcing=False
    )
    drifts.append(float(jnp.max(jnp.abs(_kinetic_energy(w[..., -1]) / e0 - 1))))
  assert 1.5 < drifts[0] / drifts[1] < 2.6, drifts


def test_random_field_spectrum_matches_the_eigenvalues():
  # The complex noise has E|xi|^2 = 2 per mode and taking the real part
  # halves it, so E |fft2(w)_k|^2 = sqrt_eig_k^2 (the n^2 of sqrt_eig cancels
  # ifft2's 1 / n^2), and Var w(x) = sum_k sqrt_eig_k^2 / n^4.
  n, m = 32, 4000
  noise = np.random.default_rng(1).standard_normal((m, 2, n, n), np.float32)
  w = np.asarray(navier_stokes.gaussian_random_field(noise), np.float64)
  power = np.mean(np.abs(np.fft.fft2(w)) ** 2, axis=0)
  eig = np.asarray(navier_stokes.grf_sqrt_eig(n), np.float64) ** 2
  assert eig[0, 0] == 0 and np.abs(w.mean(axis=(1, 2))).max() < 1e-6
  ratio = power[eig > 0] / eig[eig > 0]
  # Each ratio averages m exponential variables: standard deviation 1/sqrt(m).
  assert abs(ratio.mean() - 1) < 0.01
  assert np.abs(ratio - 1).max() < 0.1
  assert w.var() == pytest.approx(eig.sum() / n**4, rel=0.02)


def test_stable_dt_takes_the_tightest_bound():
  assert navier_stokes.stable_dt(0.1, viscosity=1e-3, dx=1 / 64) == navier_stokes.NS_DT_MAX
  assert navier_stokes.stable_dt(1.0, viscosity=1e-2, dx=1 / 64) == pytest.approx(0.5 / 64)
  assert navier_stokes.stable_dt(1.0, viscosity=1e-3, dx=1 / 64) == pytest.approx(1e-3)


# ---------------------------------------------------------------- Darcy


def _series_solution(n: int, a: float, modes: int = 401) -> np.ndarray:
  """``-a lap u = 1`` on the unit square, zero on the boundary, at the nodes."""
  x = np.linspace(0, 1, n)
  m = np.arange(1, modes + 1, 2)
  sines = np.sin(np.pi * np.outer(m, x))
  coeff = 16 / (np.pi**4 * m[:, None] * m[None, :] * (m[:, None] ** 2 + m[None, :] ** 2) * a)
  return sines.T @ coeff @ sines


def test_darcy_constant_coefficient_converges_to_the_series_solution():
  errors = []
  for n in (17, 33, 65):
    u = darcy.solve_darcy(np.full((n, n), 3.0))
    errors.append(np.abs(u - _series_solution(n, 3.0)).max())
  assert errors[-1] < 1e-5
  for coarse, fine in zip(errors, errors[1:], strict=False):
    assert 3.5 < coarse / fine < 4.5, errors


def test_darcy_coefficient_is_thresholded():
  a = darcy.darcy_coefficient(np.random.default_rng(0), 33, a_high=5.0, a_low=1.0)
  assert set(np.unique(a)) == {1.0, 5.0}
  u = darcy.solve_darcy(a)
  assert np.all(u[0] == 0) and np.all(u[:, -1] == 0) and np.all(u[1:-1, 1:-1] > 0)


# ---------------------------------------------------------------- generation


def test_samples_do_not_depend_on_batching_or_n_train():
  common = dict(n_test=2, resolution=16, t_final=0.05, batch_size=2, verbose=False)
  big = data.generate("navier_stokes", n_train=3, **common)
  small = data.generate("navier_stokes", n_train=1, **common)
  np.testing.assert_array_equal(big.x_test, small.x_test)
  np.testing.assert_array_equal(big.y_test, small.y_test)
  np.testing.assert_array_equal(big.x_train[:1], small.x_train)
  assert not np.allclose(big.x_train[0], big.x_train[1])


def test_trajectory_stores_snapshots_as_channels():
  common = dict(n_train=2, n_test=1, resolution=16, t_final=0.06, verbose=False)
  final = data.generate("navier_stokes", **common)
  snapshots = data.generate("navier_stokes", trajectory=3, **common)
  assert snapshots.y_train.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(snapshots.x_train, final.x_train)
  # The same solver taking the same steps: the last snapshot is the final field, bitwise.
  np.testing.assert_array_equal(snapshots.y_train[..., -1], final.y_train)
  assert not np.allclose(snapshots.y_train[..., 0], final.y_train)


def test_a_step_above_the_stability_bound_warns():
  with pytest.warns(RuntimeWarning, match="stability bound"):
    data.generate(
      "navier_stokes",
      n_train=1,
      n_test=1,
      resolution=16,
      viscosity=1e-5,
      dt=0.05,
      t_final=0.05,
      verbose=False,
    )


# ---------------------------------------------------------------- files


def _arrays(n_train=3, n_test=2, s=8):
  rng = np.random.default_rng(0)
  return {
    "x_train": rng.random((n_train, s, s)),
    "y_train": rng.random((n_train, s, s)),
    "x_test": rng.random((n_test, s, s)),
    "y_test": rng.random((n_test, s, s, 2)),
  }


def test_load_dataset_ignores_other_keys_and_casts(tmp_path):
  path = tmp_path / "d.npz"
  arrays = _arrays()
  np.savez(path, **arrays, notes=np.array("hello"))
  loaded = data.load_dataset(path)
  assert all(a.dtype == np.float32 for a in loaded)
  # float64 written, float32 read: one rounding, at most eps32 / 2 = 6e-8 relative.
  np.testing.assert_allclose(loaded.y_test, arrays["y_test"], rtol=6e-8)


@pytest.mark.parametrize(
  "key, edit",
  [
    ("y_test", lambda d: d.pop("y_test")),
    ("x_train", lambda d: d.update(x_train=d["x_train"][0])),
    ("y_train", lambda d: d.update(y_train=d["y_train"][:2])),
    ("y_test", lambda d: d.update(y_test=d["y_test"][:, :4])),
    ("x_test", lambda d: d["x_test"].__setitem__((0, 0, 0), np.nan)),
    ("x_train", lambda d: d.update(x_train=d["x_train"].astype(complex))),
  ],
  ids=["missing", "ndim", "n_mismatch", "spatial_mismatch", "nan", "complex"],
)
def test_load_dataset_rejects_bad_arrays(tmp_path, key, edit):
  arrays = _arrays()
  edit(arrays)
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=f"{path}.*{key}"):
    data.load_dataset(path)


@pytest.mark.parametrize("key", ["x_train", "y_train", "x_test", "y_test"])
@pytest.mark.parametrize("empty", [slice(0), (..., slice(0))], ids=["no_samples", "no_channels"])
def test_load_dataset_rejects_empty_arrays(tmp_path, key, empty):
  arrays = _arrays()
  arrays[key] = arrays[key][empty]
  path = tmp_path / "empty.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=f"{path}: key '{key}' is empty"):
    data.load_dataset(path)


def test_load_dataset_rejects_unreadable_files(tmp_path):
  text = tmp_path / "text.npz"
  text.write_text("not an archive")
  single = tmp_path / "single.npz"
  with open(single, "wb") as f:
    np.save(f, np.zeros(3))
  for path in (text, single, tmp_path / "missing.npz"):
    with pytest.raises(ValueError, match=str(path)):
      data.load_dataset(path)


def test_save_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "d.npz"
  data.save_dataset(path, data.Dataset(**_arrays()))
  before = path.read_bytes()

  def failing_savez(file, **_):
    file.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(OSError, match="disk full"):
    data.save_dataset(path, data.Dataset(**_arrays(n_train=5)))
  assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]
  assert path.read_bytes() == before


def test_load_dataset_reads_neuraloperator_pt_files(monkeypatch, tmp_path):
  splits = {"train.pt": _arrays(), "test.pt": _arrays()}
  contents = {
    str(tmp_path / name): {"x": a["x_train"], "y": a["y_train"]} for name, a in splits.items()
  }
  fake_torch = types.SimpleNamespace(load=lambda path, **_: contents[str(path)])
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  loaded = data.load_dataset(tmp_path / "train.pt", test_path=tmp_path / "test.pt")
  assert loaded.x_train.shape == (3, 8, 8) and loaded.y_test.dtype == np.float32
  with pytest.raises(ValueError, match="test split"):
    data.load_dataset(tmp_path / "train.pt")


def test_load_dataset_explains_missing_torch(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError, match="PyTorch"):
    data.load_dataset(tmp_path / "train.pt", test_path=tmp_path / "test.pt")


# ---------------------------------------------------------------- cache


def test_load_or_generate_reuses_the_cache(tmp_path, monkeypatch):
  calls = []
  generate = data.generate
  monkeypatch.setattr(data, "generate", lambda *a, **k: calls.append(k) or generate(*a, **k))
  kwargs = dict(n_train=2, n_test=1, resolution=5, cache_dir=tmp_path, verbose=False)
  first = data.load_or_generate("darcy", **kwargs)
  (path,) = tmp_path.iterdir()
  mtime = path.stat().st_mtime_ns
  # t_final is a Navier-Stokes parameter: it does not name a Darcy data set.
  second = data.load_or_generate("darcy", t_final=3.0, **kwargs)
  assert len(calls) == 1 and path.stat().st_mtime_ns == mtime
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)
  with np.load(path) as npz:
    assert json.loads(str(npz["metadata"]))["pde"] == "darcy"

  data.load_or_generate("darcy", seed=1, **kwargs)
  assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "env"))
  data.load_or_generate("darcy", n_train=1, n_test=1, resolution=5, verbose=False)
  assert len(list((tmp_path / "env").glob("darcy_5_*.npz"))) == 1
  monkeypatch.delenv(data.CACHE_ENV_VAR)
  assert data.cache_dir_path() == data.DEFAULT_CACHE_DIR.expanduser()


# ---------------------------------------------------------------- command line


def test_cli_round_trip_navier_stokes(tmp_path, capsys):
  out = tmp_path / "ns.npz"
  argv = ["navier_stokes", "--n-train", "3", "--n-test", "2", "--resolution", "16"]
  argv += ["--solve-resolution", "32", "--t-final", "0.05", "--out", str(out)]
  assert data.main(argv) == 0
  printed = capsys.readouterr().out
  assert "dt = 0.01" in printed and "samples/s" in printed
  loaded = data.load_dataset(out)
  assert loaded.x_train.shape == (3, 16, 16) and loaded.y_test.shape == (2, 16, 16)
  assert not np.allclose(loaded.x_train, loaded.y_train)

  assert data.main(["check", str(out)]) == 0
  assert "x_train: (3, 16, 16) float32" in capsys.readouterr().out


def test_cli_round_trip_darcy(tmp_path):
  out = tmp_path / "darcy.npz"
  argv = ["darcy", "--n-train", "2", "--n-test", "1", "--resolution", "9"]
  assert data.main(argv + ["--solve-resolution", "17", "--out", str(out)]) == 0
  loaded = data.load_dataset(out)
  assert set(np.unique(loaded.x_train)) <= {3.0, 12.0}
  assert np.all(loaded.y_train[:, 0] == 0) and np.all(loaded.y_train[:, 1:-1, 1:-1] > 0)


def test_the_file_runs_as_a_script_from_anywhere(tmp_path):
  # ``python examples/fno/data.py``: no package, the solver modules sit beside the file.
  script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fno" / "data.py"
  argv = ["darcy", "--n-train", "2", "--n-test", "1", "--resolution", "5", "--out", "d.npz"]
  subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, check=True, timeout=300)
  assert data.load_dataset(tmp_path / "d.npz").x_train.shape == (2, 5, 5)


def test_cli_without_out_uses_the_cache(tmp_path):
  argv = ["darcy", "--n-train", "1", "--n-test", "1", "--resolution", "5"]
  assert data.main(argv + ["--cache-dir", str(tmp_path)]) == 0
  assert len(list(tmp_path.glob("darcy_5_*.npz"))) == 1


_SIZES = ["--n-train", "2", "--n-test", "1"]
_OUT = ["--out", "d.npz"]
_NS = ["navier_stokes", *_SIZES]


@pytest.mark.parametrize(
  "argv, message",
  [
    (["burgers", *_SIZES, "--resolution", "16", *_OUT], "invalid choice"),
    ([*_NS, "--n-train", "0", "--resolution", "16", *_OUT], "n_train"),
    ([*_NS, "--resolution", "-4", *_OUT], "resolution"),
    ([*_NS, "--resolution", "16", "--viscosity", "0", *_OUT], "viscosity"),
    ([*_NS, "--resolution", "24", "--solve-resolution", "64", *_OUT], "divide"),
    (["darcy", *_SIZES, "--resolution", "9", "--solve-resolution", "20", *_OUT], "divide"),
    (["darcy", *_SIZES, "--resolution", "9", "--out", "missing/d.npz"], "directory"),
    (["check", "garbage.npz"], "not an .npz"),
    (["check", "flat.npz"], "shape"),
  ],
)
def test_cli_bad_input_exits_with_2(tmp_path, monkeypatch, capsys, argv, message):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "garbage.npz").write_text("garbage")
  np.savez(tmp_path / "flat.npz", **{k: np.zeros((2, 8)) for k in data._KEYS})
  inputs = sorted(tmp_path.iterdir())
  with pytest.raises(SystemExit) as exit_info:
    data.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert sorted(tmp_path.iterdir()) == inputs


@pytest.mark.parametrize(
  "out, message",
  [
    (".", "is a directory"),
    ("x" * 300 + ".npz", "cannot write"),
    ("flat.npz/d.npz", "does not exist"),
  ],
  ids=["directory", "unwritable", "parent_is_a_file"],
)
def test_cli_checks_out_before_solving(tmp_path, monkeypatch, capsys, out, message):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "flat.npz").write_text("a file")

  def generate(*args, **kwargs):
    raise AssertionError("solved before checking --out")

  monkeypatch.setattr(data, "generate", generate)
  with pytest.raises(SystemExit) as exit_info:
    data.main(["darcy", *_SIZES, "--resolution", "9", "--out", out])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert [p.name for p in tmp_path.iterdir()] == ["flat.npz"]
