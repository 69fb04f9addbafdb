"""The accuracy-memory frontier: every optimizer's test error against its whole state.

Each optimizer of `OPTIMIZERS` is one call, a Python expression in ``lr`` (the
learning-rate schedule) and ``params``; the benchmark evaluates exactly that
string, so the call in a result row is the code that made it. Every optimizer
gets the same learning-rate budget on a task: the task's three rates (scaled
by the optimizer's family, `FAMILY_LR_SCALE`) on seed 0, then seeds 1 and 2 at
the best of them.

Every run is one JSON file under ``benchmarks/results/frontier/runs/<task>/``,
named by a hash of everything it depends on (task settings, call, rate, seed,
protocol): a finished run is never trained again, so an interrupted command
resumes where it stopped. The state counted is the whole optimizer's
(``jax.eval_shape`` of ``init``: moments, factors, statistics, counters), and
AdamW's is measured the same way on the same parameters.

Usage, from the repository root::

  python -m benchmarks.frontier --task darcy16                       # every optimizer
  python -m benchmarks.frontier --task darcy16 --optimizers adamw,tg_0.25
  python -m benchmarks.frontier --task burgers --stage lr            # seed 0's rates only
  python -m benchmarks.frontier --task darcy16 --dry-run             # what would train
  python -m benchmarks.frontier --plot     # frontier.png, frontier.md, settings.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import tensor_galore_optax
from benchmarks import frontier_levers as levers
from benchmarks import frontier_tasks
from tensor_galore_optax import TuckerSpec, scale_by_core_adam, tensor_galore, tensor_galore_adamw

RESULTS = pathlib.Path("benchmarks/results/frontier")
# Bump when the training protocol changes: old runs then no longer match any key.
PROTOCOL = 1
# What the library's calls train: bump when a release changes the result of the same call
# (generation 2, tensor_galore_optax 1.2.0: a refresh's new directions warm up). Only calls
# that use the library carry it in their keys; generation 1's keys predate the field.
LIBRARY_GENERATION = 2
GENERATION_VERSIONS = {1: "1.0-1.1", 2: "1.2"}


def uses_library(call: str) -> bool:
  """Whether ``call`` trains with this library (its settings or a composition of its parts)."""
  return "tensor_galore" in call or "levers." in call


# How each optimizer family's rates relate to AdamW's grid: Adafactor's default
# parameter-scale step wants about 3x, Lion's sign step about a tenth.
FAMILY_LR_SCALE = {"adam": 1.0, "adafactor": 3.0, "lion": 0.1}


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """One point of the frontier.

  Attributes:
    call: The optimizer, a Python expression in ``lr`` and ``params``; a dict
      maps task names to their own call (a task it lacks does not apply).
    family: A key of `FAMILY_LR_SCALE`.
    library: Whether this is `tensor_galore_adamw` itself (joined on the plot).
    note: What the table says about it.
  """

  call: str | dict[str, str]
  family: str = "adam"
  library: bool = False
  note: str = ""

  def call_for(self, task: str) -> str | None:
    """The call on ``task``, or ``None`` where it does not apply."""
    return self.call.get(task) if isinstance(self.call, dict) else self.call


_AF = "optax.adafactor(lr, min_dim_size_to_factor=8"

OPTIMIZERS: dict[str, Optimizer] = {
  "adamw": Optimizer("optax.adamw(lr)"),
  "adamw_bf16_mu": Optimizer("optax.adamw(lr, mu_dtype=jnp.bfloat16)"),
  # The control for the library's b2=0.99 runs: AdamW with the same second-moment decay.
  "adamw_b2_0.99": Optimizer("optax.adamw(lr, b2=0.99)"),
  "adafactor": Optimizer(_AF + ")", "adafactor"),
  "adafactor_momentum": Optimizer(_AF + ", momentum=0.9)", "adafactor"),
  "adafactor_momentum_bf16": Optimizer(
    _AF + ", momentum=0.9, dtype_momentum=jnp.bfloat16)", "adafactor"
  ),
  "lion": Optimizer("optax.lion(lr)", "lion"),
  "muon": Optimizer(
    # Where it applies: models with 2-D kernels (the conv net has none).
    {t: "optax.contrib.muon(lr)" for t in ("darcy16", "burgers", "mlp16")},
    note="Newton-Schulz on the 2-D kernels; Adam on every other leaf (the FNO's complex "
    "spectral weights included)",
  ),
  "galore": Optimizer(
    # The int rank that keeps a quarter of a matrix's smaller side.
    {
      "darcy16": "optax.contrib.galore(lr, rank=6, weight_decay=1e-4)",
      "burgers": "optax.contrib.galore(lr, rank=32, weight_decay=1e-4)",
      "mlp16": "optax.contrib.galore(lr, rank=64, weight_decay=1e-4)",
    },
    note="projects the 2-D real kernels only; on the FNO the complex spectral weights keep "
    "full Adam (projecting them would drop their imaginary part)",
  ),
  **{
    f"tg_{r}": Optimizer(f"tensor_galore_adamw(lr, rank={r})", library=True)
    for r in (0.05, 0.1, 0.25, 0.5)
  },
  # Lever ii alone: low-precision first moments (cores and small leaves).
  **{
    f"tg_{r}_bf16_mu": Optimizer(f'tensor_galore_adamw(lr, rank={r}, mu_dtype="bfloat16")')
    for r in (0.1, 0.25)
  },
  # Lever iii's control: the same small rank without the residual step.
  **{
    f"tg_{r}_no_residual": Optimizer(f"tensor_galore_adamw(lr, rank={r}, residual_scale=None)")
    for r in (0.05, 0.1)
  },
  # Lever i: a factored second moment on the cores and on the leaves left whole, trained
  # before it was the library's (`levers.factored_core`, now `second_moment="factored"`).
  "factored_core_0.05": Optimizer(
    "levers.factored_core(lr, params, rank=0.05)",
    note="trained as a composition of this library and a copy of `scale_by_core_adam(second_"
    "moment='factored')` whose decay rates were Python floats (updates 7e-6 relative apart)",
  ),
  # Levers i and ii together, as the library has them: factored second moments and a
  # bfloat16 first moment (complex moments as bfloat16 pairs).
  **{
    f"tg_{r}_factored_bf16": Optimizer(
      f'tensor_galore_adamw(lr, rank={r}, second_moment="factored", mu_dtype="bfloat16")',
      library=True,
    )
    for r in (0.05, 0.1, 0.25, 0.5)
  },
  # Levers i and ii with steps relative to each weight's root mean square (Adafactor's); with
  # "int8", the first moment in int8 blocks with a float32 scale each, rounded stochastically
  # (a quarter of float32's bytes for the momentum).
  **{
    f"tg_{r}_factored_{mu}_relative": Optimizer(
      f'tensor_galore_adamw(lr, rank={r}, second_moment="factored", mu_dtype="{dtype}", '
      "multiply_by_parameter_scale=True)",
      "adafactor",
      library=True,
    )
    for mu, dtype, ranks in (
      ("bf16", "bfloat16", (0.1, 0.2, 0.25, 0.5)),
      ("int8", "int8", (0.1, 0.2, 0.25)),
    )
    for r in ranks
  },
  # Below 0.05x on the FNO: the same state spent differently. A refresh every 50 steps (not
  # 200) keeps a small subspace closer to the gradient; two channel modes at ~0.32 each (not
  # one at 0.1) keep both sides of a spectral weight.
  "tg_0.1_factored_bf16_gap50": Optimizer(
    'tensor_galore_adamw(lr, rank=0.1, second_moment="factored", mu_dtype="bfloat16", '
    "update_proj_gap=50)"
  ),
  "tg_0.1_factored_bf16_two_modes": Optimizer(
    {
      # The FNO's spectral weights only: on matrices, two modes is a full core.
      "darcy16": 'tensor_galore_adamw(lr, rank=0.1, second_moment="factored", '
      'mu_dtype="bfloat16", spec=TuckerSpec(num_projected=2))'
    }
  ),
  # Why Adafactor with momentum beats AdamW on the FNO: its step relative to each weight's
  # root mean square (`scale_by_param_block_rms`), tried on Adam and on the library.
  "adamw_param_scale": Optimizer(
    "optax.chain(optax.scale_by_adam(), optax.scale_by_param_block_rms(), "
    "optax.add_decayed_weights(1e-4), optax.scale_by_learning_rate(lr))",
    "adafactor",
  ),
  "tg_0.25_factored_bf16_param_scale": Optimizer(
    "optax.chain(tensor_galore(rank=0.25, base_optimizer=scale_by_core_adam("
    'second_moment="factored", mu_dtype="bfloat16")), optax.scale_by_param_block_rms(), '
    "optax.add_decayed_weights(1e-4), optax.scale_by_learning_rate(lr))",
    "adafactor",
  ),
  # TensorGRaD's sparse plus low-rank split: near 0.05x of AdamW's state, and the authors'
  # proportions (rank 0.2, 5 % of the entries sparse), with levers i and ii.
  "slr_0.025_0.02": Optimizer(
    {
      t: "levers.sparse_plus_low_rank(lr, params, rank=0.025, sparse_ratio=0.02, "
      'mu_dtype="bfloat16", second_moment="factored")'
      for t in ("darcy16", "burgers")
    }
  ),
  "slr_0.2_0.05": Optimizer(
    {
      t: "levers.sparse_plus_low_rank(lr, params, rank=0.2, sparse_ratio=0.05, "
      'mu_dtype="bfloat16", second_moment="factored")'
      for t in ("darcy16", "burgers")
    }
  ),
  # The conv net's loss jumps at the first refresh (step 200): the same without a refresh
  # after step 0 (a diagnosis, run at the default's best rate and seeds only).
  "tg_0.25_one_refresh": Optimizer(
    {"cnn16": "tensor_galore_adamw(lr, rank=0.25, update_proj_gap=1000)"}
  ),
  # The same with each core step clipped to a root mean square of at most 1 (Adafactor's
  # update clipping): a stateless guard against the steps a refresh makes too long.
  "tg_0.25_clip": Optimizer(
    {
      "cnn16": "optax.chain(tensor_galore(rank=0.25, base_optimizer=optax.chain("
      "scale_by_core_adam(), optax.clip_by_block_rms(1.0))), optax.add_decayed_weights(1e-4), "
      "optax.scale_by_learning_rate(lr))"
    }
  ),
  # `rank=0.1` factored bf16 with the step per direction of Adam's length (not the matched
  # sqrt(I / R) times it), and with a longer refresh gap.
  "tg_0.1_factored_bf16_scale1": Optimizer(
    'tensor_galore_adamw(lr, rank=0.1, second_moment="factored", mu_dtype="bfloat16", scale=1.0)'
  ),
  # A second moment that forgets in ~100 steps, not ~1000 (`adamw_b2_0.99` is the control).
  "tg_0.25_b2_0.99": Optimizer("tensor_galore_adamw(lr, rank=0.25, b2=0.99)"),
  **{
    f"tg_{r}_factored_bf16{rel}_b2_0.99": Optimizer(
      f'tensor_galore_adamw(lr, rank={r}, second_moment="factored", mu_dtype="bfloat16", '
      + ("multiply_by_parameter_scale=True, " if rel else "")
      + "b2=0.99)",
      "adafactor" if rel else "adam",
    )
    for r in (0.1, 0.25)
    for rel in ("", "_relative")
  },
  "tg_0.1_factored_bf16_gap500": Optimizer(
    'tensor_galore_adamw(lr, rank=0.1, second_moment="factored", mu_dtype="bfloat16", '
    "update_proj_gap=500)"
  ),
  # The warm-up of a refresh's new directions (1.2): off, as in 1.1 (the control), and shorter.
  "tg_0.25_no_warmup": Optimizer("tensor_galore_adamw(lr, rank=0.25, refresh_warmup_steps=0)"),
  "tg_0.25_warmup_20": Optimizer("tensor_galore_adamw(lr, rank=0.25, refresh_warmup_steps=20)"),
  # Lever iv: Adafactor with its momentum in a Tucker core (DESIGN.md).
  **{
    f"adafactor_core_{r}": Optimizer(
      f"levers.adafactor_core_momentum(lr, params, rank={r})", "adafactor"
    )
    for r in (0.05, 0.1, 0.25)
  },
  "adafactor_core_0.1_no_small_mu": Optimizer(
    "levers.adafactor_core_momentum(lr, params, rank=0.1, small_leaf_momentum=False)",
    "adafactor",
  ),
}

# The library's named settings: keyword arguments of `tensor_galore_adamw` besides the rate,
# each a point measured on the frontier (written to settings.json by --plot).
SETTINGS = {
  "default": {"rank": 0.25},
  "compact": {"rank": 0.25, "second_moment": "factored", "mu_dtype": "bfloat16"},
  # Steps relative to each weight's size: the learning rate must be tuned anew for these.
  "compact_relative": {
    "rank": 0.25,
    "second_moment": "factored",
    "mu_dtype": "bfloat16",
    "multiply_by_parameter_scale": True,
  },
  "smallest_relative": {
    "rank": 0.2,
    "second_moment": "factored",
    "mu_dtype": "int8",
    "multiply_by_parameter_scale": True,
  },
}

# The order in which `--task` trains when no --optimizers are named: the peers and the
# library's ranks first, the levers after.
DEFAULT_ORDER = (
  "adamw",
  "tg_0.25",
  "tg_0.1",
  "adafactor",
  "adafactor_momentum",
  "tg_0.05",
  "tg_0.5",
  "adamw_bf16_mu",
  "lion",
  "muon",
  "galore",
  "adafactor_momentum_bf16",
)


def build_optimizer(call: str, schedule, params) -> optax.GradientTransformation:
  """Evaluates ``call`` with ``lr`` the schedule and ``params`` the parameters."""
  namespace = dict(
    optax=optax,
    jnp=jnp,
    tensor_galore=tensor_galore,
    tensor_galore_adamw=tensor_galore_adamw,
    scale_by_core_adam=scale_by_core_adam,
    TuckerSpec=TuckerSpec,
    levers=levers,
    lr=schedule,
    params=params,
  )
  return eval(call, namespace)  # noqa: S307 -- the calls are this module's own strings


def state_bytes(tx: optax.GradientTransformation, params) -> int:
  """Bytes of ``tx``'s whole state for ``params`` (shapes only: nothing is allocated)."""
  state = jax.eval_shape(tx.init, params)
  return sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(state))


def make_schedule(peak: float, steps_per_epoch: int, epochs: int) -> optax.Schedule:
  """One epoch of linear warm-up (at most half the run), then a cosine decay to 1% of ``peak``."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=min(steps_per_epoch, epochs * steps_per_epoch // 2),
    decay_steps=epochs * steps_per_epoch,
    end_value=0.01 * peak,
  )


def relative_l2(pred: jax.Array, y: jax.Array) -> jax.Array:
  """Per-sample ``||pred - y|| / ||y||`` over all but the batch axis."""
  axes = tuple(range(1, y.ndim))
  return jnp.sqrt(jnp.sum((pred - y) ** 2, axes) / jnp.sum(y**2, axes))


def _git_commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def run_key(
  task: frontier_tasks.Task,
  call: str,
  lr: float,
  seed: int,
  generation: int = LIBRARY_GENERATION,
) -> dict:
  """Everything a run's result depends on (its cache key is this dict's hash)."""
  key = dict(
    protocol=PROTOCOL,
    task=task.name,
    settings=task.settings,
    epochs=task.epochs,
    batch_size=task.batch_size,
    call=call,
    lr=lr,
    seed=seed,
  )
  if uses_library(call) and generation > 1:
    key["library_generation"] = generation
  return key


def run_path(key: dict) -> pathlib.Path:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return RESULTS / "runs" / key["task"] / f"{digest}.json"


def model_functions(graphdef, x_train, y_train) -> tuple[Callable, Callable]:
  """``predict(params, x)`` in the data's units and the loss ``loss_fn(params, x, y)``.

  Inputs and targets are normalised with the training split's mean and deviation
  (every task has one input and one output channel); the loss is the mean
  relative L2 error in the data's units.
  """
  mean_x, std_x = float(x_train.mean()), float(x_train.std())
  mean_y, std_y = float(y_train.mean()), float(y_train.std())

  def predict(params, x):
    out = nnx.merge(graphdef, params)((x - mean_x) / std_x)
    return out * std_y + mean_y

  def loss_fn(params, x, y):
    return jnp.mean(relative_l2(predict(params, x), y))

  return predict, loss_fn


def train(task: frontier_tasks.Task, call: str, lr: float, seed: int, *, epochs=None) -> dict:
  """Trains ``task``'s model with ``call`` at peak rate ``lr`` from ``seed``; the result row.

  The seed sets the initialisation and the order of the batches; the data is fixed.
  Inputs and targets are normalised per channel with the training split's
  statistics; the loss and the test error are the relative L2 error in the
  data's units.
  """
  epochs = task.epochs if epochs is None else epochs
  x_train, y_train, x_test, y_test = task.data()
  graphdef, state = nnx.split(task.model(seed))
  params = nnx.to_pure_dict(state)
  steps_per_epoch = len(x_train) // task.batch_size
  schedule = make_schedule(lr, steps_per_epoch, epochs)
  tx = build_optimizer(call, schedule, params)
  adamw = build_optimizer(OPTIMIZERS["adamw"].call, schedule, params)
  predict, loss_fn = model_functions(graphdef, x_train, y_train)

  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    # jax.grad gives a complex weight the conjugate of the ascent direction; optax wants it.
    grads = jax.tree.map(jnp.conj, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  evaluate = jax.jit(lambda params, x, y: relative_l2(predict(params, x), y))
  opt_state = jax.jit(tx.init)(params)

  rng = np.random.default_rng([seed, 1])
  start = time.perf_counter()
  batch = (x_train[: task.batch_size], y_train[: task.batch_size])
  compiled = step.lower(params, opt_state, *batch).compile()
  compile_s = time.perf_counter() - start
  step_times, history = [], []
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    losses = []
    for i in range(steps_per_epoch):
      index = order[i * task.batch_size : (i + 1) * task.batch_size]
      t0 = time.perf_counter()
      params, opt_state, loss = compiled(params, opt_state, x_train[index], y_train[index])
      losses.append(float(loss))  # waits for the step
      step_times.append(time.perf_counter() - t0)
    history.append(
      dict(
        train_loss=float(np.mean(losses)), test=float(jnp.mean(evaluate(params, x_test, y_test)))
      )
    )
  test = float(jnp.mean(evaluate(params, x_test, y_test)))
  return dict(
    test_error=test if math.isfinite(test) else None,
    history=history,
    state_bytes=state_bytes(tx, params),
    adamw_state_bytes=state_bytes(adamw, params),
    param_bytes=sum(a.nbytes for a in jax.tree.leaves(params)),
    # The median, as other users share the CPU: the typical step, not the unlucky ones.
    step_time_s=statistics.median(step_times[5:] or step_times),
    compile_s=compile_s,
    wall_s=time.perf_counter() - start,
  )


def run(task_name: str, name: str, lr: float, seed: int, *, dry_run: bool = False) -> dict | None:
  """The row of one run, trained now unless its file exists (``None`` on a dry run)."""
  task = frontier_tasks.TASKS[task_name]
  call = OPTIMIZERS[name].call_for(task_name)
  key = run_key(task, call, lr, seed)
  path = run_path(key)
  if path.exists():
    return json.loads(path.read_text())
  print(f"[{task_name}] {name} lr={lr:g} seed={seed}: {call}", flush=True)
  if dry_run:
    return None
  row = dict(
    optimizer=name,
    **key,
    **train(task, call, lr, seed),
    library_version=tensor_galore_optax.__version__,
    commit=_git_commit(),
    versions=dict(jax=jax.__version__, optax=optax.__version__),
    machine=f"{platform.machine()} {jax.devices()[0].platform}",
  )
  err, ratio = row["test_error"], row["state_bytes"] / row["adamw_state_bytes"]
  print(
    f"  test {err if err is None else f'{err:.4f}'}, state {ratio:.3f}x"
    f" AdamW's, step {1e3 * row['step_time_s']:.1f} ms, {row['wall_s']:.0f} s",
    flush=True,
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(row, indent=1))
  tmp.replace(path)
  return row


def lr_grid(task_name: str, name: str) -> list[float]:
  """The rates ``name`` gets first on ``task_name``: the task's grid times its family's factor."""
  scale = FAMILY_LR_SCALE[OPTIMIZERS[name].family]
  return [float(f"{scale * lr:.3g}") for lr in frontier_tasks.TASKS[task_name].lrs]


# A best rate at an end of the grid may not be the best rate: the sweep goes one grid step
# further that way, at most this many times, the same rule for every optimizer.
MAX_EXTENSIONS = 2


def _error(row: dict | None) -> float:
  return math.inf if row is None or row["test_error"] is None else row["test_error"]


def sweep(
  task_name: str, name: str, generation: int = LIBRARY_GENERATION
) -> tuple[dict[float, float], float | None]:
  """Seed 0's error at each rate swept so far, and the next rate the rule asks for.

  The next rate is ``None`` when the sweep is done: the best rate is inside the
  swept range, or ``MAX_EXTENSIONS`` rates were added. A missing run is the next rate.
  ``generation``: the library's, for calls that use it (`LIBRARY_GENERATION`).
  """
  grid = lr_grid(task_name, name)
  errors: dict[float, float] = {}
  for lr in grid:
    row = load_row(task_name, name, lr, 0, generation)
    if row is None:
      return errors, lr
    errors[lr] = _error(row)
  step = grid[1] / grid[0]
  for _ in range(MAX_EXTENSIONS):
    best = min(errors, key=lambda g: (errors[g], g))
    if not math.isfinite(errors[best]) or min(errors) < best < max(errors):
      return errors, None
    nxt = float(f"{(best * step if best == max(errors) else best / step):.3g}")
    row = load_row(task_name, name, nxt, 0, generation)
    if row is None:
      return errors, nxt
    errors[nxt] = _error(row)
  return errors, None


def best_lr(task_name: str, name: str, generation: int = LIBRARY_GENERATION) -> float | None:
  """The rate of the lowest seed-0 error of a finished sweep (``None`` if unfinished)."""
  errors, missing = sweep(task_name, name, generation)
  if missing is not None or not errors:
    return None
  return min(errors, key=lambda g: (errors[g], g))


def load_row(
  task_name: str, name: str, lr: float, seed: int, generation: int = LIBRARY_GENERATION
) -> dict | None:
  task = frontier_tasks.TASKS[task_name]
  call = OPTIMIZERS[name].call_for(task_name)
  path = run_path(run_key(task, call, lr, seed, generation))
  return json.loads(path.read_text()) if path.exists() else None


def train_optimizer(task_name: str, name: str, stage: str, seeds, dry_run: bool) -> None:
  """Seed 0 at every rate, then (``stage`` ``all`` or ``seeds``) the other seeds at the best."""
  task = frontier_tasks.TASKS[task_name]
  if stage in ("lr", "all"):
    while (lr := sweep(task_name, name)[1]) is not None:
      if run(task_name, name, lr, 0, dry_run=dry_run) is None:
        return
  if stage in ("seeds", "all"):
    lr = best_lr(task_name, name)
    if lr is None:
      print(f"[{task_name}] {name}: the rate sweep is unfinished; no seeds yet")
      return
    for seed in task.extra_seeds if seeds is None else seeds:
      run(task_name, name, lr, seed, dry_run=dry_run)


# --------------------------------------------------------------------------
# Summary: table, plot, settings
# --------------------------------------------------------------------------


def _finished_generation(task_name: str, name: str) -> int | None:
  """The newest library generation whose sweep of ``name`` finished (the current one for
  calls that do not use the library), ``None`` if none did."""
  call = OPTIMIZERS[name].call_for(task_name)
  older = range(LIBRARY_GENERATION - 1, 0, -1) if uses_library(call) else ()
  for generation in (LIBRARY_GENERATION, *older):
    if best_lr(task_name, name, generation) is not None:
      return generation
  return None


def summarise(task_name: str) -> list[dict]:
  """One point per optimizer with a finished rate sweep: its best rate's seeds.

  A call that uses the library shows its newest generation with a finished sweep;
  ``generation`` says which.
  """
  points = []
  for name, opt in OPTIMIZERS.items():
    if opt.call_for(task_name) is None:
      continue
    generation = _finished_generation(task_name, name)
    if generation is None:
      continue
    lr = best_lr(task_name, name, generation)
    errors_by_lr = dict(sorted(sweep(task_name, name, generation)[0].items()))
    seeds = (0, *frontier_tasks.TASKS[task_name].extra_seeds)
    rows = [r for s in seeds if (r := load_row(task_name, name, lr, s, generation)) is not None]
    errors = [_error(r) for r in rows]
    points.append(
      dict(
        task=task_name,
        optimizer=name,
        call=opt.call_for(task_name),
        library=opt.library,
        note=opt.note,
        generation=generation,
        lr=lr,
        sweep=errors_by_lr,
        errors=errors,
        mean=statistics.mean(errors),
        std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
        state=rows[0]["state_bytes"] / rows[0]["adamw_state_bytes"],
        state_bytes=rows[0]["state_bytes"],
        step_time_s=statistics.median(r["step_time_s"] for r in rows),
        edge=len(errors_by_lr) > 1 and lr in (min(errors_by_lr), max(errors_by_lr)),
      )
    )
  ref = next((p for p in points if p["optimizer"] == "adamw"), None)
  for p in points:
    p["error_ratio"] = p["mean"] / ref["mean"] if ref else None
    p["std_ratio"] = p["std"] / ref["mean"] if ref else None
    p["time_ratio"] = p["step_time_s"] / ref["step_time_s"] if ref else None
  return points


def _older(point: dict) -> str:
  """`` (1.0-1.1)`` for a library point of an earlier generation, else nothing."""
  if point["generation"] == LIBRARY_GENERATION or not uses_library(point["call"]):
    return ""
  return f" ({GENERATION_VERSIONS[point['generation']]})"


def _fmt(x: float, spec: str = ".3f") -> str:
  return "diverged" if not math.isfinite(x) else format(x, spec)


def markdown(points_by_task: dict[str, list[dict]]) -> str:
  """The table of every point, per task, sorted by state."""
  lines = [
    "# The accuracy-memory frontier",
    "",
    "Made by `python -m benchmarks.frontier --plot` from the runs under `runs/` (each trained by",
    "`python -m benchmarks.frontier --task <task>`). Every optimizer: three rates on seed 0 (a",
    "best rate at an end of them adds the next rate that way, twice at most), then seeds 1 and 2",
    "at the best; the error is the test relative L2 error after the last epoch,",
    "mean +- standard deviation over the seeds (n). State: the whole optimizer state (moments,",
    "factors, statistics), over AdamW's on the same parameters. Step time: median compiled step,",
    "over AdamW's (a shared 2-core CPU: +-20 % is noise). `lr` in a call is the schedule: one",
    "epoch of warm-up, then a cosine decay to 1 % of the best rate. A call that uses this",
    "library was run as the library is now (tensor_galore_optax "
    f"{GENERATION_VERSIONS[LIBRARY_GENERATION]}) unless marked with",
    "the versions it was run with: `(1.0-1.1)` is before the warm-up of a refresh's new",
    "directions (`refresh_warmup_steps`).",
  ]
  for task_name, points in points_by_task.items():
    task = frontier_tasks.TASKS[task_name]
    lines += [
      "",
      f"## {task_name}: {task.description}",
      "",
      "| optimizer | call | best lr | error (n) | error / AdamW | state / AdamW "
      "| step / AdamW | seed-0 sweep |",
      "|---|---|---|---|---|---|---|---|",
    ]
    if task.note:
      lines[-2:-2] = [task.note, ""]
    for p in sorted(points, key=lambda p: p["state"]):
      sweep = ", ".join(f"{lr:g}: {_fmt(e, '.4f')}" for lr, e in p["sweep"].items())
      edge = " (edge)" if p["edge"] else ""
      spread = f" +- {_fmt(p['std'], '.4f')}" if len(p["errors"]) > 1 else ""
      lines.append(
        f"| {p['optimizer']}{_older(p)} | `{p['call']}` | {p['lr']:g}{edge} | "
        f"{_fmt(p['mean'], '.4f')}{spread} ({len(p['errors'])}) | "
        f"{_fmt(p['error_ratio'])} | {p['state']:.3f} | {_fmt(p['time_ratio'], '.2f')} | {sweep} |"
      )
    notes = [f"- {p['optimizer']}: {p['note']}" for p in points if p["note"]]
    lines += [""] + notes if notes else []
  return "\n".join(lines) + "\n"


# The summary's columns: a name and the optimizer (a key of OPTIMIZERS) it shows.
SUMMARY_COLUMNS = (
  ("default", "tg_0.25"),
  ("compact", "tg_0.25_factored_bf16"),
  ("compact_relative", "tg_0.25_factored_bf16_relative"),
  ("smallest_relative", "tg_0.2_factored_int8_relative"),
  ("Adafactor", "adafactor"),
  ("Adafactor, bf16 momentum", "adafactor_momentum_bf16"),
)


def summary(points_by_task: dict[str, list[dict]]) -> str:
  """Per task, error / AdamW's and state / AdamW's of the named settings and two peers."""
  head = "| task | " + " | ".join(name for name, _ in SUMMARY_COLUMNS) + " |"
  lines = [head, "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
  for task_name, points in points_by_task.items():
    by_name = {p["optimizer"]: p for p in points}
    if "adamw" not in by_name:
      continue
    cells = []
    for _, name in SUMMARY_COLUMNS:
      p = by_name.get(name)
      cells.append(
        "-"
        if p is None
        else f"{_fmt(p['error_ratio'])} / {p['state']:.3f} ({len(p['errors'])}){_older(p)}"
      )
    lines.append(f"| {task_name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _kind(point: dict) -> str:
  """ "library" (`tensor_galore_adamw`'s settings), "earlier" (those settings run with an
  earlier generation of the library), "peer" (optax alone) or "research"."""
  if point["library"]:
    return "library" if point["generation"] == LIBRARY_GENERATION else "earlier"
  return "research" if "tensor_galore" in point["call"] or "levers." in point["call"] else "peer"


def pareto(points: list[dict]) -> list[dict]:
  """The points no other point beats in both state and error, by increasing state."""
  front, best = [], math.inf
  for p in sorted(points, key=lambda p: (p["state"], p["error_ratio"])):
    if p["error_ratio"] < best:
      front.append(p)
      best = p["error_ratio"]
  return front


# The plot's highest error / AdamW's; points above it are named at the top edge.
PLOT_TOP = 1.6


def plot(points_by_task: dict[str, list[dict]], out: pathlib.Path) -> None:
  """Error / AdamW against state / AdamW (log), a panel per task; the library's best joined.

  The library's settings are blue circles, joined where no other of them has both less
  state and less error; each optax optimizer has its own marker; the research settings
  (other compositions of the library's parts) are small grey crosses.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = [t for t, p in points_by_task.items() if p]
  columns = min(3, len(tasks))
  rows = -(-len(tasks) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.6 * rows), squeeze=False)
  peer_style = {}
  markers = "sD^v<>phP*8"
  for ax, task_name in zip(axes.flat, tasks):
    points = [p for p in points_by_task[task_name] if math.isfinite(p["mean"])]
    library = [p for p in points if _kind(p) == "library"]
    front = pareto(library)
    ax.plot([p["state"] for p in front], [p["error_ratio"] for p in front], "-", color="C0")
    for p in points:
      kind = _kind(p)
      if kind == "library":
        style = dict(marker="o", color="C0", markersize=5)
      elif kind == "earlier":
        style = dict(marker="o", color="C0", markersize=5, markerfacecolor="none")
      elif kind == "research":
        style = dict(marker="x", color="0.6", markersize=4)
      else:
        n = peer_style.setdefault(p["optimizer"], len(peer_style))
        style = dict(marker=markers[n % len(markers)], color=f"C{1 + n % 9}", markersize=6)
      ax.errorbar(
        p["state"], p["error_ratio"], yerr=p["std_ratio"], linestyle="none", capsize=2, **style
      )
      if kind != "research":
        label = p["optimizer"].removeprefix("tg_") if kind in ("library", "earlier") else ""
        ax.annotate(
          label,
          (p["state"], p["error_ratio"]),
          fontsize=6,
          xytext=(3, 3),
          textcoords="offset points",
          color="C0",
        )
    ax.axhline(1.0, color="gray", lw=0.5)
    # A collapsed run's error (or spread) would squeeze every other point into a sliver: the
    # axis stops at PLOT_TOP and the points above it are written at its edge.
    if any(p["error_ratio"] + p["std_ratio"] > PLOT_TOP for p in points):
      lowest = min(p["error_ratio"] for p in points)
      ax.set_ylim(bottom=lowest - 0.1 * (PLOT_TOP - lowest), top=PLOT_TOP)
      for p in points:
        if p["error_ratio"] > PLOT_TOP:
          ax.annotate(
            f"{p['optimizer'].removeprefix('tg_')} {p['error_ratio']:.2f} (off the axis)",
            (p["state"], PLOT_TOP),
            fontsize=6,
            xytext=(3, -9),
            textcoords="offset points",
            color="C0" if _kind(p) in ("library", "earlier") else "0.3",
          )
    ax.set_xscale("log")
    ax.set(xlabel="optimizer state / AdamW's", ylabel="test error / AdamW's", title=task_name)
  for ax in axes.flat[len(tasks) :]:
    ax.axis("off")
  handles = [
    plt.Line2D([], [], marker="o", color="C0", label="tensor_galore_adamw (settings: labels)"),
    plt.Line2D(
      [],
      [],
      marker="o",
      color="C0",
      markerfacecolor="none",
      ls="none",
      label=f"the same, tensor_galore_optax {GENERATION_VERSIONS[1]}",
    ),
    plt.Line2D([], [], marker="x", color="0.6", ls="none", label="research compositions"),
  ] + [
    plt.Line2D(
      [], [], marker=markers[n % len(markers)], color=f"C{1 + n % 9}", ls="none", label=name
    )
    for name, n in peer_style.items()
  ]
  fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)


def collect() -> None:
  """Writes frontier.png, frontier.md, frontier.json (the points) and settings.json."""
  points = {t: summarise(t) for t in frontier_tasks.TASKS}
  plot(points, RESULTS / "frontier.png")
  (RESULTS / "frontier.md").write_text(markdown(points))
  (RESULTS / "summary.md").write_text(summary(points))
  (RESULTS / "frontier.json").write_text(json.dumps(points, indent=1))
  (RESULTS / "settings.json").write_text(json.dumps(SETTINGS, indent=2) + "\n")
  print((RESULTS / "frontier.md").read_text())


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", choices=tuple(frontier_tasks.TASKS))
  parser.add_argument(
    "--optimizers",
    help=f"comma-separated names (default: {','.join(DEFAULT_ORDER)}); 'list' lists them",
  )
  parser.add_argument(
    "--stage",
    choices=("lr", "seeds", "all"),
    default="all",
    help="lr: seed 0 at the three rates; seeds: seeds 1 and 2 at the best; all: both",
  )
  parser.add_argument("--seeds", help="the seeds beyond 0 (default: the task's, 1,2 mostly)")
  parser.add_argument("--dry-run", action="store_true", help="print the runs that would train")
  parser.add_argument("--plot", action="store_true", help="write the figure and tables")
  args = parser.parse_args(argv)
  if args.optimizers == "list":
    for name, opt in OPTIMIZERS.items():
      print(f"{name:32s} {opt.call}")
    return 0
  if args.task is None and not args.plot:
    parser.error("give --task or --plot")
  if args.task:
    names = args.optimizers.split(",") if args.optimizers else list(DEFAULT_ORDER)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
      parser.error(f"unknown optimizers {unknown}; see --optimizers list")
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s]
    for name in names:
      if OPTIMIZERS[name].call_for(args.task) is None:
        print(f"[{args.task}] {name}: not applicable")
        continue
      train_optimizer(args.task, name, args.stage, seeds, args.dry_run)
  if args.plot:
    collect()
  return 0


if __name__ == "__main__":
  sys.exit(main())
