"""What the benchmarks share: configurations, the FNO train step, timing, reports."""

import contextlib
import dataclasses
import json
import pathlib
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import baselines, configs, train
from benchmarks import recipe as recipe_module
from benchmarks import variants as optimizers
from examples.fno import model


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A model and the batch it trains on."""

  preset: Any
  resolution: int
  batch: int


_EXAMPLE = configs.Config()

CONFIGS = {
  # The FNO demo's model and batch (NS-64).
  "small": BenchConfig(
    model.PRESETS[_EXAMPLE.preset], resolution=_EXAMPLE.resolution, batch=_EXAMPLE.batch_size
  ),
  # The Tensor-GaLore paper's Navier-Stokes model: spectral weights (64, 64, 64, 33).
  "ns128": BenchConfig(model.PRESETS["ns128"], resolution=128, batch=8),
  # The conv net and the MLP of the accuracy study `layers` (Darcy 16 x 16).
  "cnn16": BenchConfig(baselines.PRESETS["cnn"], resolution=16, batch=20),
  "mlp16": BenchConfig(baselines.PRESETS["mlp"], resolution=16, batch=20),
}


def machine() -> str:
  """The platform, the first device's kind, the device count and jax's version."""
  device = jax.devices()[0]
  return (
    f"{platform.machine()} {device.platform} ({device.device_kind}), "
    f"{jax.device_count()} device(s), jax {jax.__version__}"
  )


# How the FNO trades compute for memory (keyword arguments of `recipe.RecipeFNO`), by name.
RECIPES = {
  "none": {},
  # Each block, the lifting and the projection rematerialised, blocks unrolled.
  "remat": {"remat": True},
  # The blocks stacked and scanned, each rematerialised.
  "remat+scan": {"remat": True, "scan_layers": True},
  # And the lifting and projection MLPs one sample at a time.
  "remat+scan+chunk": {"remat": True, "scan_layers": True, "pointwise_chunk": 1},
  # And the pointwise layers in bfloat16.
  "remat+scan+chunk+bf16": {
    "remat": True,
    "scan_layers": True,
    "pointwise_chunk": 1,
    "dtype": jnp.bfloat16,
  },
}


# The recipe of the memory targets. bfloat16 is left out: XLA:CPU computes
# bfloat16 in float32, so on CPU it adds conversions and saves nothing.
FULL_RECIPE = "remat+scan+chunk"


def build_params(config: BenchConfig, *, recipe: str = "none", seed: int = 0):
  """``(graphdef, params)`` of the configured FNO (1 input and 1 output channel).

  Args:
    config: The model and batch.
    recipe: A key of `RECIPES`.
    seed: The initialisation's seed.
  """
  fno = isinstance(config.preset, model.FNOConfig)
  if not fno and recipe != "none":
    raise ValueError(f"the memory recipe {recipe!r} applies to the FNO only")
  kwargs = {"cls": recipe_module.RecipeFNO, **RECIPES[recipe]} if fno else {}
  net = config.preset.make(1, 1, resolution=(config.resolution,) * 2, rngs=nnx.Rngs(seed), **kwargs)
  return nnx.split(net)


def abstract_batch(config: BenchConfig):
  """Shape structs of one batch ``(x, y)``."""
  shape = (config.batch, config.resolution, config.resolution, 1)
  return jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32)


def make_optimizer(name: str, rank, params, lr=1e-3, **settings):
  """The optimizer variant ``name`` at Tensor-GaLore rank ``rank``, and its own rank.

  Tensor-GaLore takes ``rank``; GaLore the int rank whose state matches
  Tensor-GaLore's bytes at ``rank`` (`optimizers.build`).
  """
  return optimizers.build(name, lr, params, tensor_rank=rank, **settings)


def has_rank(name: str) -> bool:
  """Whether optimizer variant ``name`` takes a rank (AdamW and Adafactor do not)."""
  return optimizers.OPTIMIZERS[name].default_rank is not None


def rank_text(row: dict) -> str:
  """A row's rank for a table, with GaLore's int rank: ``0.25 (r=35)``; ``""`` for none."""
  text = "" if row["rank"] is None else f"{row['rank']}"
  if "galore_int_rank" in row:
    text += f" (r={row['galore_int_rank']})"
  return text


@contextlib.contextmanager
def _without_persistent_cache(active: bool = True):
  """JAX's persistent compilation cache off inside (if ``active``).

  XLA writes its dumps only when it compiles, and a cache hit (whose key
  ignores ``xla_dump_to``) would leave none. JAX decides once whether the cache
  is used, so the decision is reset on the way in and out.
  """
  if not active:
    yield
    return
  was_on = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", was_on)
    compilation_cache.reset_cache()


def compiled_memory(step, *args, breakdown: bool = False) -> dict:
  """XLA's memory analysis of ``step`` compiled on ``args`` (arrays or shape structs).

  ``step_bytes`` is the peak estimate ``argument + output + temp - alias``:
  donated outputs alias their arguments and count once.

  Args:
    step: A jitted function.
    *args: Its arguments.
    breakdown: Also split XLA's peak of live buffers by `PEAK_CATEGORIES`
      (keys ``peak_<category>_bytes`` and ``peak_bytes``), from the buffer
      analysis XLA dumps for this one compilation (`parse_peak_breakdown`).
  """
  import tempfile

  with tempfile.TemporaryDirectory() as directory, _without_persistent_cache(breakdown):
    options = {"xla_dump_to": directory} if breakdown else None
    compiled = step.lower(*args).compile(compiler_options=options)
    dumps = [d.read_text() for d in pathlib.Path(directory).glob("*-live-range.txt")]
  analysis = compiled.memory_analysis()
  sizes = {
    "argument_bytes": analysis.argument_size_in_bytes,
    "output_bytes": analysis.output_size_in_bytes,
    "temp_bytes": analysis.temp_size_in_bytes,
    "alias_bytes": analysis.alias_size_in_bytes,
  }
  sizes["step_bytes"] = (
    sizes["argument_bytes"] + sizes["output_bytes"] + sizes["temp_bytes"] - sizes["alias_bytes"]
  )
  if breakdown:
    (dump,) = [d for d in dumps if "Stack trace breakdown" in d][-1:]
    peak = parse_peak_breakdown(dump)
    sizes.update({f"peak_{k}_bytes": v for k, v in peak.items()})
    sizes["peak_bytes"] = sum(peak.values())
  return sizes


def timed(fn, *args, repeats: int) -> float:
  """Median wall time of ``fn(*args)`` after a warm-up call (compile excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def report(results: dict, table: str, out: pathlib.Path | None) -> None:
  """Prints the machine and the table; writes ``out`` (JSON) and the table beside it (.md).

  Args:
    results: What the JSON holds besides the machine, e.g. ``{"rows": rows}``.
    table: The Markdown table(s).
    out: The JSON file, or ``None`` to write nothing.
  """
  print(f"\n{machine()}\n\n{table}")
  if out:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")


def check_all(parser, plan: list) -> None:
  """Checks every run of ``plan`` before any trains: a usage error names the wrong one."""
  try:
    for config in plan:
      train.check_config(config)
  except configs.ConfigError as e:
    parser.error(f"{config.out}: {e}")


# What each category of `peak_breakdown` holds, in the order of the tables.
PEAK_CATEGORIES = {
  "params": "the parameters (donated: updated in place)",
  "optimizer_state": "the optimizer state (donated)",
  "batch": "the batch",
  "saved_spectral": "forward values of the spectral convolutions kept for the backward pass "
  "(FFTs, spectra)",
  "saved_pointwise": "forward values of the pointwise layers and GELUs kept for the backward pass",
  "backward": "the backward pass's own values: gradients and their temporaries",
  "optimizer_update": "the optimizer's temporaries (projections, refreshes, new moments)",
  "other": "buffers XLA made without a JAX name: type conversions, copies, constants",
}


def _category(path: list[str]) -> str:
  """The `PEAK_CATEGORIES` key of one entry of XLA's peak breakdown, from its path."""
  head = path[0]
  if head.startswith("params"):
    return "params"
  if head.startswith("opt_state"):
    return "optimizer_state"
  if head in ("x", "y"):
    return "batch"
  if "/" not in head:
    return "other"
  if "transpose(" in head:
    return "backward"
  if "jvp(" in head:
    return "saved_spectral" if "spectral" in head else "saved_pointwise"
  return "optimizer_update"


def parse_peak_breakdown(text: str) -> dict[str, int]:
  """Bytes per `PEAK_CATEGORIES` key from XLA's live-range dump of one module.

  XLA:CPU writes a "Stack trace breakdown for peak usage" tree in
  ``*-live-range.txt``: one node per buffer (or per level of a parameter's
  path), each with the bytes it holds itself (``current``). The node names
  are the operations' JAX names, e.g. ``jit(train_step)/jvp(spectral)/fft``
  or ``jit(train_step)/transpose(jvp())/add_any``, so the forward values still
  alive at the peak are those named ``jvp(...)`` and the backward pass's
  values those named ``transpose(...)``.
  """
  lines = text.split("Stack trace breakdown for peak usage:", 1)[1].splitlines()[2:]
  sizes = dict.fromkeys(PEAK_CATEGORIES, 0)
  path: list[str] = []
  for line in lines:
    marker = max(line.find("├── "), line.find("└── "))
    if marker < 0:
      break
    depth = (marker - 6) // 4
    name, _, rest = line[marker + 4 :].rpartition(" (")
    path[depth:] = [name]
    current = rest.split("current: ", 1)[1].split(" bytes", 1)[0]
    sizes[_category(path)] += int(current.replace("\u202f", "").replace(" ", ""))
  return sizes
