"""What the benchmarks share: configurations, the FNO train step, timing."""

import os

# On CPU, LAPACK (eigh, QR, SVD inside XLA's custom calls) runs on OpenBLAS, whose
# worker threads spin against XLA's own threads: a 32x32 complex eigh measured
# 0.1 ms alone and over 100 ms inside a busy process. One LAPACK thread avoids it.
# Must be set before numpy/jax load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples.fno import configs, losses, model, optimizers  # noqa: E402
from tensor_galore_optax import optimizer_state_bytes  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A model and the batch it trains on."""

  preset: model.FNOConfig
  resolution: int
  batch: int


_EXAMPLE = configs.Config()

CONFIGS = {
  # The FNO example's CPU default (NS-64).
  "small": BenchConfig(
    model.PRESETS[_EXAMPLE.preset], resolution=_EXAMPLE.resolution, batch=_EXAMPLE.batch_size
  ),
  # The Tensor-GaLore paper's Navier-Stokes model: spectral weights (64, 64, 64, 33).
  "ns128": BenchConfig(model.PRESETS["ns128"], resolution=128, batch=8),
}


def machine() -> str:
  device = jax.devices()[0]
  return (
    f"{platform.machine()} {device.platform} ({device.device_kind}), "
    f"{jax.device_count()} device(s), jax {jax.__version__}"
  )


def build_params(config: BenchConfig, *, remat: bool = False, seed: int = 0):
  """``(graphdef, params)`` of the configured FNO (1 input and 1 output channel)."""
  net = config.preset.make(
    1, 1, resolution=(config.resolution,) * 2, remat=remat, rngs=nnx.Rngs(seed)
  )
  return nnx.split(net)


def abstract_batch(config: BenchConfig):
  shape = (config.batch, config.resolution, config.resolution, 1)
  return jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32)


def make_optimizer(name: str, rank, params, lr=1e-3, **kwargs):
  """The example's optimizers; GaLore's int rank matches Tensor-GaLore's bytes at ``rank``."""
  if name == "galore":
    tg_bytes = optimizer_state_bytes(
      optimizers.make_optimizer("tensor_galore", lr, rank=rank, **kwargs), params
    )
    rank = optimizers.matched_galore_rank(params, tg_bytes, **kwargs)
  return optimizers.make_optimizer(name, lr, rank=rank, **kwargs), rank


def train_step(graphdef, optimizer: optax.GradientTransformation):
  """Forward, backward (complex gradients conjugated), optimizer, apply_updates."""

  def step(params, opt_state, x, y):
    def loss_fn(p):
      return losses.relative_lp(model.apply(graphdef, p, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads = optax.tree.conj(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def timed(fn, *args, repeats: int) -> float:
  """Median wall time of ``fn(*args)`` after a warm-up call (compile excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def report(rows: list[dict], table: str, out: pathlib.Path | None) -> None:
  """Prints the machine and the table; writes ``out`` (JSON) and the table beside it (.md)."""
  print(f"\n{machine()}\n\n{table}")
  if out:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
