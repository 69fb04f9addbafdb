"""Draws ``docs/assets/memory.png``: optimizer-state bytes of AdamW, Adafactor and Tensor-GaLore.

The model is the NS-128 FNO of the Tensor-GaLore paper (four complex spectral
weights of shape ``(64, 64, 64, 33)``, hidden width 64), built on abstract
shapes only; every number comes from `tensor_galore_optax.optimizer_state_bytes`,
which evaluates ``optimizer.init`` with `jax.eval_shape` and allocates nothing.
Tensor-GaLore is `tensor_galore_adamw` with its defaults at each rank.

Usage (from the repository root)::

  python -m benchmarks.state_figure
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.train import tree_bytes  # noqa: E402
from examples.fno.model import PRESETS  # noqa: E402
from tensor_galore_optax import optimizer_state_bytes, tensor_galore_adamw  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

RANKS = (0.25, 0.1, 0.05)


def main() -> None:
  model = nnx.eval_shape(lambda: PRESETS["ns128"].make(1, 1, rngs=nnx.Rngs(0)))
  _, params = nnx.split(model)
  rows = [("optax.adamw", optimizer_state_bytes(optax.adamw(1e-3), params))]
  for rank in RANKS:
    tx = tensor_galore_adamw(1e-3, rank=rank)
    rows.append((f"Tensor-GaLore\nrank {rank}", optimizer_state_bytes(tx, params)))
  adafactor = optax.adafactor(1e-3, min_dim_size_to_factor=8)
  rows.append(("optax.adafactor\n(factored)", optimizer_state_bytes(adafactor, params)))
  mib = [b / 2**20 for _, b in rows]
  for (name, b), m in zip(rows, mib, strict=True):
    print(f"{name.replace(chr(10), ' '):28s} {b:>12,d} bytes  {m:8.1f} MiB  {b / rows[0][1]:.3f}x")
  print(f"{'parameters':28s} {tree_bytes(params):>12,d} bytes")

  fig, ax = plt.subplots(figsize=(7.8, 3.4), dpi=150)
  bars = ax.bar(
    [n for n, _ in rows], mib, color=["#888888"] + ["#3f6fb5"] * len(RANKS) + ["#b5813f"]
  )
  for bar, m in zip(bars, mib, strict=True):
    ax.annotate(
      f"{m:.0f} MiB\n{m / mib[0]:.2f}x",
      (bar.get_x() + bar.get_width() / 2, m),
      ha="center",
      va="bottom",
      fontsize=8,
    )
  ax.set_ylabel("optimizer state (MiB)")
  ax.set_ylim(0, mib[0] * 1.25)
  ax.set_title(
    "Optimizer state of the NS-128 FNO (4 spectral weights (64, 64, 64, 33), complex64)", fontsize=8
  )
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  out = ROOT / "docs" / "assets" / "memory.png"
  fig.savefig(out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
