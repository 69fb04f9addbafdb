"""Trains a Fourier Neural Operator with Tensor-GaLore: ``python -m examples.fno``.

By default: 1000 + 200 samples of 2-D Navier-Stokes at 64 x 64 (vorticity at t = 0 to t = 1),
generated and cached by `examples.fno.data`, and the FNO of `examples.fno.model`, trained for 15
epochs with ``tensor_galore_adamw`` (about ten minutes on two CPU cores). ``--data FILE.npz``
trains on your own fields (``x_train, y_train, x_test, y_test``, each ``(N, S, S)`` or
``(N, S, S, C)``); ``--optimizer adamw`` trains the baseline. Writes ``metrics.json`` (test
relative L2 error, optimizer state bytes) and ``loss.png`` to ``--out``.
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import tqdm
from flax import nnx

from examples.fno import data, model
from tensor_galore_optax import optimizer_state_bytes, projection_plan, tensor_galore_adamw

matplotlib.use("Agg")  # write files, need no display
import matplotlib.pyplot as plt  # noqa: E402

OPTIMIZERS = {
  # The library's default: rank 0.25 (Adam's moments on a quarter of each spectral weight's
  # input channels), at the learning rate tuned for AdamW.
  "tensor_galore": lambda lr, wd: tensor_galore_adamw(lr, weight_decay=wd),
  "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
  # A factored second moment, no first moment (factors the spectral weights' 16 x 9 modes too).
  "adafactor": lambda lr, wd: optax.adafactor(lr, min_dim_size_to_factor=8),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m examples.fno", description=__doc__.split("\n")[0])
  p.add_argument("--data", metavar="FILE.npz", help="default: generated Navier-Stokes, 64 x 64")
  p.add_argument("--optimizer", choices=OPTIMIZERS, default="tensor_galore")
  p.add_argument("--epochs", type=int, default=15)
  p.add_argument("--lr", type=float, default=2.4e-2, help="peak learning rate (default: 2.4e-2)")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--batch-size", type=int, default=20)
  p.add_argument("--modes", type=int, default=16, help="Fourier modes per axis (default: 16)")
  p.add_argument("--width", type=int, default=32, help="channels (default: 32)")
  p.add_argument("--seed", type=int, default=0, help="of the initialisation and the shuffling")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/fno"))
  return p.parse_args(argv)


def relative_l2(pred: jax.Array, y: jax.Array) -> jax.Array:
  """``||pred - y|| / ||y||`` per sample."""
  norm = lambda a: jnp.sqrt(jnp.sum(a**2, axis=(1, 2, 3)))
  return norm(pred - y) / norm(y)


def main(argv=None) -> dict:
  args = parse_args(argv)
  start = time.perf_counter()
  if args.data:
    ds = data.load_dataset(args.data)
  else:
    ds = data.load_or_generate("navier_stokes", n_train=1000, n_test=200, resolution=64)
  x_train, y_train, x_test, y_test = (a[..., None] if a.ndim == 3 else a for a in ds)
  if not 0 < args.batch_size <= len(x_train):
    raise SystemExit(f"--batch-size must be in 1..{len(x_train)} (the training samples)")
  # The model sees fields normalised per channel by the training set's statistics.
  stats = lambda a: (a.mean((0, 1, 2)), a.std((0, 1, 2)) + 1e-6)
  (x_mean, x_std), (y_mean, y_std) = stats(x_train), stats(y_train)

  modes = model.clip_modes((args.modes, args.modes), x_train.shape[1:3])
  fno = model.FNO(
    x_train.shape[-1], y_train.shape[-1], modes=modes, width=args.width, rngs=nnx.Rngs(args.seed)
  )
  graphdef, params = nnx.split(fno)
  steps_per_epoch = len(x_train) // args.batch_size
  total = args.epochs * steps_per_epoch
  # One epoch of linear warm-up, then a cosine decay to 1% of the peak rate.
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, args.lr, min(steps_per_epoch, total // 2), total, end_value=0.01 * args.lr
  )
  optimizer = OPTIMIZERS[args.optimizer](schedule, args.weight_decay)
  opt_state = optimizer.init(params)
  if args.optimizer == "tensor_galore":
    print(projection_plan(nnx.to_pure_dict(params)))  # what each weight keeps, before training

  def predict(params, x):
    out = nnx.merge(graphdef, params)((x - x_mean) / x_std)
    return out * y_std + y_mean

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss_fn = lambda params: relative_l2(predict(params, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    # jax.grad of a real loss gives the conjugate of a complex weight's ascent direction, and
    # optax expects the direction itself (real leaves are left as they are).
    grads = optax.tree.conj(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_step = jax.jit(lambda params, x, y: relative_l2(predict(params, x), y))

  def evaluate(params, x, y, b=50):
    errors = [eval_step(params, x[i : i + b], y[i : i + b]) for i in range(0, len(x), b)]
    return float(np.mean(np.concatenate(errors)))

  rng = np.random.default_rng(args.seed)
  history = []
  for epoch in range(1, args.epochs + 1):
    order = rng.permutation(len(x_train))
    losses = []
    # A bar on a terminal; redirected to a file, only the line per epoch is written.
    for i in tqdm.trange(steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=None):
      index = order[i * args.batch_size : (i + 1) * args.batch_size]
      params, opt_state, loss = train_step(params, opt_state, x_train[index], y_train[index])
      losses.append(float(loss))
    test_error = evaluate(params, x_test, y_test)
    history.append(dict(epoch=epoch, train_loss=np.mean(losses), test_rel_l2=test_error))
    print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, test rel L2 {test_error:.4f}")

  metrics = dict(
    test_rel_l2=test_error,
    optimizer=args.optimizer,
    lr=args.lr,
    optimizer_state_bytes=optimizer_state_bytes(optimizer, params),
    adamw_state_bytes=optimizer_state_bytes(optax.adamw(schedule), params),
    seconds=time.perf_counter() - start,
    history=history,
  )
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
  fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
  for key, label in [("train_loss", "train loss"), ("test_rel_l2", "test relative L2")]:
    ax.semilogy([h["epoch"] for h in history], [h[key] for h in history], "o-", label=label)
  ax.set(xlabel="epoch", ylabel="relative L2 error", title=args.optimizer)
  ax.legend()
  fig.savefig(args.out / "loss.png", dpi=120)
  ratio = metrics["optimizer_state_bytes"] / metrics["adamw_state_bytes"]
  print(f"test rel L2 {test_error:.4f}, optimizer state {ratio:.3f}x AdamW's; wrote {args.out}")
  return metrics


if __name__ == "__main__":
  main()
