"""How far a refresh moves the subspace, against how far one batch's noise moves it.

A diagnosis of the conv net's loss jump at the first refresh (frontier notes, H11
and H12): trains ``cnn16`` with the default for ``update_proj_gap`` steps as
`benchmarks.frontier.train` does (same data order), then computes each projected kernel's new
factors from several single batches and from the whole training set, and prints
the overlaps ``|U_a^H U_b|_F^2 / R`` (1: the same subspace, R / I: unrelated).

    python -m benchmarks.refresh_overlap --seed 2 --lr 1e-2
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import frontier, frontier_tasks
from tensor_galore_optax import _plan, _refresh, tensor_galore_adamw


def overlap(a: jax.Array, b: jax.Array) -> float:
  """``|a^H b|_F^2 / R`` of two ``(I, R)`` orthonormal bases: 1 for one subspace, 0 orthogonal."""
  return float(jnp.sum(jnp.abs(a.conj().T @ b) ** 2) / a.shape[1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=2)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--batches", type=int, default=4, help="single batches compared")
  args = parser.parse_args(argv)

  task = frontier_tasks.TASKS["cnn16"]
  x_train, y_train, _, _ = task.data()
  graphdef, state = nnx.split(task.model(args.seed))
  params = nnx.to_pure_dict(state)
  steps_per_epoch = len(x_train) // task.batch_size
  schedule = frontier.make_schedule(args.lr, steps_per_epoch, task.epochs)
  tx = tensor_galore_adamw(schedule)
  _, loss_fn = frontier.model_functions(graphdef, x_train, y_train)

  grad_fn = jax.jit(jax.grad(loss_fn))

  @jax.jit
  def step(params, opt_state, x, y):
    updates, opt_state = tx.update(grad_fn(params, x, y), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  rng = np.random.default_rng([args.seed, 1])
  gap = _plan.UPDATE_PROJ_GAP
  batches = []
  while len(batches) <= gap:
    order = rng.permutation(len(x_train))
    size = task.batch_size
    batches += [order[i * size : (i + 1) * size] for i in range(steps_per_epoch)]
  for index in batches[:gap]:
    params, opt_state = step(params, opt_state, x_train[index], y_train[index])

  tree, _ = _plan.plan_tree(params, rank=_plan.RANK, spec=None, min_size=_plan.MIN_SIZE)
  held = tree.per_leaf(opt_state[0].factors, "factors")

  def new_factors(grads):
    out = []
    for plan, grad, old in zip(tree.plans, tree.per_leaf(grads, "grads"), held):
      out.append(
        None
        if plan is None
        else _refresh.refresh_factors(plan.to_tensor(grad), old, plan.projected_modes)
      )
    return out

  # The batch the refresh saw, and other batches drawn at random from the training set.
  draws = [batches[gap]] + [
    rng.permutation(len(x_train))[: task.batch_size] for _ in range(args.batches - 1)
  ]
  single = [new_factors(grad_fn(params, x_train[i], y_train[i])) for i in draws]
  whole = jax.tree.map(
    lambda *g: sum(g) / len(g),
    *[grad_fn(params, x_train[b], y_train[b]) for b in batches[:steps_per_epoch]],
  )
  full = new_factors(whole)

  print(f"cnn16, seed {args.seed}, lr {args.lr:g}, step {gap} (the first refresh after step 0)")
  print(
    "| kernel | R / I | old vs this batch's | this batch's vs other batches' "
    "| this batch's vs the whole set's | old vs the whole set's |"
  )
  print("|---|---|---|---|---|---|")
  for j, (path, plan, old) in enumerate(zip(tree.paths, tree.plans, held)):
    if plan is None:
      continue
    mine, whole_j = single[0][j][0], full[j][0]
    others = np.mean([overlap(mine, s[j][0]) for s in single[1:]])
    print(
      f"| {jax.tree_util.keystr(path)} | {mine.shape[-1] / mine.shape[-2]:.2f} | "
      f"{overlap(old[0], mine):.2f} | {others:.2f} | {overlap(mine, whole_j):.2f} | "
      f"{overlap(old[0], whole_j):.2f} |"
    )


if __name__ == "__main__":
  main()
