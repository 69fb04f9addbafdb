"""The benchmarks' training harness: one run of a `configs.Config`, from the command line too.

`train_and_evaluate` runs a `configs.Config`: it generates (and caches) a
Navier-Stokes or Darcy data set, or reads ``config.data``, trains the model
with one of the optimizer variants (`benchmarks.variants`), and writes
``metrics.json``, ``loss.png`` and ``samples.png`` to ``config.out``. The steps
themselves are in `benchmarks.steps`; the accuracy studies
(`benchmarks.accuracy`) and the comparison (`benchmarks.compare`) train
through it. From the repository root::

  python -m benchmarks.train --optimizer tensor_galore --rank 0.2 --out runs/tg

The demo, ``python -m examples.fno``, is the same training written out in one
file for one optimizer at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from benchmarks import configs, losses, plots, recipe, steps
from benchmarks import variants as optimizers
from examples.fno import data, model
from tensor_galore_optax import optimizer_state_bytes, projection_plan

Config = configs.Config
ConfigError = configs.ConfigError


def tree_bytes(tree: Any) -> int:
  """Bytes of the arrays (or shape structs) of ``tree``."""
  return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


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


class Run(NamedTuple):
  """Everything a run builds before its first step."""

  graphdef: nnx.GraphDef
  params: nnx.State
  optimizer: optax.GradientTransformation
  rank: float | int | None


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
  """How ``config`` trades compute for memory, as keyword arguments of `recipe.RecipeFNO`."""
  if not isinstance(configs.PRESETS[config.preset], model.FNOConfig):
    return {}
  return {
    "cls": recipe.RecipeFNO,
    "remat": config.remat,
    "remat_policy": config.remat_policy,
    "scan_layers": config.scan_layers,
    "pointwise_chunk": config.pointwise_chunk,
    "dtype": None if config.activation_dtype == "float32" else jnp.dtype(config.activation_dtype),
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
  """Refuses to write over a finished run in ``config.out`` unless ``overwrite`` is set.

  Raises:
    ConfigError: If ``config.out`` holds ``metrics.json`` and ``overwrite`` is not set.
  """
  if (pathlib.Path(config.out) / "metrics.json").exists() and not config.overwrite:
    raise ConfigError(
      f"--out {config.out} already holds a run (metrics.json): pass --overwrite to replace it, "
      "or another --out"
    )


def check_config(config: Config) -> None:
  """Checks all of ``config`` that needs no data: its settings (`configs.validate`), its ``out``.

  Raises:
    ConfigError: Saying what is wrong.
  """
  configs.validate(config)
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


def check_data(config: Config, ds: data.Dataset) -> None:
  """Raises `ConfigError` if ``config`` cannot train on ``ds``."""
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  if x_train.shape[-1] != x_test.shape[-1] or y_train.shape[-1] != y_test.shape[-1]:
    raise ConfigError(
      f"train and test channels differ: x {x_train.shape[-1]} vs {x_test.shape[-1]}, "
      f"y {y_train.shape[-1]} vs {y_test.shape[-1]}"
    )
  if config.batch_size > len(x_train):
    raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(x_train)} train samples")


def build(config: Config, ds: data.Dataset, schedule: optax.Schedule) -> Run:
  """Initialises the model and the optimizer."""
  x_train, y_train = with_channels(ds.x_train), with_channels(ds.y_train)
  net = model_config(config).make(
    x_train.shape[-1],
    y_train.shape[-1],
    resolution=x_train.shape[1:3],
    rngs=nnx.Rngs(config.seed),
    **model_recipe(config),
  )
  graphdef, params = nnx.split(net)
  optimizer, rank = build_optimizer(config, params, schedule)
  return Run(graphdef, params, optimizer, rank)


def evaluate(eval_step, params, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
  """Mean per-sample relative L2 error over a split.

  The last batch is padded by repeating its last sample, so that every batch
  has the same shape (one compilation); padded errors are dropped.
  """
  errors = []
  for start in range(0, len(x), batch_size):
    index = np.minimum(np.arange(start, start + batch_size), len(x) - 1)
    errors.append(np.asarray(eval_step(params, x[index], y[index]))[: len(x) - start])
  return float(np.mean(np.concatenate(errors)))


def identity_rel_l2(x: np.ndarray, y: np.ndarray) -> float | None:
  """Error of predicting ``y = x`` (with a 1-channel ``x`` broadcast); ``None`` if undefined."""
  if x.shape[1:3] != y.shape[1:3] or x.shape[-1] not in (1, y.shape[-1]):
    return None
  return float(losses.relative_lp(x, y))


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains and evaluates a model, writing metrics and plots.

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
  ds = load_data(config)
  check_data(config, ds)
  x_train, y_train, x_test, y_test = map(with_channels, ds)
  norm = steps.Normalizer.fit(x_train, y_train)

  steps_per_epoch = len(x_train) // config.batch_size
  schedule = make_schedule(config, steps_per_epoch)
  run = build(config, ds, schedule)
  if run.rank is not None:  # what the optimizer keeps of each projected leaf, before training
    spec = optimizers.spec(config.optimizer, run.rank, config.projection)
    print(projection_plan(nnx.to_pure_dict(run.params), rank=run.rank, spec=spec))
  # The old parameters and state are dead after the step: XLA updates them in place.
  train_step = jax.jit(
    steps.make_train_step(run.graphdef, run.optimizer, norm, config.loss), donate_argnums=(0, 1)
  )
  eval_step = jax.jit(steps.make_eval_step(run.graphdef, norm))

  def evaluate_split(params, x, y):
    return evaluate(eval_step, params, x, y, config.eval_batch_size)

  params = run.params
  opt_state = jax.jit(run.optimizer.init)(params)
  rng = jax.random.key(config.seed + 1)
  history, step_times = [], []
  for epoch in range(1, config.epochs + 1):
    epoch_start = time.perf_counter()
    rng, key = jax.random.split(rng)
    order = np.asarray(jax.random.permutation(key, len(x_train)))
    epoch_losses = []
    # On a terminal only: redirected to a file, the per-epoch line below is the log.
    bar = tqdm.trange(
      steps_per_epoch,
      desc=f"epoch {epoch}/{config.epochs}",
      disable=None if config.progress else True,
    )
    for i in bar:
      index = order[i * config.batch_size : (i + 1) * config.batch_size]
      step_start = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, x_train[index], y_train[index])
      loss = float(loss)
      step_times.append(time.perf_counter() - step_start)
      epoch_losses.append(loss)
      bar.set_postfix(loss=f"{loss:.4f}")
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
    config=dataclasses.asdict(config),
  )
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  plots.plot_history(history, out / "loss.png", identity=metrics["identity_rel_l2"])
  n_show = min(3, len(x_test))
  pred = jax.jit(lambda p, x: steps.predict(run.graphdef, p, norm, x))(params, x_test[:n_show])
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
  p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
  configs.add_arguments(p)
  return p


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; invalid settings or data exit with status 2 and a message."""
  p = parser()
  config = configs.from_args(p.parse_args(argv))
  try:
    train_and_evaluate(config)
  except configs.ConfigError as e:
    p.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
