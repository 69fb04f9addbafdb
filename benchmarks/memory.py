"""Memory of a real FNO train step: AdamW, matrix GaLore and Tensor-GaLore side by side.

For every optimizer and rank, the whole train step (forward, backward,
optimizer update, ``apply_updates``) is jitted with params and optimizer state
donated, lowered on abstract shapes and compiled *without running it*. Per row:

* ``optimizer_state_bytes``: the summed bytes of every array in the optimizer
  state (moments in optax's default dtype, factors, counters);
* ``params_bytes``: the summed bytes of the parameters;
* ``step_bytes``: the compiled step's peak estimate from XLA's
  ``memory_analysis()``: ``argument + output + temp - alias`` bytes. Arguments
  are params, state and the batch; donation lets outputs alias the donated
  arguments, so aliased bytes are counted once.

Usage::

  python benchmarks/memory.py --config ns128 --out benchmarks/results/memory_ns128.json
"""

import argparse
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

from tensor_galore_optax import tree_bytes  # noqa: E402

RANKS = (0.25, 0.1, 0.05)


def compiled_step_memory(config, optimizer, params, *, remat: bool):
  graphdef, _ = common.build_params(config, remat=remat)
  step = jax.jit(common.train_step(graphdef, optimizer), donate_argnums=(0, 1))
  abstract_params = jax.eval_shape(lambda: params)
  abstract_state = jax.eval_shape(optimizer.init, params)
  x, y = common.abstract_batch(config)
  analysis = step.lower(abstract_params, abstract_state, x, y).compile().memory_analysis()
  return {
    "argument_bytes": analysis.argument_size_in_bytes,
    "output_bytes": analysis.output_size_in_bytes,
    "temp_bytes": analysis.temp_size_in_bytes,
    "alias_bytes": analysis.alias_size_in_bytes,
    "step_bytes": analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    + analysis.temp_size_in_bytes
    - analysis.alias_size_in_bytes,
    "optimizer_state_bytes": tree_bytes(abstract_state),
    "params_bytes": tree_bytes(abstract_params),
  }


def rows_for(config_name: str, ranks=RANKS, remats=(False, True)):
  config = common.CONFIGS[config_name]
  _, params = common.build_params(config)
  plan = [("adamw", None)] + [(name, r) for r in ranks for name in ("galore", "tensor_galore")]
  rows = []
  for remat in remats:
    for name, rank in plan:
      optimizer, used_rank = common.make_optimizer(name, rank if rank else 0.25, params)
      row = {"config": config_name, "optimizer": name, "rank": rank, "remat": remat}
      if name == "galore":
        row["galore_int_rank"] = used_rank
      row.update(compiled_step_memory(config, optimizer, params, remat=remat))
      rows.append(row)
      print(
        f"{name:14s} rank={rank!s:5s} remat={remat!s:5s} "
        f"state={row['optimizer_state_bytes'] / 2**20:9.1f} MiB "
        f"step={row['step_bytes'] / 2**20:9.1f} MiB",
        flush=True,
      )
  for row in rows:
    base = next(r for r in rows if r["optimizer"] == "adamw" and r["remat"] == row["remat"])
    row["state_vs_adamw"] = row["optimizer_state_bytes"] / base["optimizer_state_bytes"]
    row["step_vs_adamw"] = row["step_bytes"] / base["step_bytes"]
  return rows


def markdown(rows) -> str:
  mib = lambda b: f"{b / 2**20:,.1f}"
  lines = [
    "| optimizer | rank | remat | optimizer state MiB (vs adamw) | params MiB | step MiB (vs "
    "adamw) | temp MiB |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    rank = "" if r["rank"] is None else f"{r['rank']}"
    if "galore_int_rank" in r:
      rank += f" (r={r['galore_int_rank']})"
    lines.append(
      f"| {r['optimizer']} | {rank} | {r['remat']} | {mib(r['optimizer_state_bytes'])} "
      f"({r['state_vs_adamw']:.3f}x) | {mib(r['params_bytes'])} | {mib(r['step_bytes'])} "
      f"({r['step_vs_adamw']:.3f}x) | {mib(r['temp_bytes'])} |"
    )
  return "\n".join(lines)


def bar_chart(rows, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in rows if not r["remat"]]
  labels = [r["optimizer"] + ("" if r["rank"] is None else f"\n{r['rank']}") for r in rows]
  fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
  xs = range(len(rows))
  ax.bar(
    [x - 0.2 for x in xs],
    [r["optimizer_state_bytes"] / 2**20 for r in rows],
    0.4,
    label="optimizer state",
  )
  ax.bar(
    [x + 0.2 for x in xs], [r["step_bytes"] / 2**20 for r in rows], 0.4, label="compiled step (XLA)"
  )
  ax.set_xticks(list(xs), labels, fontsize=8)
  ax.set_ylabel("MiB")
  ax.set_title(f"{rows[0]['config']}: memory per optimizer and rank")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(common.CONFIGS), default="small")
  parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
  parser.add_argument("--no-remat", action="store_true", help="skip the remat rows")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="JSON file; a .md table and a .png chart are written beside it",
  )
  args = parser.parse_args(argv)
  ranks = tuple(float(r) for r in args.ranks.split(","))
  rows = rows_for(args.config, ranks, (False,) if args.no_remat else (False, True))
  common.report(rows, markdown(rows), args.out)
  if args.out:
    bar_chart(rows, args.out.with_suffix(".png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
