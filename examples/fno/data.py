"""Data sets of the FNO example: generated, cached, saved and loaded.

A data set is four float32 arrays, ``x_train, y_train, x_test, y_test``, each
``(N, S, S)`` or ``(N, S, S, C)``. Two PDEs are generated as the Fourier Neural
Operator paper's data (Li et al., 2021), one module each:
`examples.fno.navier_stokes` (vorticity ``w(0) -> w(t_final)`` on the torus) and
`examples.fno.darcy` (coefficient ``a`` to solution ``u`` on the unit square).
Fields are solved at ``solve_resolution`` and strided down to ``resolution``, as
the FNO data are (solved at 256, resp. 421).

From the repository root::

  python -m examples.fno.data navier_stokes --n-train 1000 --n-test 200 --resolution 64 --out ns.npz
  python examples/fno/data.py darcy --n-train 1000 --n-test 200 --resolution 16 --out darcy.npz
  python -m examples.fno.data check ns.npz

From Python, `load_or_generate` caches data sets by their parameters and
`load_dataset` reads a saved one (or the user's own ``.npz``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time
import zipfile
from typing import NamedTuple

import numpy as np
import tqdm

if __package__:
  from examples.fno import darcy as _darcy
  from examples.fno import navier_stokes as _navier_stokes
else:  # run as a script, ``python examples/fno/data.py``: the solvers sit beside it
  import darcy as _darcy
  import navier_stokes as _navier_stokes

# The solvers' functions, importable from here as well.
darcy_coefficient, solve_darcy = _darcy.darcy_coefficient, _darcy.solve_darcy
gaussian_random_field = _navier_stokes.gaussian_random_field
navier_stokes, stable_dt = _navier_stokes.navier_stokes, _navier_stokes.stable_dt
velocity, velocity_bound = _navier_stokes.velocity, _navier_stokes.velocity_bound

PDES = ("navier_stokes", "darcy")

# Bump when the generated data change, so that stale cache files are not used.
FORMAT_VERSION = 1
CACHE_ENV_VAR = "TENSOR_GALORE_DATA"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/tensor_galore_optax/data")

_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
  """A train/test split; every array is float32, ``(N, S, S)`` or ``(N, S, S, C)``."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def parameters(
  pde: str,
  *,
  n_train: int,
  n_test: int,
  resolution: int,
  solve_resolution: int | None = None,
  viscosity: float = _navier_stokes.NS_VISCOSITY,
  t_final: float = _navier_stokes.NS_T_FINAL,
  dt: float | None = None,
  trajectory: int = 1,
  a_high: float = _darcy.DARCY_A_HIGH,
  a_low: float = _darcy.DARCY_A_LOW,
  seed: int = 0,
) -> dict:
  """Validates the parameters that determine a data set, and normalises them.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    n_train: Number of training samples.
    n_test: Number of test samples.
    resolution: Grid size ``S`` of the stored fields.
    solve_resolution: Grid size of the solve (default ``resolution``); the
      fields are strided down to ``resolution``. Navier-Stokes: a multiple of
      ``resolution``, even. Darcy: ``solve_resolution - 1`` a multiple of
      ``resolution - 1``.
    viscosity: Navier-Stokes ``nu``.
    t_final: Navier-Stokes time of ``y``.
    dt: Navier-Stokes time step; by default `navier_stokes.stable_dt` of
      `navier_stokes.velocity_bound`. Either way it is rounded down to divide
      ``t_final`` into whole steps.
    trajectory: Navier-Stokes: store ``y`` as this many equally spaced
      snapshots up to ``t_final``, as channels ``(N, S, S, K)``; 1 stores
      ``(N, S, S)``.
    a_high: Darcy coefficient where the random field is non-negative.
    a_low: Darcy coefficient elsewhere.
    seed: Random seed. Training and test samples come from separate streams,
      so the test set does not change with ``n_train``.

  Returns:
    A JSON-serialisable dict of the parameters that ``pde`` uses, with
    ``solve_resolution`` resolved and numbers cast to ``int`` / ``float`` (so
    that ``t_final=1`` and ``t_final=1.0`` name the same data set).

  Raises:
    ValueError: On an unknown PDE or an invalid value.
  """
  if pde not in PDES:
    raise ValueError(f"unknown PDE {pde!r}; choose from {', '.join(PDES)}")
  solve_resolution = resolution if solve_resolution is None else solve_resolution
  params = dict(
    pde=pde,
    n_train=int(n_train),
    n_test=int(n_test),
    resolution=int(resolution),
    solve_resolution=int(solve_resolution),
    seed=int(seed),
    version=FORMAT_VERSION,
  )
  for name in ("n_train", "n_test", "resolution", "solve_resolution"):
    if params[name] <= 0:
      raise ValueError(f"{name} must be positive, got {params[name]}")
  if solve_resolution < resolution:
    raise ValueError(f"solve_resolution {solve_resolution} is below resolution {resolution}")
  if pde == "navier_stokes":
    params.update(
      viscosity=float(viscosity),
      t_final=float(t_final),
      dt=None if dt is None else float(dt),
      trajectory=int(trajectory),
    )
    positive = ("viscosity", "t_final", "trajectory") + (() if dt is None else ("dt",))
    if solve_resolution % 2:
      raise ValueError(f"solve_resolution must be even for the FFT solver, got {solve_resolution}")
    if solve_resolution % resolution:
      raise ValueError(
        f"resolution {resolution} does not divide solve_resolution {solve_resolution}"
      )
  else:
    params.update(a_high=float(a_high), a_low=float(a_low))
    positive = ("a_high", "a_low")
    if resolution < 3:
      raise ValueError(f"resolution must be at least 3 (one interior node), got {resolution}")
    # The node grids include both ends: striding maps linspace(0, 1, S2) onto
    # linspace(0, 1, S) iff (S - 1) divides (S2 - 1).
    if (solve_resolution - 1) % (resolution - 1):
      raise ValueError(
        f"resolution - 1 = {resolution - 1} does not divide "
        f"solve_resolution - 1 = {solve_resolution - 1}"
      )
  for name in positive:
    if not params[name] > 0:  # also rejects NaN
      raise ValueError(f"{name} must be positive, got {params[name]}")
  return params


def generate(pde: str, *, batch_size: int = 32, verbose: bool = True, **params) -> Dataset:
  """Generates a data set.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    batch_size: Navier-Stokes samples solved together.
    verbose: Whether to show a progress bar and print ``dt`` and the speed.
    **params: The data set's parameters, see `parameters`.

  Returns:
    The data set, float32.

  Raises:
    ValueError: On invalid parameters, or if the solution is not finite (a
      too large ``dt``).
  """
  params = parameters(pde, **params)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  log = print if verbose else lambda *_: None
  sizes = (params["n_train"], params["n_test"])
  start = time.perf_counter()
  # `disable=None`: a bar on a terminal only; redirected to a file it would write a
  # carriage-return frame per update.
  with tqdm.tqdm(
    total=sum(sizes), unit="sample", desc=pde, disable=None if verbose else True
  ) as bar:
    if pde == "navier_stokes":
      arrays = _navier_stokes.generate(params, batch_size=batch_size, bar=bar, log=log)
    else:
      arrays = _darcy.generate(params, bar=bar)
  elapsed = time.perf_counter() - start
  for key, array in zip(_KEYS, arrays, strict=True):
    if not np.isfinite(array).all():
      raise ValueError(f"{key} has non-finite values: the solve is unstable, reduce --dt")
  log(f"{sum(sizes)} samples in {elapsed:.2f} s ({sum(sizes) / elapsed:.1f} samples/s)")
  return Dataset(*arrays)


def _temporary_file(path: pathlib.Path) -> tuple[int, str]:
  """Opens a new hidden file beside ``path``, to be renamed to it once written."""
  return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def save_dataset(path: str | os.PathLike, data: Dataset, *, metadata: dict | None = None) -> None:
  """Writes a data set to ``path`` as ``.npz``, atomically.

  The arrays go to a temporary file in the same directory, which then
  replaces ``path``: readers (and a crash) never see a partial file.

  Args:
    path: Destination; written as given, no ``.npz`` suffix is added.
    data: The arrays.
    metadata: Stored as a JSON string under the key ``metadata``.
  """
  path = pathlib.Path(path)
  extra = {} if metadata is None else {"metadata": np.array(json.dumps(metadata, sort_keys=True))}
  fd, tmp = _temporary_file(path)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **data._asdict(), **extra)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def check_writable(path: str | os.PathLike) -> None:
  """Checks that `save_dataset` can write ``path``, before a (possibly long) solve.

  Args:
    path: The file to write.

  Raises:
    ValueError: If ``path`` is a directory, its directory does not exist, or
      no file can be created there.
  """
  path = pathlib.Path(path)
  try:
    if path.is_dir():
      raise ValueError(f"{path} is a directory; name the .npz file to write")
    if not path.parent.is_dir():
      raise ValueError(f"output directory {path.parent} does not exist")
    fd, tmp = _temporary_file(path)
  except OSError as e:
    raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
  os.close(fd)
  os.unlink(tmp)


def _checked_array(value, file: str, key: str) -> np.ndarray:
  """Returns ``value`` as float32 after checking its size, rank and values."""
  array = np.asarray(value)
  if array.size == 0:
    raise ValueError(f"{file}: key {key!r} is empty (shape {array.shape}); expected samples")
  if array.ndim not in (3, 4):
    raise ValueError(
      f"{file}: key {key!r} has shape {array.shape}; expected (N, S, S) or (N, S, S, C)"
    )
  if array.dtype.kind not in "biuf":
    raise ValueError(f"{file}: key {key!r} has dtype {array.dtype}; expected real numbers")
  if not np.isfinite(array).all():
    raise ValueError(f"{file}: key {key!r} has non-finite values")
  return array.astype(np.float32, copy=False)


def _checked_pair(x, y, file: str, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split: ranks, values, and that ``x`` and ``y`` match."""
  x, y = _checked_array(x, file, x_key), _checked_array(y, file, y_key)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{file}: {x_key!r} has {x.shape[0]} samples but {y_key!r} has {y.shape[0]}")
  if x.shape[1:3] != y.shape[1:3]:
    raise ValueError(
      f"{file}: {x_key!r} has spatial shape {x.shape[1:3]} but {y_key!r} has {y.shape[1:3]}"
    )
  return x, y


# What np.load raises on an unreadable or truncated archive.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)


def _read_npz(path: pathlib.Path) -> Dataset:
  """Reads and checks the four arrays of an ``.npz`` file."""
  if not path.is_file():
    raise ValueError(f"{path}: no such file")
  # np.load also reads .npy and pickle files, with confusing errors for others.
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an .npz (zip) archive")
  try:
    npz = np.load(path, allow_pickle=False)
  except _READ_ERRORS as e:
    raise ValueError(f"{path}: cannot read as an .npz archive ({e})") from e
  arrays = {}
  with npz:
    for key in _KEYS:
      if key not in npz.files:
        raise ValueError(f"{path}: missing key {key!r} (has {', '.join(npz.files) or 'none'})")
      try:
        arrays[key] = npz[key]
      except _READ_ERRORS as e:
        raise ValueError(f"{path}: cannot read key {key!r} ({e})") from e
  train = _checked_pair(arrays["x_train"], arrays["y_train"], str(path), "x_train", "y_train")
  test = _checked_pair(arrays["x_test"], arrays["y_test"], str(path), "x_test", "y_test")
  return Dataset(*train, *test)


def _read_pt(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from a neuraloperator ``.pt`` file: a dict with ``x`` and ``y``."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (pip install torch)") from e
  try:
    content = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types on a bad file
    raise ValueError(f"{path}: cannot read as a PyTorch file ({e})") from e
  if not isinstance(content, dict) or not {"x", "y"} <= content.keys():
    raise ValueError(f"{path}: expected a dict with keys 'x' and 'y'")
  return _checked_pair(content["x"], content["y"], str(path), "x", "y")


def load_dataset(path: str | os.PathLike, test_path: str | os.PathLike | None = None) -> Dataset:
  """Loads and validates a data set.

  Args:
    path: An ``.npz`` file with ``x_train, y_train, x_test, y_test`` (other
      keys are ignored), or neuraloperator's training ``.pt`` file (a dict with
      ``x`` and ``y``; needs PyTorch).
    test_path: With a ``.pt`` ``path``: the matching test ``.pt`` file.

  Returns:
    The four arrays as float32. Train and test resolutions may differ (for
    zero-shot super-resolution tests); within a split they must match.

  Raises:
    ValueError: If a file cannot be read, a key is missing, an array is empty
      or not ``(N, S, S)`` or ``(N, S, S, C)``, has non-finite values, or ``x`` and
      ``y`` of a split differ in ``N`` or ``S``. The message names the file
      and the key.
    ImportError: For ``.pt`` files without PyTorch.
  """
  path = pathlib.Path(path)
  if path.suffix != ".pt":
    if test_path is not None:
      raise ValueError(f"{path}: test_path is only used with .pt files")
    return _read_npz(path)
  if test_path is None:
    raise ValueError(f"{path}: a .pt file holds one split; give the test split's file too")
  return Dataset(*_read_pt(path), *_read_pt(pathlib.Path(test_path)))


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Resolves the cache directory: the argument, else ``$TENSOR_GALORE_DATA``, else the default."""
  chosen = cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
  return pathlib.Path(chosen).expanduser()


def cache_file(params: dict, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Names a data set's cache file by a hash of its (normalised) parameters."""
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
  return cache_dir_path(cache_dir) / f"{params['pde']}_{params['resolution']}_{digest}.npz"


def load_or_generate(
  pde: str,
  *,
  batch_size: int = 32,
  cache_dir: str | os.PathLike | None = None,
  verbose: bool = True,
  **params,
) -> Dataset:
  """Returns a cached data set, generating and caching it on first use.

  The file is named by a hash of every parameter that changes the data (see
  `generate` for their meaning), in ``cache_dir``, else
  ``$TENSOR_GALORE_DATA``, else ``~/.cache/tensor_galore_optax/data``.

  Args:
    pde: ``"navier_stokes"`` or ``"darcy"``.
    batch_size: See `generate`; does not change the data.
    cache_dir: Cache directory, created if missing.
    verbose: Whether to report progress.
    **params: The data set's parameters, see `parameters`.

  Returns:
    The data set, float32.

  Raises:
    ValueError: On invalid parameters or an unreadable cache file.
  """
  params = parameters(pde, **params)
  path = cache_file(params, cache_dir)
  if path.exists():
    if verbose:
      print(f"loading cached {path}")
    return load_dataset(path)
  kwargs = {k: v for k, v in params.items() if k != "version"}
  data = generate(**kwargs, batch_size=batch_size, verbose=verbose)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_dataset(path, data, metadata=params)
  if verbose:
    print(f"cached {path}")
  return data


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  """Builds the command-line parser: one sub-command per PDE, and ``check``."""
  parser = argparse.ArgumentParser(
    prog="python -m examples.fno.data",
    description=__doc__.split("\n\n")[0],
  )
  commands = parser.add_subparsers(
    dest="command", required=True, metavar="{navier_stokes,darcy,check}"
  )

  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--n-train", type=int, required=True, help="training samples")
  common.add_argument("--n-test", type=int, required=True, help="test samples")
  common.add_argument("--resolution", type=int, required=True, help="stored grid size S")
  common.add_argument("--solve-resolution", type=int, help="solve grid size (default: S)")
  common.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
  common.add_argument("--out", type=pathlib.Path, help=".npz file to write (default: the cache)")
  common.add_argument(
    "--cache-dir", help=f"cache directory (default: ${CACHE_ENV_VAR} or {DEFAULT_CACHE_DIR})"
  )

  default = " (default: %(default)s)"
  ns = commands.add_parser("navier_stokes", parents=[common], help="2-D Navier-Stokes")
  nu, t_final = _navier_stokes.NS_VISCOSITY, _navier_stokes.NS_T_FINAL
  ns.add_argument("--viscosity", type=float, default=nu, help="nu" + default)
  ns.add_argument("--t-final", type=float, default=t_final, help="time of y" + default)
  ns.add_argument("--dt", type=float, help="time step (default: from the stability bounds)")
  ns.add_argument("--trajectory", type=int, default=1, metavar="K", help="store K snapshots")
  ns.add_argument("--batch-size", type=int, default=32, help="samples solved at once" + default)

  darcy = commands.add_parser("darcy", parents=[common], help="2-D Darcy flow")
  high, low = _darcy.DARCY_A_HIGH, _darcy.DARCY_A_LOW
  darcy.add_argument("--a-high", type=float, default=high, help="a where the field >= 0" + default)
  darcy.add_argument("--a-low", type=float, default=low, help="a elsewhere" + default)

  check = commands.add_parser("check", help="validate a data file and print its shapes")
  check.add_argument("file", type=pathlib.Path)
  check.add_argument("--test-file", type=pathlib.Path, help="test split, for .pt files")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs the command line.

  Args:
    argv: Arguments, default ``sys.argv[1:]``.

  Returns:
    0 on success. Bad input exits with status 2 and a message on stderr,
    leaving no output file.
  """
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    if args.command == "check":
      data = load_dataset(args.file, args.test_file)
      for key, array in data._asdict().items():
        print(f"{key}: {array.shape} {array.dtype}")
      return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "out", "cache_dir")}
    if args.out is None:
      load_or_generate(args.command, **settings, cache_dir=args.cache_dir)
      return 0
    check_writable(args.out)
    data = generate(args.command, **settings)
    save_dataset(args.out, data, metadata={"pde": args.command, **settings})
    print(f"wrote {args.out}")
  except (ValueError, ImportError) as e:
    parser.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
