"""Compares AdamW, GaLore and Tensor-GaLore on the same data, seed and model.

Run from the repository root::

  python examples/fno/compare.py --ranks 0.2,0.1 --out runs/compare

AdamW trains once; Tensor-GaLore trains at each rank, and GaLore at the int
rank whose optimizer state is closest in bytes to Tensor-GaLore's at that
rank. Every other flag is `train.py`'s and applies to all runs. Each run
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

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples.fno import train  # noqa: E402, I001  (first: it sets LAPACK's threads)
from examples.fno import configs, plots  # noqa: E402

COLUMNS = (
  ("optimizer", "optimizer", "{}"),
  ("rank", "rank", "{}"),
  ("tensor_rank", "Tensor-GaLore rank (memory)", "{:g}"),
  ("test_rel_l2", "test rel L2", "{:.4f}"),
  ("optimizer_state_bytes", "optimizer state (bytes)", "{:,}"),
  ("state_ratio", "state / AdamW", "{:.3f}"),
  ("step_seconds", "step (s)", "{:.4f}"),
  ("step_ratio", "step / AdamW", "{:.2f}"),
  ("identity_rel_l2", "identity rel L2", "{:.4f}"),
)


def runs(config: configs.Config, ranks: list[float]) -> list[configs.Config]:
  """The runs of a comparison: AdamW, then GaLore and Tensor-GaLore per rank."""
  out = pathlib.Path(config.out)
  result = [dataclasses.replace(config, optimizer="adamw", rank=None, out=str(out / "adamw"))]
  for rank in ranks:
    # rank=None makes GaLore match Tensor-GaLore's state bytes at tensor_rank.
    for name, own_rank in (("galore", None), ("tensor_galore", rank)):
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
  lines = [
    "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
    "|" + "---|" * len(COLUMNS),
  ]
  for row in rows:
    cells = ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


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
  """Runs the comparison; bad input exits with status 2 and a message on stderr."""
  parser = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--ranks",
    type=parse_ranks,
    default=[0.2, 0.1],
    help="Tensor-GaLore ranks, comma-separated (default: 0.2,0.1)",
  )
  configs.add_arguments(parser, skip=("optimizer", "rank", "tensor_rank", "resume"))
  parser.set_defaults(out="runs/compare")
  args = parser.parse_args(argv)
  config = configs.from_args(args)
  out = pathlib.Path(config.out)
  try:
    metrics = [train.train_and_evaluate(run) for run in runs(config, args.ranks)]
  except ValueError as e:
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
