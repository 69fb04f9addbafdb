"""Compares the projected optimizer variants on the same data, seed and model, at several ranks.

Run from the repository root::

  python -m benchmarks.compare --ranks 0.25 --out runs/compare

AdamW trains once; at each rank, every variant with a rank
(`benchmarks.variants`): Tensor-GaLore (every mode), the input channels only,
the library's defaults, and matrix GaLore
(``optax.contrib.galore``'s side, at the int rank whose optimizer state is
closest in bytes to Tensor-GaLore's at that rank). FNO presets only. Every
other flag is ``python -m benchmarks.train``'s and applies to all runs. Each run
writes its own directory under ``--out``; the driver adds ``compare.md`` and
``compare.json`` (one row per run) and ``compare.png`` (test error against
optimizer memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from benchmarks import configs, plots, train
from benchmarks import variants as optimizers
from benchmarks.tables import cell, markdown_table

COLUMNS = (
  ("optimizer", cell("optimizer")),
  ("rank", cell("rank")),
  ("Tensor-GaLore rank (memory)", cell("tensor_rank", "{:g}")),
  ("test rel L2", cell("test_rel_l2", "{:.4f}")),
  ("optimizer state (bytes)", cell("optimizer_state_bytes", "{:,}")),
  ("state / AdamW", cell("state_ratio", "{:.3f}")),
  ("step (s)", cell("step_seconds", "{:.4f}")),
  ("step / AdamW", cell("step_ratio", "{:.2f}")),
  ("identity rel L2", cell("identity_rel_l2", "{:.4f}")),
)


def runs(config: configs.Config, ranks: list[float]) -> list[configs.Config]:
  """The runs of a comparison: AdamW, then every projected optimizer per rank."""
  out = pathlib.Path(config.out)
  result = [dataclasses.replace(config, optimizer="adamw", rank=None, out=str(out / "adamw"))]
  for rank in ranks:
    for name, variant in optimizers.OPTIMIZERS.items():
      if variant.default_rank is None:  # AdamW trains once; Adafactor has no rank
        continue
      # rank=None makes GaLore match Tensor-GaLore's state bytes at tensor_rank.
      own_rank = None if name == "galore" else rank
      result.append(
        dataclasses.replace(
          config,
          optimizer=name,
          rank=own_rank,
          tensor_rank=rank,
          out=str(out / f"{name}_{rank:g}"),
        )
      )
  return result


def table_rows(metrics: list[dict]) -> list[dict]:
  """One row per run, with state size and step time relative to AdamW's (the first run)."""
  base = metrics[0]
  return [
    dict(
      optimizer=m["optimizer"],
      rank=m["rank"],
      tensor_rank=m["config"]["tensor_rank"] if m["optimizer"] != "adamw" else None,
      test_rel_l2=m["test_rel_l2"],
      train_rel_l2=m["train_rel_l2"],
      optimizer_state_bytes=m["optimizer_state_bytes"],
      state_ratio=m["optimizer_state_bytes"] / base["optimizer_state_bytes"],
      step_seconds=m["step_seconds"],
      step_ratio=m["step_seconds"] / base["step_seconds"],
      identity_rel_l2=m["identity_rel_l2"],
    )
    for m in metrics
  ]


def markdown(rows: list[dict]) -> str:
  """Formats the rows as a Markdown table."""
  return markdown_table(rows, COLUMNS) + "\n"


def parse_ranks(text: str) -> list[float]:
  """Parses ``"0.25,0.1"``; every rank must be a fraction in (0, 1]."""
  try:
    ranks = [float(r) for r in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid --ranks {text!r}: expected e.g. 0.25,0.1") from None
  if not ranks or not all(0 < r <= 1 for r in ranks):
    raise argparse.ArgumentTypeError(f"--ranks must be fractions in (0, 1], got {text!r}")
  return ranks


def main(argv: list[str] | None = None) -> int:
  """Runs the comparison; exits and fails as `benchmarks.train.main` does."""
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument(
    "--ranks",
    type=parse_ranks,
    default=[0.25],
    help="Tensor-GaLore ranks, comma-separated (default: 0.25)",
  )
  configs.add_arguments(parser, skip=("optimizer", "rank", "tensor_rank"))
  parser.set_defaults(out="runs/compare")
  args = parser.parse_args(argv)
  config = configs.from_args(args)
  out = pathlib.Path(config.out)
  plan = runs(config, args.ranks)
  try:
    # Every run's settings are checked before the first one trains.
    for run in plan:
      train.check_config(run)
    metrics = [train.train_and_evaluate(run) for run in plan]
  except configs.ConfigError as e:
    parser.error(str(e))
  rows = table_rows(metrics)
  (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
  (out / "compare.md").write_text(markdown(rows))
  plots.plot_compare(rows, out / "compare.png")
  print(markdown(rows))
  print(f"wrote {out}/compare.{{md,json,png}}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
