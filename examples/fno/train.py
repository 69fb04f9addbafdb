"""Trains a Fourier Neural Operator with AdamW, GaLore or Tensor-GaLore.

Run from the repository root::

  python examples/fno/train.py --optimizer tensor_galore --out runs/tg

The defaults generate (and cache) a 64 x 64 Navier-Stokes data set and train
the small FNO on it; ``--data FILE.npz`` trains on any file with ``x_train,
y_train, x_test, y_test``. The run writes ``metrics.json``, ``loss.png``,
``samples.png`` and per-epoch checkpoints (``--resume`` continues from the
latest) to ``--out``. See ``docs/fno.md``.

From Python, `train_and_evaluate` runs a `configs.Config` and returns the
metrics, and `make_train_step` builds the train step alone.
"""

from __future__ import annotations

import os

# On CPU, LAPACK (the factor refresh's eigh and QR) runs on OpenBLAS, whose worker
# threads spin against XLA's own threads: one LAPACK thread keeps a refresh cheap.
# Set before numpy and jax load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import tqdm  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from examples.fno import configs, data, losses, model, optimizers, plots  # noqa: E402
from tensor_galore_optax import (  # noqa: E402
  optimizer_state_bytes,
  optimizer_state_shardings,
  tree_bytes,
)

Config = configs.Config
# Every sample of a batch is split over both mesh axes: FSDP is data parallel
# too, it only shards the parameters as well.
BATCH_AXES = ("data", "fsdp")
LOSS_FNS = {"l2": losses.relative_lp, "h1": losses.relative_h1}


class Normalizer(NamedTuple):
  """Per-channel statistics of the training split, shaped ``(C,)``."""

  x_mean: jax.Array
  x_std: jax.Array
  y_mean: jax.Array
  y_std: jax.Array

  @classmethod
  def fit(cls, x: np.ndarray, y: np.ndarray) -> Normalizer:
    """Computes the mean and standard deviation of each channel of ``x`` and ``y``."""
    axes = (0, 1, 2)
    # A constant channel (e.g. a uniform coefficient) would divide by zero.
    std = lambda a: np.maximum(a.std(axes), 1e-6 * (np.abs(a).max(axes) + 1e-30))
    return cls(x.mean(axes), std(x), y.mean(axes), std(y))


def with_channels(a: np.ndarray) -> np.ndarray:
  """``(N, H, W)`` fields become ``(N, H, W, 1)``; ``(N, H, W, C)`` stay as they are."""
  return a[..., None] if a.ndim == 3 else a


def predict(graphdef: nnx.GraphDef, params: nnx.State, norm: Normalizer, x: jax.Array):
  """The model's prediction in the data's units: it sees and predicts normalised fields."""
  out = model.apply(graphdef, params, (x - norm.x_mean) / norm.x_std)
  return out * norm.y_std + norm.y_mean


def per_sample_rel_l2(pred: jax.Array, y: jax.Array) -> jax.Array:
  """``||pred - y|| / ||y||`` for each sample of a batch."""
  axes = tuple(range(1, y.ndim))
  return jnp.sqrt(jnp.sum((pred - y) ** 2, axes) / jnp.sum(y**2, axes))


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  norm: Normalizer,
  loss: str = "l2",
) -> Callable[[nnx.State, optax.OptState, jax.Array, jax.Array], tuple]:
  """Builds one optimisation step; jit it with the shardings of the run.

  Args:
    graphdef: The model structure, from ``nnx.split(model)``.
    optimizer: Any optax optimizer.
    norm: Input and output normalisation (see `Normalizer`).
    loss: ``"l2"`` or ``"h1"``: the relative loss on the prediction in the
      data's units, averaged over the batch.

  Returns:
    ``train_step(params, opt_state, x, y) -> (params, opt_state, loss)``.
  """
  loss_fn = LOSS_FNS[loss]

  def train_step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(lambda p: loss_fn(predict(graphdef, p, norm, x), y))(params)
    # For complex parameters (the spectral weights), jax.grad of a real loss
    # is the conjugate of the steepest-ascent direction: conjugate it so that
    # the optimizer descends.
    grads = optax.tree.conj(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, norm: Normalizer) -> Callable:
  """Builds ``eval_step(params, x, y) -> per-sample relative L2 errors``."""
  return lambda params, x, y: per_sample_rel_l2(predict(graphdef, params, norm, x), y)


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """One epoch of linear warm-up, then a cosine decay to 1% of ``config.lr``."""
  total = config.epochs * steps_per_epoch
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.lr,
    warmup_steps=min(steps_per_epoch, total // 2),
    decay_steps=total,
    end_value=0.01 * config.lr,
  )


def make_mesh(spec: str | None) -> Mesh:
  """Builds the ``("data", "fsdp")`` mesh described by ``"data=N[,fsdp=M]"``.

  Args:
    spec: The description, or ``None`` for one device.

  Returns:
    A mesh over the first ``N * M`` devices.

  Raises:
    ValueError: If ``spec`` is malformed or asks for more devices than exist.
  """
  sizes = {"data": 1, "fsdp": 1}
  for item in (spec or "").split(","):
    if not item:
      continue
    name, _, value = item.partition("=")
    if name not in sizes or not value.isdigit() or int(value) < 1:
      raise ValueError(f"invalid --mesh {spec!r}; expected data=N or data=N,fsdp=M")
    sizes[name] = int(value)
  count = sizes["data"] * sizes["fsdp"]
  devices = jax.devices()
  if count > len(devices):
    raise ValueError(f"--mesh {spec!r} needs {count} devices, but only {len(devices)} exist")
  return Mesh(np.array(devices[:count]).reshape(sizes["data"], sizes["fsdp"]), BATCH_AXES)


def param_sharding(mesh: Mesh, leaf, min_size: int) -> NamedSharding:
  """Shards a parameter of ``min_size`` entries or more over ``fsdp``, else replicates it.

  The sharded axis is the first one whose size the ``fsdp`` axis divides.
  """
  n = mesh.shape["fsdp"]
  if n > 1 and leaf.size >= min_size:
    for axis, size in enumerate(leaf.shape):
      if size % n == 0:
        return NamedSharding(mesh, P(*[None] * axis, "fsdp"))
  return NamedSharding(mesh, P())


class Run(NamedTuple):
  """Everything a run builds before its first step."""

  graphdef: nnx.GraphDef
  params: nnx.State
  optimizer: optax.GradientTransformation
  rank: float | int | None
  param_shardings: Any
  state_shardings: Any


def build_optimizer(
  config: Config, params: Any, schedule: optax.ScalarOrSchedule
) -> tuple[optax.GradientTransformation, float | int | None]:
  """Makes ``config.optimizer``, resolving its rank.

  Args:
    config: The run's settings.
    params: The parameters, arrays or shape structs (for GaLore's matched rank).
    schedule: The learning rate.

  Returns:
    The optimizer and its rank (``None`` for AdamW).
  """
  kwargs = dict(
    weight_decay=config.weight_decay,
    update_proj_gap=config.update_proj_gap,
    moment_policy=config.moment_policy,
    refresh_method=config.refresh_method,
  )
  rank = config.rank
  if config.optimizer == "adamw":
    rank = None
  elif rank is None and config.optimizer == "tensor_galore":
    rank = config.tensor_rank
  elif rank is None:
    target = optimizer_state_bytes(
      optimizers.make_optimizer("tensor_galore", schedule, rank=config.tensor_rank, **kwargs),
      params,
    )
    rank = optimizers.matched_galore_rank(params, target, **kwargs)
  return optimizers.make_optimizer(config.optimizer, schedule, rank=rank, **kwargs), rank


def model_config(config: Config) -> model.FNOConfig:
  """The preset with the ``modes`` and ``width`` overrides of ``config``."""
  preset = model.PRESETS[config.preset]
  overrides = {}
  if config.modes is not None:
    overrides["modes"] = (config.modes, config.modes)
  if config.width is not None:
    overrides["width"] = config.width
  return dataclasses.replace(preset, **overrides)


def load_data(config: Config) -> data.Dataset:
  """Reads ``config.data``, or generates (and caches) a ``config.pde`` data set."""
  if config.data is not None:
    return data.load_dataset(config.data)
  return data.load_or_generate(
    config.pde,
    n_train=config.n_train,
    n_test=config.n_test,
    resolution=config.resolution,
    verbose=config.progress,
  )


def check_config(config: Config) -> None:
  """Raises ``ValueError`` on invalid settings, before any data is loaded."""
  if config.optimizer not in configs.OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {configs.OPTIMIZERS}")
  if config.loss not in LOSS_FNS:
    raise ValueError(f"unknown loss {config.loss!r}; choose from {tuple(LOSS_FNS)}")
  for name in ("epochs", "batch_size", "eval_batch_size", "update_proj_gap"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
  if config.lr <= 0:
    raise ValueError(f"lr must be positive, got {config.lr}")


def check_data(config: Config, ds: data.Dataset, mesh: Mesh) -> None:
  """Raises ``ValueError`` if ``config`` cannot train on ``ds`` over ``mesh``."""
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  if x_train.shape[-1] != x_test.shape[-1] or y_train.shape[-1] != y_test.shape[-1]:
    raise ValueError(
      f"train and test channels differ: x {x_train.shape[-1]} vs {x_test.shape[-1]}, "
      f"y {y_train.shape[-1]} vs {y_test.shape[-1]}"
    )
  if config.batch_size > len(x_train):
    raise ValueError(f"batch_size {config.batch_size} exceeds the {len(x_train)} train samples")
  shards = math.prod(mesh.shape.values())
  for name in ("batch_size", "eval_batch_size"):
    if getattr(config, name) % shards:
      raise ValueError(f"{name} {getattr(config, name)} is not divisible by the {shards} devices")


def build(config: Config, ds: data.Dataset, mesh: Mesh, schedule: optax.Schedule) -> Run:
  """Initialises the model and optimizer with their shardings on ``mesh``."""
  x_train, y_train = with_channels(ds.x_train), with_channels(ds.y_train)
  fno = model_config(config)

  def make(key):
    return fno.make(
      x_train.shape[-1],
      y_train.shape[-1],
      resolution=x_train.shape[1:3],
      remat=config.remat,
      rngs=nnx.Rngs(key),
    )

  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(0)))
  param_shardings = jax.tree.map(
    lambda leaf: param_sharding(mesh, leaf, config.fsdp_min_size), abstract
  )
  # One compilation for the whole initialisation, rather than one per eager
  # random draw, placed directly with the parameters' shardings.
  params = jax.jit(lambda key: nnx.split(make(key))[1], out_shardings=param_shardings)(
    jax.random.key(config.seed)
  )
  optimizer, rank = build_optimizer(config, abstract, schedule)
  state_shardings = optimizer_state_shardings(optimizer, abstract, param_shardings)
  return Run(graphdef, params, optimizer, rank, param_shardings, state_shardings)


def evaluate(eval_step, params, x: np.ndarray, y: np.ndarray, batch_size: int, sharding) -> float:
  """Mean per-sample relative L2 error over a split.

  The last batch is padded by repeating its last sample, so that every batch
  has the same shape (one compilation); padded errors are dropped.
  """
  errors = []
  for start in range(0, len(x), batch_size):
    index = np.minimum(np.arange(start, start + batch_size), len(x) - 1)
    batch = jax.device_put((x[index], y[index]), sharding)
    errors.append(np.asarray(eval_step(params, *batch))[: len(x) - start])
  return float(np.mean(np.concatenate(errors)))


def identity_rel_l2(x: np.ndarray, y: np.ndarray) -> float | None:
  """Error of predicting ``y = x`` (with a 1-channel ``x`` broadcast); ``None`` if undefined."""
  if x.shape[1:3] != y.shape[1:3] or x.shape[-1] not in (1, y.shape[-1]):
    return None
  axes = (1, 2, 3)
  err = np.sqrt(np.sum((x - y) ** 2, axes) / np.sum(y**2, axes))
  return float(np.mean(err))


def checkpoint_manager(out: pathlib.Path) -> ocp.CheckpointManager:
  """Keeps the last two epochs' checkpoints in ``out/checkpoints``."""
  return ocp.CheckpointManager(
    (out / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def save_checkpoint(manager, epoch: int, params, opt_state, rng: jax.Array, history: list):
  """Saves the training state after ``epoch``; the history goes alongside as JSON."""
  state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng)}
  manager.save(
    epoch,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)),
  )


def restore_checkpoint(manager, params, opt_state, rng: jax.Array) -> tuple:
  """Restores the latest checkpoint onto the shardings of the given state.

  Args:
    manager: The run's checkpoint manager, holding at least one checkpoint.
    params: Freshly initialised parameters: their shapes, dtypes and
      shardings are those of the restored ones.
    opt_state: Likewise for the optimizer state.
    rng: Likewise for the shuffling key.

  Returns:
    ``(epoch, params, opt_state, rng, history)`` as saved after ``epoch``.
  """
  epoch = manager.latest_step()
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
    {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng)},
  )
  restored = manager.restore(
    epoch,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
    ),
  )
  state = restored.state
  return (
    epoch,
    state["params"],
    state["opt_state"],
    jax.random.wrap_key_data(state["rng"]),
    restored.history,
  )


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains and evaluates a model, writing metrics, plots and checkpoints.

  Args:
    config: The run's settings.

  Returns:
    The metrics, as written to ``config.out/metrics.json``.

  Raises:
    ValueError: On invalid settings or data (the message says which).
  """
  start_time = time.perf_counter()
  out = pathlib.Path(config.out)
  check_config(config)
  mesh = make_mesh(config.mesh)
  ds = load_data(config)
  check_data(config, ds, mesh)
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  norm = Normalizer.fit(x_train, y_train)

  steps_per_epoch = len(x_train) // config.batch_size
  schedule = make_schedule(config, steps_per_epoch)
  run = build(config, ds, mesh, schedule)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  train_step = jax.jit(
    make_train_step(run.graphdef, run.optimizer, norm, config.loss),
    in_shardings=(run.param_shardings, run.state_shardings, batch_sharding, batch_sharding),
    out_shardings=(run.param_shardings, run.state_shardings, replicated),
  )
  eval_step = jax.jit(make_eval_step(run.graphdef, norm), out_shardings=replicated)

  def evaluate_split(params, x, y):
    return evaluate(eval_step, params, x, y, config.eval_batch_size, batch_sharding)

  params = run.params
  opt_state = jax.jit(run.optimizer.init, out_shardings=run.state_shardings)(params)
  rng = jax.random.key(config.seed + 1)
  last_epoch, history = 0, []

  manager = checkpoint_manager(out)
  if not config.resume:
    # A fresh run owns its directory: stale checkpoints would be resumed later.
    for step in manager.all_steps():
      manager.delete(step)
  elif manager.latest_step() is not None:
    last_epoch, params, opt_state, rng, history = restore_checkpoint(
      manager, params, opt_state, rng
    )
    print(f"resumed from epoch {last_epoch} in {manager.directory}")

  step_times = []
  for epoch in range(last_epoch + 1, config.epochs + 1):
    epoch_start = time.perf_counter()
    rng, key = jax.random.split(rng)
    order = np.asarray(jax.random.permutation(key, len(x_train)))
    epoch_losses = []
    bar = tqdm.trange(
      steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress
    )
    for i in bar:
      index = order[i * config.batch_size : (i + 1) * config.batch_size]
      x, y = jax.device_put((x_train[index], y_train[index]), batch_sharding)
      step_start = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, x, y)
      loss = float(loss)
      step_times.append(time.perf_counter() - step_start)
      epoch_losses.append(loss)
      bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{config.batch_size / step_times[-1]:.1f}")
    test_error = evaluate_split(params, x_test, y_test)
    history.append(
      dict(
        epoch=epoch,
        train_loss=float(np.mean(epoch_losses)),
        test_rel_l2=test_error,
        seconds=time.perf_counter() - epoch_start,
      )
    )
    print(
      f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, test rel L2 {test_error:.4f}"
    )
    save_checkpoint(manager, epoch, params, opt_state, rng, history)
  manager.wait_until_finished()
  manager.close()

  # The first step of this process compiles; the rest time the step itself.
  timed = step_times[1:] or step_times
  metrics = dict(
    test_rel_l2=evaluate_split(params, x_test, y_test),
    train_rel_l2=evaluate_split(params, x_train, y_train),
    identity_rel_l2=identity_rel_l2(x_test, y_test),
    optimizer=config.optimizer,
    rank=run.rank,
    optimizer_state_bytes=optimizer_state_bytes(run.optimizer, params),
    # What AdamW would hold for the same parameters, from shapes alone.
    adamw_state_bytes=optimizer_state_bytes(optax.adamw(1e-3), params),
    params_bytes=tree_bytes(params),
    n_params=model.count_params(params),
    step_seconds=statistics.median(timed) if timed else None,
    samples_per_second=config.batch_size / statistics.median(timed) if timed else None,
    epochs=config.epochs,
    history=history,
    wall_seconds=time.perf_counter() - start_time,
    devices=math.prod(mesh.shape.values()),
    config=dataclasses.asdict(config),
  )
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  plots.plot_history(history, out / "loss.png", identity=metrics["identity_rel_l2"])
  n_show = min(3, len(x_test))
  pred = jax.jit(lambda p, x: predict(run.graphdef, p, norm, x), out_shardings=replicated)(
    params, jax.device_put(x_test[:n_show], replicated)
  )
  plots.plot_samples(x_test[:n_show], y_test[:n_show], np.asarray(pred), out / "samples.png")
  mb = lambda b: f"{b / 1e6:.2f} MB"
  print(
    f"test rel L2 {metrics['test_rel_l2']:.4f} (identity {metrics['identity_rel_l2']}), "
    f"train rel L2 {metrics['train_rel_l2']:.4f}, {metrics['wall_seconds']:.0f} s\n"
    f"{config.optimizer} optimizer state {mb(metrics['optimizer_state_bytes'])}: "
    f"{metrics['optimizer_state_bytes'] / metrics['adamw_state_bytes']:.2f}x AdamW's "
    f"{mb(metrics['adamw_state_bytes'])}; wrote {out}"
  )
  return metrics


def parser() -> argparse.ArgumentParser:
  """The command-line parser: one flag per `configs.Config` field."""
  p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
  configs.add_arguments(p)
  return p


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; bad input exits with status 2 and a message on stderr."""
  p = parser()
  config = configs.from_args(p.parse_args(argv))
  try:
    train_and_evaluate(config)
  except ValueError as e:
    p.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
