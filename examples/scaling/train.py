"""Trains the FNO with Tensor-GaLore on the devices of several processes, FSDP-sharded.

Every process runs this program; `jax.distributed.initialize` connects them, one mesh axis
spans every device of every process, each large weight (and its optimizer state, through
`optimizer_state_shardings`) is split along its first axis, and each process loads only its
rows of every global batch. Orbax checkpoints, written by all processes together, resume the
run where it stopped, on the same or another number of processes.

On one machine, ``--num-processes N`` starts N CPU processes of this program (gloo
collectives on the loopback)::

  python -m examples.scaling --num-processes 2 --checkpoint-dir /tmp/fno-scaling

On a cluster, start one process per host (or per GPU) with ``--cluster``, which lets
`jax.distributed.initialize` read the coordinator, the process count and this process's index
from the environment (SLURM, Open MPI, TPU pods and GKE are detected); the checkpoint directory
must be on a file system that every host sees::

  srun --ntasks-per-node=1 python -m examples.scaling --cluster --checkpoint-dir /shared/fno

The data: smooth random fields ``x`` on a periodic grid and ``y`` the heat equation's solution
from ``x`` at time 0.01, plus ``x**2 / 2`` (a nonlinear operator an FNO learns), generated from
``--seed`` by every process alike.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from examples.fno.model import FNO
from examples.scaling.launch import free_port, run_processes
from tensor_galore_optax import optimizer_state_shardings, tensor_galore_adamw


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m examples.scaling", description=__doc__.split("\n")[0])
  where = p.add_mutually_exclusive_group()
  where.add_argument(
    "--num-processes", type=int, default=1, help="start this many CPU processes here (default: 1)"
  )
  where.add_argument(
    "--cluster", action="store_true", help="one process of a cluster job: read the environment"
  )
  p.add_argument("--devices-per-process", type=int, default=1, help="CPU devices of each process")
  p.add_argument("--checkpoint-dir", type=pathlib.Path, required=True)
  p.add_argument("--checkpoint-every", type=int, default=50, help="steps (default: 50)")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch-size", type=int, default=16, help="the global batch (default: 16)")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--modes", type=int, default=12)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--rank", type=float, default=0.25)
  p.add_argument("--update-proj-gap", type=int, default=50)
  p.add_argument("--min-size", type=int, default=16_384, help="smallest weight projected")
  p.add_argument("--seed", type=int, default=0)
  # Set by --num-processes for the processes it starts.
  p.add_argument("--coordinator", help=argparse.SUPPRESS)
  p.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def make_data(seed: int, n: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` pairs of fields ``(n, resolution, resolution, 1)``: random smooth ``x``, and ``y``
  the heat equation's solution from ``x`` at time 0.01 plus ``x**2 / 2``."""
  rng = np.random.default_rng(seed)
  k = np.fft.fftfreq(resolution, 1 / resolution)
  k2 = k[:, None] ** 2 + k[None, :] ** 2
  spectrum = np.fft.fft2(rng.standard_normal((n, resolution, resolution))) / (1 + k2)
  x = np.fft.ifft2(spectrum).real
  x /= x.std()
  heat = np.fft.ifft2(np.fft.fft2(x) * np.exp(-0.01 * (2 * np.pi) ** 2 * k2)).real
  y = heat + 0.5 * x**2
  return x[..., None].astype(np.float32), y[..., None].astype(np.float32)


def fsdp_spec(shape, num_devices: int) -> P:
  """Split a weight along its first axis when that divides evenly; replicate the rest."""
  return P("fsdp") if len(shape) >= 2 and shape[0] % num_devices == 0 else P()


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.num_processes > 1 and args.process_id is None:
    return _start_processes(args, argv)
  if not args.cluster:  # a cluster's processes keep their own devices
    jax.config.update("jax_num_cpu_devices", args.devices_per_process)

  def make_model(seed):
    modes = (min(args.modes, args.resolution),) * 2
    return FNO(1, 1, modes=modes, width=args.width, n_layers=args.layers, rngs=nnx.Rngs(seed))

  # [several-hosts]
  # The optimizer, its shardings and its refresh are the same in every process.
  tx = tensor_galore_adamw(
    args.lr, rank=args.rank, update_proj_gap=args.update_proj_gap, min_size=args.min_size
  )
  if args.cluster:
    jax.distributed.initialize()  # SLURM, Open MPI, TPU, GKE: read from the environment
  elif args.process_id is not None:  # one of the processes --num-processes started
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  if args.batch_size % jax.device_count():
    raise SystemExit(
      f"--batch-size {args.batch_size} does not split over {jax.device_count()} devices"
    )

  mesh = Mesh(np.array(jax.devices()), ("fsdp",))  # every device of every process
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make_model(args.seed)))
  param_shardings = jax.tree.map(
    lambda a: NamedSharding(mesh, fsdp_spec(a.shape, mesh.size)), abstract
  )
  state_shardings = optimizer_state_shardings(tx, abstract, param_shardings)

  def train_step(params, opt_state, x, y):
    def loss_fn(params):
      pred = nnx.merge(graphdef, params)(x)
      return optax.l2_loss(pred, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads = optax.tree.conj(grads)  # complex weights: the descent direction
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(
    train_step,
    out_shardings=(param_shardings, state_shardings, NamedSharding(mesh, P())),
    donate_argnums=(0, 1),
  )

  # Every process opens the same directory (a shared file system across hosts) and writes its
  # own shards; a run restarts from the newest checkpoint, on any number of processes.
  manager = ocp.CheckpointManager(args.checkpoint_dir.absolute())
  start = manager.latest_step() or 0
  if start:
    target = {"params": abstract, "opt_state": jax.eval_shape(tx.init, abstract)}
    shardings = {"params": param_shardings, "opt_state": state_shardings}
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings
    )
    restored = manager.restore(start, args=ocp.args.StandardRestore(target))
    params, opt_state = restored["params"], restored["opt_state"]
  else:
    init_params = lambda: nnx.state(make_model(args.seed))
    params = jax.jit(init_params, out_shardings=param_shardings)()
    opt_state = jax.jit(tx.init, out_shardings=state_shardings)(params)

  # Each process loads only its rows of every global batch.
  batch_sharding = NamedSharding(mesh, P("fsdp"))
  rows = args.batch_size // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  x_all, y_all = make_data(args.seed, 8 * args.batch_size, args.resolution)
  for step in range(start, args.steps):
    order = np.random.default_rng([args.seed, step]).permutation(len(x_all))
    index = order[: args.batch_size][mine]  # the same batch whatever the process count
    x = jax.make_array_from_process_local_data(batch_sharding, x_all[index])
    y = jax.make_array_from_process_local_data(batch_sharding, y_all[index])
    params, opt_state, loss = train_step(params, opt_state, x, y)
    if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
      state = {"params": params, "opt_state": opt_state}
      manager.save(step + 1, args=ocp.args.StandardSave(state))
    if jax.process_index() == 0 and (step + 1) % 10 == 0:
      print(f"step {step + 1}: loss {float(loss):.6f}", flush=True)
  manager.wait_until_finished()
  # [/several-hosts]
  if jax.process_index() == 0:
    print(f"{jax.process_count()} process(es), {jax.device_count()} device(s); resumed at {start}")
  return 0


def _start_processes(args, argv) -> int:
  """Runs this program in ``--num-processes`` CPU processes on this machine."""
  argv = list(sys.argv[1:] if argv is None else argv)
  coordinator = f"127.0.0.1:{free_port()}"
  commands = [
    [sys.executable, "-m", "examples.scaling", *argv, "--coordinator", coordinator]
    + ["--process-id", str(i)]
    for i in range(args.num_processes)
  ]
  # `kill` stops the processes too: SystemExit runs `run_processes`'s clean-up.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  run_processes(commands, env={**os.environ, "JAX_PLATFORMS": "cpu"}, echo=0)
  return 0
