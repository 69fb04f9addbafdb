"""Configuration of the FNO training example, and its command-line flags.

`Config` holds every setting of a run with the defaults of the example: a
Navier-Stokes data set on a 64 x 64 grid (viscosity 1e-3, vorticity at
``t = 0`` to ``t = 1``) and an FNO that train together on a 2-core CPU in
about ten minutes. `add_arguments` exposes the fields as flags, and
`from_args` turns parsed flags back into a `Config`.
"""

from __future__ import annotations

import argparse
import dataclasses

# Names of the choices, kept here so that the parser needs no heavy import.
PDES = ("navier_stokes", "darcy")
OPTIMIZERS = ("adamw", "galore", "tensor_galore")
PRESETS = ("small", "ns128", "darcy")
LOSSES = ("l2", "h1")
MOMENT_POLICIES = ("keep", "reset", "rotate")


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one training run.

  Attributes:
    data: An ``.npz`` file with ``x_train, y_train, x_test, y_test``; if
      ``None``, a ``pde`` data set is generated (and cached) instead.
    pde: The PDE to generate data for, ``"navier_stokes"`` or ``"darcy"``.
    n_train: Training samples to generate.
    n_test: Test samples to generate.
    resolution: Grid size of the generated data.
    optimizer: ``"adamw"``, ``"galore"`` or ``"tensor_galore"``.
    rank: The projection rank. ``None`` means ``tensor_rank`` for
      ``tensor_galore``, and for ``galore`` the int rank whose optimizer state
      is closest in bytes to Tensor-GaLore's at ``tensor_rank``.
    tensor_rank: Tensor-GaLore's default rank, and the one that ``galore``'s
      state size is matched to.
    update_proj_gap: Steps between refreshes of the projection factors.
    moment_policy: What Adam's moments do at a refresh: ``"keep"``,
      ``"reset"`` or ``"rotate"``.
    refresh_method: How the factors are recomputed (see `tensor_galore`).
    preset: The model preset of ``examples.fno.model.PRESETS``.
    modes: Fourier modes on both axes, clipped to the grid; ``None`` keeps
      the preset's.
    width: Channel width; ``None`` keeps the preset's.
    remat: Whether to rematerialise the Fourier blocks in the backward pass.
    epochs: Passes over the training set.
    batch_size: Training samples per step, split over the mesh.
    eval_batch_size: Samples per evaluation step.
    lr: Peak learning rate, reached after one epoch of linear warm-up and
      decayed to 1% of it by a cosine over the remaining steps.
    weight_decay: Decoupled weight decay.
    loss: Training loss, relative ``"l2"`` or relative ``"h1"``.
    seed: Seeds the initialisation and the shuffling (not the data).
    out: Output directory: metrics, plots and checkpoints.
    resume: Whether to continue from the latest checkpoint in ``out``.
    mesh: Device mesh as ``"data=N"`` or ``"data=N,fsdp=M"``; ``None`` runs
      on one device.
    fsdp_min_size: Parameters with at least this many entries are sharded
      over the ``fsdp`` mesh axis.
    progress: Whether to show a progress bar.
  """

  data: str | None = None
  pde: str = "navier_stokes"
  # Generating 1000 + 200 samples takes under ten seconds; an epoch of 1000
  # samples of the small preset 20 to 30 s on 2 CPU cores.
  n_train: int = 1000
  n_test: int = 200
  resolution: int = 64
  optimizer: str = "tensor_galore"
  rank: float | None = None
  # 0.2 rather than the library's 0.25: the small model's short modes (16 and 9)
  # round up (ceil), so rank 0.25 keeps 0.30 of their entries and 0.2 keeps 0.25.
  tensor_rank: float = 0.2
  # About four refreshes per default run: the factors follow the gradient's
  # subspace as it drifts, without paying for a decomposition every epoch.
  update_proj_gap: int = 100
  moment_policy: str = "keep"
  refresh_method: str = "sthosvd"
  preset: str = "small"
  modes: int | None = None
  width: int | None = None
  remat: bool = False
  # 15 epochs of the small preset fit the ten-minute CPU budget.
  epochs: int = 15
  batch_size: int = 20
  eval_batch_size: int = 50
  lr: float = 3e-3
  weight_decay: float = 1e-4
  loss: str = "l2"
  seed: int = 0
  out: str = "runs/fno"
  resume: bool = False
  mesh: str | None = None
  fsdp_min_size: int = 2048
  progress: bool = True


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


def add_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
  """Adds one flag per `Config` field to ``parser``, defaulting to `Config`'s.

  Args:
    parser: The parser to extend.
    skip: Field names to leave out (e.g. those a driver sets itself).
  """
  defaults = Config()

  def add(name, flag, text, *, group=parser, show_default=True, **kwargs):
    if name in skip:
      return
    kwargs.setdefault("default", getattr(defaults, name))
    if show_default:
      text += " (default: %(default)s)"
    group.add_argument(flag, dest=name, help=text, **kwargs)

  source = parser.add_mutually_exclusive_group()
  add(
    "data",
    "--data",
    "train on this .npz file",
    group=source,
    metavar="FILE.npz",
    show_default=False,
  )
  add("pde", "--pde", "generate (and cache) this data set", group=source, choices=PDES)
  add("n_train", "--n-train", "generated training samples", type=int, metavar="N")
  add("n_test", "--n-test", "generated test samples", type=int, metavar="M")
  add("resolution", "--resolution", "generated grid size", type=int, metavar="S")
  add("optimizer", "--optimizer", "optimizer", choices=OPTIMIZERS)
  add(
    "rank",
    "--rank",
    "projection rank (default: --tensor-rank for tensor_galore; for "
    "galore, the rank matching tensor_galore's state bytes at --tensor-rank)",
    type=_rank,
    metavar="R",
    show_default=False,
  )
  add(
    "tensor_rank",
    "--tensor-rank",
    "tensor_galore's default rank, and galore's memory target",
    type=float,
    metavar="R",
  )
  add(
    "update_proj_gap", "--update-proj-gap", "steps between factor refreshes", type=int, metavar="T"
  )
  add("moment_policy", "--moment-policy", "Adam's moments at a refresh", choices=MOMENT_POLICIES)
  add("refresh_method", "--refresh-method", "how factors are recomputed", metavar="METHOD")
  add("preset", "--preset", "model preset", choices=PRESETS)
  add(
    "modes",
    "--modes",
    "Fourier modes per axis (default: the preset's)",
    type=int,
    metavar="M",
    show_default=False,
  )
  add(
    "width",
    "--width",
    "channel width (default: the preset's)",
    type=int,
    metavar="W",
    show_default=False,
  )
  add(
    "remat",
    "--remat",
    "rematerialise blocks in the backward pass",
    action="store_true",
    show_default=False,
  )
  add("epochs", "--epochs", "passes over the training set", type=int, metavar="E")
  add("batch_size", "--batch-size", "training samples per step", type=int, metavar="B")
  add("eval_batch_size", "--eval-batch-size", "samples per evaluation step", type=int, metavar="B")
  add("lr", "--lr", "peak learning rate", type=float, metavar="LR")
  add("weight_decay", "--weight-decay", "decoupled weight decay", type=float, metavar="WD")
  add("loss", "--loss", "relative training loss", choices=LOSSES)
  add("seed", "--seed", "initialisation and shuffling seed", type=int, metavar="K")
  add("out", "--out", "output directory", metavar="DIR")
  add(
    "resume", "--resume", "continue from DIR/checkpoints", action="store_true", show_default=False
  )
  add(
    "mesh",
    "--mesh",
    "device mesh (default: one device)",
    metavar="data=N[,fsdp=M]",
    show_default=False,
  )
  add(
    "fsdp_min_size",
    "--fsdp-min-size",
    "smallest parameter sharded over fsdp",
    type=int,
    metavar="N",
  )
  add(
    "progress", "--no-progress", "hide the progress bar", action="store_false", show_default=False
  )


def from_args(args: argparse.Namespace, **overrides) -> Config:
  """Builds a `Config` from parsed flags; ``overrides`` take precedence."""
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in fields}
  return Config(**{**values, **overrides})
