"""GPU memory of real FNO training steps, and the widest FNO that fits per optimizer.

Two measurements that need an accelerator (on CPU, ``memory_stats()`` is None):

* ``peak``: one process per row trains ``--steps`` real steps (params and state
  donated) and reports ``jax.devices()[0].memory_stats()['peak_bytes_in_use']``,
  for adamw and tensor_galore, with no memory recipe and with the full one
  (``remat+scan+chunk``, see `common.RECIPES`). One process per row, since
  the peak is a high-water mark over the process's life.
* ``width``: the largest hidden width (modes, batch and resolution fixed) whose
  train step fits in device memory, per optimizer: a bisection over widths, each
  probe compiled in its own process (XLA's ``memory_analysis`` of the donated
  step must fit the device's ``bytes_limit``), and the answer checked by running
  one real step at that width.

Usage, from the repository root (the whole GPU check is ``bash benchmarks/gpu.sh``)::

  python -m benchmarks.gpu peak --config ns128 --out peak.json
  python -m benchmarks.gpu width --config ns128 --out width.json
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.steps import make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
FULL_RECIPE = common.FULL_RECIPE


def _one_row(config_name, optimizer_name, rank, recipe, width, steps, compile_only):
  """Runs in a fresh process: prints one JSON row."""
  config = common.CONFIGS[config_name]
  if width:
    config = dataclasses.replace(config, preset=dataclasses.replace(config.preset, width=width))
  graphdef, params = common.build_params(config, recipe=recipe)
  optimizer, _ = common.make_optimizer(optimizer_name, rank, params)
  step = jax.jit(make_train_step(graphdef, optimizer), donate_argnums=(0, 1))
  x_shape, _ = common.abstract_batch(config)
  row = {"optimizer": optimizer_name, "rank": rank, "recipe": recipe, "width": config.preset.width}
  device = jax.devices()[0]
  if compile_only:
    state_shape = jax.eval_shape(optimizer.init, params)
    params_shape = jax.eval_shape(lambda: params)
    memory = common.compiled_memory(step, params_shape, state_shape, x_shape, x_shape)
    row["step_bytes"] = memory["step_bytes"]
    row["bytes_limit"] = (device.memory_stats() or {}).get("bytes_limit")
  else:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape.shape), jnp.float32)
    state = optimizer.init(params)
    for _ in range(steps):
      params, state, loss = step(params, state, x, x)
    jax.block_until_ready(loss)
    stats = device.memory_stats() or {}
    row["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    row["loss"] = float(loss)
  row["device"] = device.device_kind
  print("ROW " + json.dumps(row), flush=True)


def _spawn(args: list[str]) -> dict | None:
  """Runs `_one_row` in a child process; None when it failed (e.g. out of memory)."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  out = subprocess.run(
    [sys.executable, "-m", "benchmarks.gpu", "row", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
  if out.returncode or not rows:
    print(f"  failed ({' '.join(args)}): {out.stderr.strip().splitlines()[-1:]}", flush=True)
    return None
  return json.loads(rows[-1])


def peak(config_name: str, rank: float, steps: int) -> list[dict]:
  rows = []
  for recipe in ("none", FULL_RECIPE):
    for name in ("adamw", "tensor_galore"):
      row = _spawn([config_name, name, str(rank), recipe, "0", str(steps), "0"])
      if row:
        rows.append(row)
        print(
          f"  {name:14s} {recipe:18s} peak {row['peak_bytes_in_use'] / 2**30:.2f} GiB",
          flush=True,
        )
  return rows


def fits(config_name, name, rank, recipe, width) -> dict | None:
  row = _spawn([config_name, name, str(rank), recipe, str(width), "1", "1"])
  if row is None or row["bytes_limit"] is None:
    return None
  return row if row["step_bytes"] <= row["bytes_limit"] else None


def widest(
  config_name: str, name: str, rank: float, recipe: str, low: int, high: int, step: int
) -> dict:
  """Bisection on the width (multiples of ``step``) by compiled step size."""
  best = None
  while low <= high:
    mid = (low + high) // (2 * step) * step
    row = fits(config_name, name, rank, recipe, mid)
    print(
      f"  {name:14s} {recipe:18s} width {mid:5d}: {'fits' if row else 'does not fit'}", flush=True
    )
    if row:
      best, low = row, mid + step
    else:
      high = mid - step
  if best is not None:
    ran = _spawn([config_name, name, str(rank), recipe, str(best["width"]), "1", "0"])
    best["ran_one_step"] = ran is not None
    if ran:
      best["peak_bytes_in_use"] = ran["peak_bytes_in_use"]
  return {"optimizer": name, "rank": rank, "recipe": recipe, "widest": best}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "row":
    c, name, rank, recipe, width, steps, compile_only = argv[1:]
    _one_row(c, name, float(rank), recipe, int(width), int(steps), bool(int(compile_only)))
    return 0
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0]
  )
  parser.add_argument("mode", choices=("peak", "width"))
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="ns128")
  parser.add_argument("--rank", type=float, default=0.25)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--widths", default="64,1024,32", help="low,high,step of the width search")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  print(common.machine(), flush=True)
  if args.mode == "peak":
    result = peak(args.config, args.rank, args.steps)
  else:
    low, high, step = (int(v) for v in args.widths.split(","))
    result = [
      widest(args.config, name, args.rank, recipe, low, high, step)
      for recipe in ("none", FULL_RECIPE)
      for name in ("adamw", "tensor_galore")
    ]
  print(json.dumps(result, indent=2))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
      json.dumps({"machine": common.machine(), "config": args.config, "rows": result}, indent=2)
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
