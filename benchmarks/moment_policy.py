"""Which moment policy trains best: keep, reset or rotate Adam's moments at a refresh.

Trains the FNO example with Tensor-GaLore under each policy and several seeds
(same data, same everything else), with a refresh gap short enough that every
run crosses several refreshes, and reports the test relative L2 per run and its
mean and spread per policy.

Usage::

  python benchmarks/moment_policy.py --seeds 0,1,2 --epochs 6 --gap 50 \\
      --out benchmarks/results/moment_policy.json
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402, F401  (first: it configures the process before jax loads)

from examples.fno import configs, train  # noqa: E402
from tensor_galore_optax import MOMENT_POLICIES  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--gap", type=int, default=50)
  parser.add_argument("--rank", type=float, default=0.25)
  parser.add_argument("--policies", default=",".join(MOMENT_POLICIES))
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/moment_policy.json"))
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = []
  for policy in args.policies.split(","):
    for seed in seeds:
      config = dataclasses.replace(
        configs.Config(),
        optimizer="tensor_galore",
        rank=args.rank,
        epochs=args.epochs,
        update_proj_gap=args.gap,
        moment_policy=policy,
        seed=seed,
        out=str(args.out.parent / f"moment_{policy}_{seed}"),
        progress=False,
      )
      metrics = train.train_and_evaluate(config)
      runs.append(
        {
          "policy": policy,
          "seed": seed,
          "test_rel_l2": metrics["test_rel_l2"],
          "train_rel_l2": metrics["train_rel_l2"],
        }
      )
      print(f"{policy:7s} seed {seed}: test rel L2 {metrics['test_rel_l2']:.4f}", flush=True)
  lines = ["| policy | test rel L2 per seed | mean | stdev |", "|---|---|---|---|"]
  summary = {}
  for policy in args.policies.split(","):
    errors = [r["test_rel_l2"] for r in runs if r["policy"] == policy]
    summary[policy] = {
      "mean": statistics.mean(errors),
      "stdev": statistics.stdev(errors) if len(errors) > 1 else 0.0,
    }
    lines.append(
      f"| {policy} | {', '.join(f'{e:.4f}' for e in errors)} | "
      f"{summary[policy]['mean']:.4f} | {summary[policy]['stdev']:.4f} |"
    )
  table = "\n".join(lines)
  print(f"\n{common.machine()}\n\n{table}")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(
    json.dumps(
      {
        "machine": common.machine(),
        "settings": vars(args) | {"out": str(args.out)},
        "runs": runs,
        "summary": summary,
      },
      indent=2,
    )
  )
  args.out.with_suffix(".md").write_text(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
