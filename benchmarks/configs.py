"""Configuration of a benchmark training run, and its command-line flags.

`Config` holds every setting of a run of `benchmarks.train`, with defaults
those of the FNO demo (``python -m examples.fno``): a Navier-Stokes data set on
a 64 x 64 grid (viscosity 1e-3, vorticity at ``t = 0`` to ``t = 1``) and the
small FNO, trained together on a 2-core CPU in about ten minutes. Each field
says what it sets once, in its ``help`` metadata: `add_arguments` turns the
fields into flags (``--n-train`` for ``n_train``) with that help, `from_args`
turns parsed flags back into a `Config`, and `validate` rejects bad settings
with a `ConfigError` that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import typing

from benchmarks import baselines, losses, recipe
from benchmarks import variants as optimizers
from examples.fno import model
from examples.fno.data import PDES

PRESETS = {**model.PRESETS, **baselines.PRESETS}
"""Every model by name: the FNO's presets, and the conv net's and the MLP's."""


class ConfigError(ValueError):
  """Invalid settings or input data: the run cannot start (a usage error)."""


def _field(default, help: str, **flag) -> dataclasses.Field:
  """A `Config` field with its flag's ``help``.

  Args:
    default: The default value.
    help: What the field sets, as ``--help`` shows it.
    **flag: Arguments of `argparse`'s ``add_argument`` (``metavar``,
      ``choices``, ``type``), ``bound`` (``"positive"`` or
      ``"non-negative"``, checked by `validate`) and ``group`` (fields of one
      group are mutually exclusive flags).

  Returns:
    The dataclass field.
  """
  return dataclasses.field(default=default, metadata={"help": help, **flag})


def _rank(text: str) -> float | int:
  """Parses a rank: an int (``"8"``) or a fraction (``"0.25"``)."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid rank {text!r}: expected an int or a float") from None


def _scale(text: str) -> float | str:
  """Parses a scale: ``"matched"`` or a positive number."""
  if text == "matched":
    return text
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"invalid scale {text!r}: expected 'matched' or a number"
    ) from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"invalid scale {text!r}: a number must be positive")
  return value


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one training run; each field's ``help`` says what it sets."""

  data: str | None = _field(
    None,
    "train on this .npz file (keys x_train, y_train, x_test, y_test) instead of generated data",
    metavar="FILE.npz",
    group="source",
  )
  pde: str = _field(
    "navier_stokes", "generate (and cache) this data set", choices=PDES, group="source"
  )
  # Generating 1000 + 200 samples takes under ten seconds; an epoch of 1000
  # samples of the small preset 20 to 30 s on 2 CPU cores.
  n_train: int = _field(1000, "generated training samples", metavar="N", bound="positive")
  n_test: int = _field(200, "generated test samples", metavar="M", bound="positive")
  resolution: int = _field(64, "generated grid size", metavar="S", bound="positive")
  optimizer: str = _field(optimizers.DEFAULT, "optimizer", choices=optimizers.OPTIMIZERS)
  rank: float | int | None = _field(
    None,
    "projection rank, a fraction of every projected mode or an int (default: --tensor-rank "
    "for the tensor_galore variants; for galore, the int rank matching tensor_galore's state "
    "bytes at --tensor-rank)",
    type=_rank,
    metavar="R",
    bound="positive",
  )
  tensor_rank: float = _field(
    0.25,
    "the Tensor-GaLore variants' default rank, and galore's memory target",
    metavar="R",
    bound="positive",
  )
  # The library's default, as the demo's.
  update_proj_gap: int = _field(
    200, "steps between factor refreshes", metavar="T", bound="positive"
  )
  scale: float | str = _field(
    "matched",
    "the projected weights' step: 'matched' (as long as full-size Adam's) or a number "
    "multiplying the back-projected update (GaLore's alpha; 1 is the paper's); unused by adamw",
    type=_scale,
    metavar="A",
  )
  residual_scale: float = _field(
    4.0,
    "the step of the part of each projected gradient outside its subspace, relative to the "
    "projected step (root mean square); 0 drops it (GaLore's); unused by adamw",
    metavar="S",
    bound="non-negative",
  )
  projection: str = _field(
    "fewest",
    "which modes tensor_galore_defaults projects: the fewest that keep the rank's fraction "
    "(the library's default), or all that the rank can cut (the paper's)",
    choices=optimizers.PROJECTIONS,
  )
  preset: str = _field(
    "small",
    "model preset: an FNO's, or cnn (3 x 3 convolutions) or mlp (dense layers on the "
    "flattened field) for layers other than spectral ones",
    choices=PRESETS,
  )
  modes: int | None = _field(
    None,
    "Fourier modes per axis, clipped to the grid (default: the preset's)",
    metavar="M",
    bound="positive",
  )
  width: int | None = _field(
    None, "channel width (default: the preset's)", metavar="W", bound="positive"
  )
  remat: bool = _field(
    False,
    "recompute the activations of each Fourier block, the lifting and the projection in "
    "the backward pass instead of keeping them",
  )
  remat_policy: str = _field(
    "nothing_saveable",
    "what a rematerialised segment keeps (with --remat)",
    choices=recipe.REMAT_POLICIES,
  )
  scan_layers: bool = _field(
    False, "stack the Fourier blocks' parameters on a layer axis and run them with one scan"
  )
  pointwise_chunk: int | None = _field(
    None,
    "run the lifting and projection MLPs on this many samples at a time (with --remat, their "
    "backward pass holds one chunk's activations)",
    metavar="N",
    bound="positive",
  )
  activation_dtype: str = _field(
    "float32",
    "dtype of the pointwise layers and GELUs (FFTs stay in float32)",
    choices=("float32", "bfloat16"),
  )
  # 15 epochs of the small preset fit the ten-minute CPU budget.
  epochs: int = _field(15, "passes over the training set", metavar="E", bound="positive")
  batch_size: int = _field(20, "training samples per step", metavar="B", bound="positive")
  eval_batch_size: int = _field(50, "samples per evaluation step", metavar="B", bound="positive")
  # Tuned: the best of a sweep of 3e-3 to 4.8e-2 for AdamW and Tensor-GaLore alike.
  lr: float = _field(
    2.4e-2,
    "peak learning rate, reached after one epoch of linear warm-up and decayed to 1%% of it "
    "by a cosine",
    metavar="LR",
    bound="positive",
  )
  weight_decay: float = _field(1e-4, "decoupled weight decay", metavar="WD", bound="non-negative")
  loss: str = _field("l2", "relative training loss", choices=losses.LOSSES)
  seed: int = _field(
    0, "seed of the initialisation and the shuffling, not of the data", metavar="K"
  )
  out: str = _field("runs/fno", "output directory: metrics and plots", metavar="DIR")
  overwrite: bool = _field(False, "replace the run already in --out")
  progress: bool = _field(
    True, "show progress bars (on a terminal; redirected output gets per-epoch lines only)"
  )


# Metadata keys that are not arguments of `argparse`'s `add_argument`.
_OWN_KEYS = ("help", "group", "bound")
_BOUNDS = {"positive": lambda v: v > 0, "non-negative": lambda v: v >= 0}


def flag(name: str) -> str:
  """The command-line flag of field ``name``: ``n_train`` is ``--n-train``."""
  return "--" + name.replace("_", "-")


def _value_type(name: str) -> type:
  """The type a field's values have, without ``None``: ``int | None`` gives `int`."""
  hint = typing.get_type_hints(Config)[name]
  return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def add_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
  """Adds one flag per `Config` field to ``parser``, defaulting to `Config`'s.

  A flag's help is the field's, followed by its default unless that is
  ``None``. A bool field is a switch: ``--remat`` sets a ``False`` default,
  ``--no-progress`` (help: "do not" and the field's) clears a ``True`` one.
  Fields of one ``group`` are mutually exclusive.

  Args:
    parser: The parser to extend.
    skip: Field names to leave out (e.g. those a driver sets itself).
  """
  groups = {}
  for field in dataclasses.fields(Config):
    if field.name in skip:
      continue
    meta = field.metadata
    kwargs = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
    kwargs.update(dest=field.name, default=field.default, help=meta["help"])
    value_type = _value_type(field.name)
    if value_type is bool:
      kwargs["action"] = "store_false" if field.default else "store_true"
      option = flag(("no_" if field.default else "") + field.name)
      if field.default:
        kwargs["help"] = "do not " + kwargs["help"]
    else:
      kwargs.setdefault("type", value_type)
      option = flag(field.name)
      if field.default is not None:
        kwargs["help"] += " (default: %(default)s)"
    target = parser
    if meta.get("group"):
      if meta["group"] not in groups:
        groups[meta["group"]] = parser.add_mutually_exclusive_group()
      target = groups[meta["group"]]
    target.add_argument(option, **kwargs)


def from_args(args: argparse.Namespace, **overrides) -> Config:
  """Builds a `Config` from parsed flags; ``overrides`` take precedence."""
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in fields}
  return Config(**{**values, **overrides})


def validate(config: Config) -> None:
  """Checks every setting on its own, before any data is read or generated.

  Args:
    config: The settings.

  Raises:
    ConfigError: Naming the flag: an unknown choice, a number that is not
      finite or out of its bound, a fraction rank above 1, an ``--out`` that
      is a file.
  """
  for field in dataclasses.fields(Config):
    value, meta = getattr(config, field.name), field.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
      raise ConfigError(f"{flag(field.name)} must be one of {tuple(choices)}, got {value!r}")
    bound = meta.get("bound")
    if value is None or bound is None:
      continue
    if not (math.isfinite(value) and _BOUNDS[bound](value)):
      raise ConfigError(f"{flag(field.name)} must be a finite {bound} number, got {value}")
  if config.scale != "matched" and not (
    isinstance(config.scale, (int, float)) and math.isfinite(config.scale) and config.scale > 0
  ):
    raise ConfigError(f"--scale must be 'matched' or a positive number, got {config.scale!r}")
  for name in ("rank", "tensor_rank"):
    value = getattr(config, name)
    if isinstance(value, float) and value > 1:
      raise ConfigError(f"{flag(name)} must be at most 1 as a fraction, got {value}")
  if pathlib.Path(config.out).is_file():
    raise ConfigError(f"--out {config.out} is a file; name a directory")
