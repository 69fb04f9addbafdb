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
* ``plateau``: the same gap at the cut, the kept singular values all nearly equal;
* ``flat``: a Gaussian teacher, every singular value close to the next one.

Reported per run: the largest ``max |a - b| / max |b|`` over the parameters after 20 steps
against the reference, and kappa, ``sigma_1 / min (sigma_i - sigma_{i+1})`` over the kept
singular values (and the first one cut) of the reference's gradients at every refresh: the
factor by which a refresh can amplify a relative perturbation of the gradient.

Usage, from the repository root::

  python -m benchmarks.topology --out benchmarks/results/topology.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
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
# mode is cut, so no leaf is projected: Tensor-GaLore runs AdamW on whole leaves.
KEPT = {0.25: {"spectral": 8, "dense": 16}, 1.0: {"spectral": 32, "dense": 64}}


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
  kappa = max(
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


def markdown(rows: list[dict]) -> str:
  lines = [
    "| data | rank | topology vs 1x1 | tensor_galore_adamw | optax.adamw | ratio | kappa |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = r["tensor_galore_adamw"] / r["adamw"]
    lines.append(
      f"| {r['data']} | {r['rank']} | {r['topology']} | {r['tensor_galore_adamw']:.1e} | "
      f"{r['adamw']:.1e} | {ratio:.0f}x | {r['kappa']:.0f} |"
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
  args = parser.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory(prefix="topology-") as tmp:
    for case in args.cases.split(","):
      data, rank = case.split(":")
      rows += measure(data, float(rank), pathlib.Path(tmp))
  table = markdown(rows)
  print(table)
  if args.out:
    machine = f"{platform.machine()} CPU, jax {jax.__version__}"
    xla_flags = os.environ.get("XLA_FLAGS", "")
    report = {"machine": machine, "xla_flags": xla_flags, "results": rows, "table": table}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
