"""One process of a multi-process FSDP training run, for tests/test_multiprocess.py.

Run as a script, once per process (each with its ``--process-id``)::

  python tests/_multiprocess_worker.py --process-id 0 --num-processes 2 --port 12345 \
    --out DIR --train

``--num-processes 1`` runs alone, without `jax.distributed`. benchmarks/topology.py runs the
same script.

The problem: an FNO-like parameter tree (a complex ``(32, 32, 8, 5)`` spectral weight, a
``(64, 128)`` matrix and a bias), FSDP-sharded over one mesh axis that spans every device of
every process, learns a teacher from a global batch of which each process loads its rows.
``--data gap`` gives gradients whose singular values along the projected modes are distinct
and end in a clear gap where ``rank=0.25`` cuts, as real gradients' spectra decay; ``--data
plateau`` the same gap below kept singular values within 10% of each other; ``--data flat`` a
flat spectrum, all singular values nearly equal.

What runs, in this order, each part writing ``DIR/<part>.p<process id>.npz``:

* ``--train``: 20 steps of ``tensor_galore_adamw`` from scratch, with an orbax checkpoint at
  step 10 in ``DIR/checkpoint``; then 20 steps of ``optax.adamw`` from the same start. Saves
  the Tensor-GaLore state at steps 10 and 20, every step's loss, the gradients' spectra at
  every refresh and the AdamW parameters at step 20.
* ``--restore PATH``: restores a checkpoint onto this run's shardings and saves it.
* ``--resume PATH``: restores a checkpoint of step 10 and trains to step 20.

Every array is saved whole (gathered from all processes) and as this process's own first
shard, which for a replicated array is this process's copy of it.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tensor_galore_optax import optimizer_state_shardings, tensor_galore_adamw

STEPS = 20
CHECKPOINT_STEP = 10
GAP = 4  # refreshes at steps 0, 4, 8, 12 and 16: a resume from step 10 crosses two
GLOBAL_BATCH = 256
LEARNING_RATE = 1e-2
SHAPES = {"spectral": (32, 32, 8, 5), "dense": (64, 128), "bias": (64,)}
# The rank of the "gap" teacher along the modes that rank=0.25 projects: 8 of the spectral
# weight's 32 input channels (axis 0), 16 of the matrix's 64 rows (axis 0).
TEACHER_RANK = {"spectral": 8, "dense": 16}

_START = time.monotonic()


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--num-processes", type=int, required=True)
  parser.add_argument("--port", type=int, help="the coordinator's port on 127.0.0.1")
  parser.add_argument("--devices-per-process", type=int, default=1)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--train", action="store_true")
  parser.add_argument("--restore", type=pathlib.Path, metavar="PATH")
  parser.add_argument("--resume", type=pathlib.Path, metavar="PATH")
  parser.add_argument("--data", choices=("gap", "plateau", "flat"), default="gap")
  parser.add_argument("--rank", type=float, default=0.25)
  return parser.parse_args(argv)


def _log(args, message):
  print(
    f"[process {args.process_id}/{args.num_processes}, {time.monotonic() - _START:5.1f} s] "
    f"{message}",
    flush=True,
  )


def main(argv=None):
  args = _parse(argv)
  # Set here, whatever the parent process configured: the CPU backend, this many devices.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", args.devices_per_process)
  # Both optimizers are built before `jax.distributed.initialize`, which must run before the
  # XLA backend starts: building them must not start it.
  galore = tensor_galore_adamw(
    LEARNING_RATE, rank=args.rank, update_proj_gap=GAP, min_size=4096, weight_decay=1e-4
  )
  adamw = optax.adamw(LEARNING_RATE, weight_decay=1e-4)
  if args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=60,
    )
  assert jax.process_count() == args.num_processes, jax.process_count()
  _log(args, f"{jax.device_count()} devices, {jax.local_device_count()} of them local")
  run = _Run(args, galore, adamw)
  if args.train:
    run.train()
  if args.restore:
    run.restore(args.restore)
  if args.resume:
    run.resume(args.resume)
  _log(args, "done")


class _Run:
  """The mesh, shardings, data and jitted steps of one process."""

  def __init__(self, args, galore, adamw):
    self.args, self.galore, self.adamw = args, galore, adamw
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))  # every device of every process
    fsdp, replicated = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P())
    self.param_shardings = {"spectral": fsdp, "dense": fsdp, "bias": replicated}
    self.abstract_params = jax.eval_shape(_init_params)
    self.state_shardings = {
      name: optimizer_state_shardings(tx, self.abstract_params, self.param_shardings)
      for name, tx in (("galore", galore), ("adamw", adamw))
    }
    self.steps = {
      name: jax.jit(
        _make_step(tx),
        out_shardings=(self.param_shardings, self.state_shardings[name], replicated),
      )
      for name, tx in (("galore", galore), ("adamw", adamw))
    }
    self.batch = self._load_batch(fsdp)
    self.checkpointer = ocp.StandardCheckpointer()

  def _load_batch(self, batch_sharding):
    """This process's rows of the global batch, assembled into global arrays."""
    rows = GLOBAL_BATCH // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    local = jax.tree.map(lambda a: a[mine], _global_batch(self.args.data))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(batch_sharding, a), local)

  def _init(self, name):
    tx = self.galore if name == "galore" else self.adamw
    params = jax.jit(_init_params, out_shardings=self.param_shardings)()
    return params, jax.jit(tx.init, out_shardings=self.state_shardings[name])(params)

  def _train(self, name, params, state, start, stop, losses, spectra=None):
    for step in range(start, stop):
      if spectra is not None and step % GAP == 0:
        spectra.append(jax.jit(_spectra)(params, self.batch))
      params, state, loss = self.steps[name](params, state, self.batch)
      losses.append(float(loss))
    return params, state

  def _save(self, part, results):
    path = self.args.out / f"{part}.p{self.args.process_id}.npz"
    np.savez(path, **_flatten(results))
    _log(self.args, f"{part}: saved {path.name}")

  def train(self):
    params, state = self._init("galore")
    losses, spectra = [], []
    params, state = self._train("galore", params, state, 0, CHECKPOINT_STEP, losses, spectra)
    _log(self.args, f"train: step {CHECKPOINT_STEP}")
    step10 = {"params": params, "opt_state": state}
    self.checkpointer.save(self.args.out / "checkpoint", step10)
    self.checkpointer.wait_until_finished()
    _log(self.args, "train: checkpoint written")
    params, state = self._train("galore", params, state, CHECKPOINT_STEP, STEPS, losses, spectra)
    _log(self.args, f"train: step {STEPS}")
    adamw_params, _ = self._train("adamw", *self._init("adamw"), 0, STEPS, [])
    _log(self.args, f"train: AdamW, step {STEPS}")
    self._save(
      "train",
      {
        "step10": step10,
        "step20": {"params": params, "opt_state": state},
        "losses": np.array(losses),
        "spectra": jax.tree.map(lambda *s: jnp.stack(s), *spectra),
        "adamw20": adamw_params,
      },
    )

  def _restored(self, path):
    """The checkpoint at ``path``, placed with this run's shardings as it is read."""
    abstract = {
      "params": self.abstract_params,
      "opt_state": jax.eval_shape(self.galore.init, self.abstract_params),
    }
    shardings = {"params": self.param_shardings, "opt_state": self.state_shardings["galore"]}
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return self.checkpointer.restore(path, target)

  def restore(self, path):
    self._save("restore", self._restored(path))

  def resume(self, path):
    restored, losses = self._restored(path), []
    params, state = self._train(
      "galore", restored["params"], restored["opt_state"], CHECKPOINT_STEP, STEPS, losses
    )
    self._save(
      "resume", {"step20": {"params": params, "opt_state": state}, "losses": np.array(losses)}
    )


def _spectra(params, batch):
  """Singular values of each projected gradient's unfolding along its projected mode."""
  grads = jax.grad(_loss)(params, batch)
  return {
    name: jnp.linalg.svd(grads[name].reshape(grads[name].shape[0], -1), compute_uv=False)
    for name in TEACHER_RANK
  }


def _flatten(results):
  """``{"<path>/global": whole array, "<path>/local": this process's first shard}``."""

  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(results)[0]:
    key = jax.tree_util.keystr(path)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      flat[f"{key}/global"] = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    else:
      flat[f"{key}/global"] = np.asarray(leaf)
    if isinstance(leaf, jax.Array):
      flat[f"{key}/local"] = np.asarray(leaf.addressable_shards[0].data)
  return flat


def _complex_normal(rng, shape):
  return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _orthonormal(rng, n, r, cplx):
  a = _complex_normal(rng, (n, r)) if cplx else rng.standard_normal((n, r))
  return np.linalg.qr(a)[0]


def _teachers(data):
  """The weights the model learns, as seen along the projected modes.

  "gap": rank ``TEACHER_RANK`` there, with singular values ``r, r - 1, ..., 1`` (times a
  scale): distinct, evenly spaced, then nothing, so that neither the subspace nor any basis
  vector inside it is ill-conditioned. "plateau": the same rank, its singular values evenly
  spaced from 1 down to 0.9: the subspace is well defined, the basis inside it is not.
  "flat": a Gaussian teacher, whose singular values are all close to each other.
  """
  rng = np.random.default_rng(1)
  teachers = {}
  for name, cplx in (("spectral", True), ("dense", False)):
    shape = SHAPES[name]
    rows, cols = shape[0], int(np.prod(shape[1:]))
    if data in ("gap", "plateau"):
      r = TEACHER_RANK[name]
      u, v = _orthonormal(rng, rows, r, cplx), _orthonormal(rng, cols, r, cplx)
      singular_values = np.arange(r, 0, -1) if data == "gap" else np.linspace(1, 0.9, r)
      unfolded = (u * singular_values) @ v.conj().T
    else:
      unfolded = _complex_normal(rng, (rows, cols)) if cplx else rng.standard_normal((rows, cols))
    # Entries of standard deviation 4 for both kinds of data: the 20 steps of size 1e-2
    # leave the smallest singular value of the "gap" residual well above its tail.
    unfolded *= 4 * np.sqrt(unfolded.size) / np.linalg.norm(unfolded)
    teachers[name] = unfolded.reshape(shape).astype(np.complex64 if cplx else np.float32)
  teachers["bias"] = rng.standard_normal(SHAPES["bias"]).astype(np.float32)
  return teachers


def _global_batch(data):
  """The whole batch, generated identically by every process, which then keeps its rows.

  Inputs are centred and whitened (zero mean, ``x^T x = batch * I``), so that a weight's
  gradient is its residual ``W - T`` itself: its spectrum is the teacher's, not the sample
  covariance's, and the bias's gradient adds no direction to the matrix's.
  """
  rng = np.random.default_rng(2)

  def inputs(n):
    x = rng.standard_normal((GLOBAL_BATCH, n))
    x = np.linalg.qr(x - x.mean(axis=0))[0]  # columns orthonormal and orthogonal to ones
    return (np.sqrt(GLOBAL_BATCH) * x).astype(np.float32)

  batch = {"x_spectral": inputs(SHAPES["spectral"][0]), "x_dense": inputs(SHAPES["dense"][1])}
  return {**batch, **_predict(_teachers(data), batch, np)}


def _predict(params, batch, xp):
  return {
    "y_spectral": xp.einsum(
      "bi,iojk->bojk", batch["x_spectral"].astype(params["spectral"].dtype), params["spectral"]
    ),
    "y_dense": batch["x_dense"] @ params["dense"].T + params["bias"],
  }


def _init_params():
  """Small random weights: the first gradients are the teachers' own spectra."""

  k1, k2 = jax.random.split(jax.random.key(0))
  spectral = jax.random.normal(k1, SHAPES["spectral"], jnp.complex64)
  return {
    "spectral": 0.01 * spectral,
    "dense": 0.01 * jax.random.normal(k2, SHAPES["dense"]),
    "bias": jnp.zeros(SHAPES["bias"]),
  }


def _loss(params, batch):

  pred = _predict(params, batch, jnp)
  return sum(jnp.mean(jnp.abs(pred[k] - batch[k]) ** 2) for k in ("y_spectral", "y_dense"))


def _make_step(tx):

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(_loss)(params, batch)
    grads = optax.tree.conj(grads)  # complex weights: the descent direction
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step


if __name__ == "__main__":
  main()
