"""Training and evaluation of the FNO example: the library behind ``python -m examples.fno``.

`train_and_evaluate` runs a `configs.Config`: it generates (and caches) a
Navier-Stokes or Darcy data set, or reads ``config.data``, trains the model,
and writes ``metrics.json``, ``loss.png``, ``samples.png`` and per-epoch
checkpoints (``resume`` continues from the latest) to ``config.out``. The
steps themselves are in `examples.fno.steps`. See ``docs/fno.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from examples.fno import configs, data, losses, model, optimizers, plots, steps
from tensor_galore_optax import (
  optimizer_state_bytes,
  optimizer_state_shardings,
  projection_plan,
  tree_bytes,
)

Config = configs.Config
ConfigError = configs.ConfigError
# Every sample of a batch is split over both mesh axes: FSDP is data parallel
# too, it only shards the parameters as well.
BATCH_AXES = ("data", "fsdp")


def with_channels(a: np.ndarray) -> np.ndarray:
  """``(N, H, W)`` fields become ``(N, H, W, 1)``; ``(N, H, W, C)`` stay as they are."""
  return a[..., None] if a.ndim == 3 else a


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
    ConfigError: If ``spec`` is malformed or asks for more devices than exist.
  """
  sizes = {"data": 1, "fsdp": 1}
  for item in (spec or "").split(","):
    if not item:
      continue
    name, _, value = item.partition("=")
    if name not in sizes or not value.isdigit() or int(value) < 1:
      raise ConfigError(f"invalid --mesh {spec!r}; expected data=N or data=N,fsdp=M")
    sizes[name] = int(value)
  count = sizes["data"] * sizes["fsdp"]
  devices = jax.devices()
  if count > len(devices):
    raise ConfigError(f"--mesh {spec!r} needs {count} devices, but only {len(devices)} exist")
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
  """Makes ``config.optimizer``, resolving its rank (see `optimizers.build`).

  Args:
    config: The run's settings.
    params: The parameters, arrays or shape structs (for GaLore's matched rank).
    schedule: The learning rate.

  Returns:
    The optimizer and its rank (``None`` for AdamW).

  Raises:
    ConfigError: If the optimizer rejects the settings.
  """
  try:
    return optimizers.build(
      config.optimizer,
      schedule,
      params,
      rank=config.rank,
      tensor_rank=config.tensor_rank,
      weight_decay=config.weight_decay,
      update_proj_gap=config.update_proj_gap,
      moment_policy=config.moment_policy,
      refresh_method=config.refresh_method,
      residual_scale=config.residual_scale,
      projection=config.projection,
      scale=config.scale,
    )
  except (TypeError, ValueError) as e:
    # The factories check their static arguments before building anything.
    raise ConfigError(str(e)) from e


def model_config(config: Config) -> Any:
  """The preset with the ``modes`` and ``width`` overrides of ``config``.

  Raises:
    ConfigError: For ``modes`` of a model without Fourier modes.
  """
  preset = configs.PRESETS[config.preset]
  overrides = {}
  if config.modes is not None:
    if not isinstance(preset, model.FNOConfig):
      raise ConfigError(f"--modes applies to the FNO presets, not to --preset {config.preset}")
    overrides["modes"] = (config.modes, config.modes)
  if config.width is not None:
    overrides["width"] = config.width
  return dataclasses.replace(preset, **overrides)


def model_recipe(config: Config) -> dict[str, Any]:
  """How ``config`` trades compute for memory, as keyword arguments of `model.FNO`."""
  return {
    "remat": config.remat,
    "remat_policy": config.remat_policy,
    "scan_layers": config.scan_layers,
    "pointwise_chunk": config.pointwise_chunk,
    "dtype": jnp.dtype(config.activation_dtype),
  }


def load_data(config: Config) -> data.Dataset:
  """Reads ``config.data``, or generates (and caches) a ``config.pde`` data set.

  Raises:
    ConfigError: If the file is missing or invalid, or the data cannot be
      generated with these settings.
  """
  try:
    if config.data is not None:
      return data.load_dataset(config.data)
    return data.load_or_generate(
      config.pde,
      n_train=config.n_train,
      n_test=config.n_test,
      resolution=config.resolution,
      verbose=config.progress,
    )
  except ValueError as e:
    raise ConfigError(str(e)) from e


def check_out(config: Config) -> None:
  """Refuses to start a fresh run over a finished or interrupted one in ``config.out``.

  Raises:
    ConfigError: If ``config.out`` holds checkpoints or ``metrics.json`` and
      neither ``resume`` nor ``overwrite`` is set.
  """
  out = pathlib.Path(config.out)
  checkpoints = out / "checkpoints"
  has_run = (out / "metrics.json").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))
  if has_run and not (config.resume or config.overwrite):
    raise ConfigError(
      f"--out {out} already holds a run (checkpoints or metrics.json): pass --resume to "
      "continue it, --overwrite to replace it, or another --out"
    )


def check_config(config: Config) -> None:
  """Checks all of ``config`` that needs no data: its settings (`configs.validate`), its ``out``.

  Raises:
    ConfigError: Saying what is wrong.
  """
  configs.validate(config)
  if config.scan_layers and config.optimizer == "tensor_galore_defaults":
    raise ConfigError(
      "--scan-layers stacks the spectral weights on a layer axis, which the library's defaults "
      "would project as a mode: use another --optimizer with it"
    )
  if not isinstance(model_config(config), model.FNOConfig):
    if optimizers.spectral_only(config.optimizer):
      raise ConfigError(
        f"--optimizer {config.optimizer} projects spectral weights only, and --preset "
        f"{config.preset} has none: use adamw or tensor_galore_defaults"
      )
    recipe = ("remat", "scan_layers", "pointwise_chunk")
    asked = [configs.flag(k) for k in recipe if getattr(config, k)]
    asked += ["--activation-dtype"] if config.activation_dtype != "float32" else []
    if asked:
      raise ConfigError(f"--preset {config.preset} has no memory recipe: drop {' '.join(asked)}")
  check_out(config)


def check_data(config: Config, ds: data.Dataset, mesh: Mesh) -> None:
  """Raises `ConfigError` if ``config`` cannot train on ``ds`` over ``mesh``."""
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  if x_train.shape[-1] != x_test.shape[-1] or y_train.shape[-1] != y_test.shape[-1]:
    raise ConfigError(
      f"train and test channels differ: x {x_train.shape[-1]} vs {x_test.shape[-1]}, "
      f"y {y_train.shape[-1]} vs {y_test.shape[-1]}"
    )
  if config.batch_size > len(x_train):
    raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(x_train)} train samples")
  shards = math.prod(mesh.shape.values())
  for name in ("batch_size", "eval_batch_size"):
    if getattr(config, name) % shards:
      raise ConfigError(
        f"{configs.flag(name)} {getattr(config, name)} is not divisible by the {shards} devices"
      )


def build(config: Config, ds: data.Dataset, mesh: Mesh, schedule: optax.Schedule) -> Run:
  """Initialises the model and optimizer with their shardings on ``mesh``."""
  x_train, y_train = with_channels(ds.x_train), with_channels(ds.y_train)
  fno = model_config(config)

  def make(key):
    return fno.make(
      x_train.shape[-1],
      y_train.shape[-1],
      resolution=x_train.shape[1:3],
      rngs=nnx.Rngs(key),
      **model_recipe(config),
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
  return float(losses.relative_lp(x, y))


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
  try:
    restored = manager.restore(
      epoch,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
      ),
    )
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(
      f"--resume: the checkpoint of epoch {epoch} in {manager.directory} does not hold this "
      "run's parameters and optimizer state (another optimizer or model setting, or a "
      "tensor_galore_optax release with another state layout); resume with the settings it "
      f"was written with, or pass --overwrite to start again. Restoring it said: {e}"
    ) from e
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
    ConfigError: On invalid settings or data, before training starts (the
      message says which). Errors during training propagate as they are.
  """
  start_time = time.perf_counter()
  out = pathlib.Path(config.out)
  check_config(config)
  mesh = make_mesh(config.mesh)
  ds = load_data(config)
  check_data(config, ds, mesh)
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  norm = steps.Normalizer.fit(x_train, y_train)

  steps_per_epoch = len(x_train) // config.batch_size
  schedule = make_schedule(config, steps_per_epoch)
  run = build(config, ds, mesh, schedule)
  if run.rank is not None:  # what the optimizer keeps of each projected leaf, before training
    params = nnx.to_pure_dict(run.params)
    spec = optimizers.spec(config.optimizer, run.rank, config.projection)
    print(projection_plan(params, run.rank, spec=spec))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  train_step = jax.jit(
    steps.make_train_step(run.graphdef, run.optimizer, norm, config.loss),
    in_shardings=(run.param_shardings, run.state_shardings, batch_sharding, batch_sharding),
    out_shardings=(run.param_shardings, run.state_shardings, replicated),
    # The old parameters and state are dead after the step: XLA updates them
    # in place, and frees each gradient as soon as its update is applied.
    donate_argnums=(0, 1),
  )
  eval_step = jax.jit(steps.make_eval_step(run.graphdef, norm), out_shardings=replicated)

  def evaluate_split(params, x, y):
    return evaluate(eval_step, params, x, y, config.eval_batch_size, batch_sharding)

  params = run.params
  opt_state = jax.jit(run.optimizer.init, out_shardings=run.state_shardings)(params)
  rng = jax.random.key(config.seed + 1)
  last_epoch, history = 0, []

  manager = checkpoint_manager(out)
  if not config.resume:
    # Only with --overwrite (see `check_out`): stale checkpoints would be resumed later.
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
      steps_per_epoch,
      desc=f"epoch {epoch}/{config.epochs}",
      # On a terminal only: redirected to a file, a bar writes a carriage-return frame per
      # step; there the per-epoch line below is the log.
      disable=None if config.progress else True,
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
  pred = jax.jit(lambda p, x: steps.predict(run.graphdef, p, norm, x), out_shardings=replicated)(
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
