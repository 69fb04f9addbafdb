"""Which moment policy trains best: keep, reset or rotate Adam's moments at a refresh.

Trains the FNO example with Tensor-GaLore under each policy and several seeds
(same data, same everything else), with a refresh gap short enough that every
run crosses several refreshes, and reports the test relative L2 per run and its
mean and spread per policy.

Usage, from the repository root::

  python -m benchmarks.moment_policy --seeds 0,1,2 --epochs 6 --gap 50 \\
      --out benchmarks/results/moment_policy.json
"""

import argparse
import dataclasses
import pathlib
import statistics
import sys

from benchmarks import common
from examples.fno import configs
from examples.fno.tables import markdown_table
from tensor_galore_optax import MOMENT_POLICIES

COLUMNS = (
  ("policy", lambda s: s["policy"]),
  ("test rel L2 per seed", lambda s: ", ".join(f"{e:.4f}" for e in s["errors"])),
  ("mean", lambda s: f"{s['mean']:.4f}"),
  ("stdev", lambda s: f"{s['stdev']:.4f}"),
)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.moment_policy", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--gap", type=int, default=50)
  parser.add_argument("--rank", type=float, default=0.25)
  parser.add_argument("--policies", default=",".join(MOMENT_POLICIES))
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/moment_policy.json"))
  parser.add_argument(
    "--overwrite", action="store_true", help="replace the runs already beside --out"
  )
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  policies = args.policies.split(",")
  plan = [
    dataclasses.replace(
      configs.Config(),
      optimizer="tensor_galore",
      rank=args.rank,
      epochs=args.epochs,
      update_proj_gap=args.gap,
      moment_policy=policy,
      seed=seed,
      out=str(args.out.parent / f"moment_{policy}_{seed}"),
      overwrite=args.overwrite,
      progress=False,
    )
    for policy in policies
    for seed in seeds
  ]
  runs = []
  for config, metrics in common.train_all(parser, plan):
    runs.append(
      {
        "policy": config.moment_policy,
        "seed": config.seed,
        "test_rel_l2": metrics["test_rel_l2"],
        "train_rel_l2": metrics["train_rel_l2"],
      }
    )
    print(
      f"{config.moment_policy:7s} seed {config.seed}: test rel L2 {metrics['test_rel_l2']:.4f}",
      flush=True,
    )
  summary = {}
  for policy in policies:
    errors = [r["test_rel_l2"] for r in runs if r["policy"] == policy]
    summary[policy] = {
      "errors": errors,
      "mean": statistics.mean(errors),
      "stdev": statistics.stdev(errors) if len(errors) > 1 else 0.0,
    }
  table = markdown_table([{"policy": p, **s} for p, s in summary.items()], COLUMNS)
  settings = vars(args) | {"out": str(args.out)}
  common.report({"settings": settings, "runs": runs, "summary": summary}, table, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
