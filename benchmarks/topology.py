"""How far a change of device or process count moves a run: 2 processes or 2 devices against 1.

Runs the FSDP training of tests/_multiprocess_worker.py (a complex ``(32, 32, 8, 5)`` spectral
weight, a ``(64, 128)`` matrix and a bias; 20 steps, a refresh every 4) in three topologies:
one process with one CPU device (the reference), two processes with one device each
(`jax.distributed`, gloo collectives on the loopback) and one process with two devices. For
each, ``tensor_galore_adamw(1e-2, rank=...)`` and ``optax.adamw(1e-2)`` from the same start,
on two kinds of data:

* ``gap``: the gradients' singular values along the projected modes are distinct and evenly
  spaced down to where ``rank=0.25`` cuts, then fall to a noise floor 100x lower, as real
  gradients' spectra decay;
* ``plateau``: the same gap at the cut, the kept singular values within 10% of each other;
* ``flat``: a Gaussian teacher, every singular value close to the next one.

Reported per run: the largest ``max |a - b| / max |b|`` over the parameters after 20 steps
against the reference, and kappa, ``sigma_1 / min (sigma_i - sigma_{i+1})`` over the kept
singular values (and the first one cut) of the reference's gradients at every refresh: the
factor by which a refresh can amplify a relative perturbation of the gradient.

Also measured, in this process on 8 CPU devices: the bytes that one jitted
``tensor_galore_adamw`` update communicates for a complex ``(64, 32, 16, 9)`` weight sharded on
its first axis (rank ``(16, 8, 8, 4)``), with both settings of ``shard_projected_axes``: every
step's collectives, the largest all-gather among them, and the refresh branch's.

Usage, from the repository root::

  python -m benchmarks.topology --out benchmarks/results/topology.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import re
import sys
import tempfile
import time

import jax
import numpy as np

from examples.scaling.launch import free_port, run_processes

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_multiprocess_worker.py"
# (processes, devices per process); the first is the reference.
TOPOLOGIES = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}
# What each rank keeps of the projected modes (32 input channels, 64 rows). At rank=1.0 no
# mode is cut, so no leaf is projected (Tensor-GaLore runs Adam on whole leaves): no kappa.
KEPT = {0.25: {"spectral": 8, "dense": 16}, 1.0: None}


def _launch(processes, devices, out, data, rank):
  out.mkdir(parents=True)
  port = free_port()
  commands = [
    [sys.executable, str(WORKER), "--process-id", str(i), "--num-processes", str(processes)]
    + ["--port", str(port), "--devices-per-process", str(devices), "--out", str(out)]
    + ["--train", "--data", data, "--rank", str(rank)]
    for i in range(processes)
  ]
  start = time.perf_counter()
  run_processes(commands, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  seconds = time.perf_counter() - start
  with np.load(out / "train.p0.npz") as saved:
    return {k: saved[k] for k in saved.files if k.endswith("/global")}, seconds


def _difference(run, reference, prefix):
  """The largest relative difference over the parameters under ``prefix``."""
  return max(
    float(np.max(np.abs(run[k] - v)) / np.max(np.abs(v)))
    for k, v in reference.items()
    if k.startswith(prefix)
  )


def _kappa(spectra, kept):
  """sigma_1 / the smallest gap between neighbours among the first ``kept + 1`` values."""
  top = spectra[:, : kept + 1]
  return float(np.max(top[:, 0] / np.min(-np.diff(top, axis=1), axis=1)))


def measure(data: str, rank: float, tmp: pathlib.Path) -> list[dict]:
  """Every topology against the reference, for one kind of data and one rank."""
  runs = {}
  for name, (processes, devices) in TOPOLOGIES.items():
    runs[name] = _launch(processes, devices, tmp / f"{data}-{rank}-{name}", data, rank)
  reference, _ = runs["1x1"]
  kappa = KEPT[rank] and max(
    _kappa(reference[f"['spectra']['{leaf}']/global"], kept) for leaf, kept in KEPT[rank].items()
  )
  rows = []
  for name, (arrays, seconds) in runs.items():
    if name == "1x1":
      continue
    rows.append(
      {
        "data": data,
        "rank": rank,
        "topology": name,
        "tensor_galore_adamw": _difference(arrays, reference, "['step20']['params']"),
        "adamw": _difference(arrays, reference, "['adamw20']"),
        "kappa": kappa,
        "seconds": round(seconds, 1),
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  return rows


def _collective_bytes(hlo: str) -> list[tuple[str, str, int]]:
  """``(computation, op, bytes)`` of every collective in compiled HLO text; the computation
  is ``ENTRY`` for the step itself, another name for a branch of a ``cond`` (the refresh)."""
  itemsize = {"f32": 4, "c64": 8, "f64": 8, "c128": 16, "s32": 4, "pred": 1, "bf16": 2}
  found, computation = [], None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
    m = re.search(
      r"= (\(.*?\)|\w+\[[\d,]*\]\S*) (all-gather|all-reduce|reduce-scatter|all-to-all)\(", line
    )
    if m:
      shapes = re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
      size = sum(
        itemsize.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in shapes
      )
      found.append((computation, m.group(2), size))
  return found


def collectives() -> list[dict]:
  """What one sharded update communicates, for both settings of ``shard_projected_axes``."""
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from tensor_galore_optax import TuckerSpec, optimizer_state_shardings, tensor_galore_adamw

  mesh = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  shapes = {"w": jax.ShapeDtypeStruct((64, 32, 16, 9), jnp.complex64)}
  shardings = {"w": NamedSharding(mesh, P("fsdp"))}
  tx = tensor_galore_adamw(1e-3, spec={"w": TuckerSpec(rank=(16, 8, 8, 4))})
  rows = []
  for shard_projected in (True, False):
    state_shardings = optimizer_state_shardings(
      tx, shapes, shardings, shard_projected_axes=shard_projected
    )
    update = jax.jit(
      tx.update,
      in_shardings=(shardings, state_shardings, shardings),
      out_shardings=(shardings, state_shardings),
    )
    hlo = update.lower(shapes, jax.eval_shape(tx.init, shapes), shapes).compile().as_text()
    found = _collective_bytes(hlo)
    step = [(op, size) for c, op, size in found if c == "ENTRY"]
    rows.append(
      {
        "shard_projected_axes": shard_projected,
        "gradient_bytes": 64 * 32 * 16 * 9 * 8,
        "every_step_bytes": sum(size for _, size in step),
        "largest_all_gather_bytes": max([s for op, s in step if op == "all-gather"] or [0]),
        "refresh_branch_bytes": sum(size for c, _, size in found if c != "ENTRY"),
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = [
    "| data | rank | topology vs 1x1 | tensor_galore_adamw | optax.adamw | ratio | kappa |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = r["tensor_galore_adamw"] / r["adamw"]
    kappa = "-" if r["kappa"] is None else f"{r['kappa']:.0f}"
    lines.append(
      f"| {r['data']} | {r['rank']} | {r['topology']} | {r['tensor_galore_adamw']:.1e} | "
      f"{r['adamw']:.1e} | {ratio:.{1 if ratio < 10 else 0}f}x | {kappa} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.topology", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--cases",
    default="gap:0.25,plateau:0.25,flat:0.25,flat:1.0",
    help="comma-separated DATA:RANK pairs",
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--collectives-only", action="store_true", help="skip the training runs")
  args = parser.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory(prefix="topology-") as tmp:
    for case in [] if args.collectives_only else args.cases.split(","):
      data, rank = case.split(":")
      rows += measure(data, float(rank), pathlib.Path(tmp))
  table = markdown(rows)
  print(table)
  # The subprocesses above set their own device counts; this process needs 8 devices.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 8)
  report = {
    "machine": f"{platform.machine()} CPU, jax {jax.__version__}",
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "results": rows,
    "table": table,
    "collectives": collectives(),
  }
  if args.out:
    args.out.write_text(json.dumps(report, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
