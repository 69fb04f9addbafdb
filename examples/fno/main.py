"""Trains a Fourier Neural Operator with AdamW, GaLore or Tensor-GaLore.

Run from the repository root::

  python -m examples.fno --optimizer tensor_galore --out runs/tg

The defaults generate (and cache) a 64 x 64 Navier-Stokes data set and train
the small FNO on it; ``--data FILE.npz`` trains on any file with ``x_train,
y_train, x_test, y_test``. The run writes ``metrics.json``, ``loss.png``,
``samples.png`` and per-epoch checkpoints (``--resume`` continues from the
latest) to ``--out``. The flags are the fields of `configs.Config`, the
training is `train.train_and_evaluate`. See ``docs/fno.md``.
"""

from __future__ import annotations

import argparse

from examples.fno import configs, train


def parser() -> argparse.ArgumentParser:
  """The command-line parser: one flag per `configs.Config` field."""
  p = argparse.ArgumentParser(prog="python -m examples.fno", description=__doc__.split("\n\n")[0])
  configs.add_arguments(p)
  return p


def main(argv: list[str] | None = None) -> int:
  """Runs the command line.

  Args:
    argv: Arguments, default ``sys.argv[1:]``.

  Returns:
    0 on success. Invalid settings or data exit with status 2 and a message on
    stderr before training starts; an error during training propagates with
    its traceback.
  """
  p = parser()
  config = configs.from_args(p.parse_args(argv))
  try:
    train.train_and_evaluate(config)
  except configs.ConfigError as e:
    p.error(str(e))
  return 0
