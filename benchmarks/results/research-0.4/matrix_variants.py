"""The harness of the 0.4.0 research on matrices, kept as it was run (not maintained).

Matrix GaLore written out by hand (one side of each dense kernel projected, Adam on the core,
the matched step) with the refresh, the side and a residual term as options, trained through
the FNO example on Darcy 16x16 with ``--preset mlp`` (it replaces ``tensor_galore_defaults``'s
optimizer). From the repository root::

  PYTHONPATH=. python benchmarks/results/research-0.4/matrix_variants.py \
      '{"refresh": "gram_ema", "beta": 0.99}' 1e-3,3e-3,1e-2 0,1,2 '{"preset": "mlp"}'

arguments: the variant (JSON), learning rates, seeds, Config overrides (JSON). It prints one JSON
line per learning rate. The numbers are in docs/research-notes.md (0.4.0).
"""

import dataclasses
import json
import math
import os
import sys
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples.fno import configs, optimizers
from examples.fno.train import train_and_evaluate

VARIANT = {}


class S(NamedTuple):
  count: jax.Array
  P: dict
  extra: dict
  mu: dict
  nu: dict


def galore_exp(
  lr_sched, rank=0.25, gap=100, refresh="svd1", beta=0.99, wd=1e-4, b1=0.9, b2=0.999, eps=1e-8, **kw
):
  ONLY = VARIANT.get("only")
  SCALE = VARIANT.get("scale", "matched")
  RES = VARIANT.get("res")
  RSCALE = VARIANT.get("rscale", 1.0)
  LIMIT = VARIANT.get("limit")
  CLIP = VARIANT.get("clip", 1.0)

  def proj_leaf(p):
    return p.ndim == 2 and p.size >= 4096 and (ONLY is None or p.shape in [tuple(o) for o in ONLY])

  SIDE = VARIANT.get("side", "small")

  def side(p):  # returns (m, n, transpose?) with m the projected side
    m, n = p.shape
    first = {"small": m <= n, "large": m > n or (m == n and False), "in": True, "out": False}[SIDE]
    return (m, n, False) if first else (n, m, True)

  def r_of(p):
    m, n, _ = side(p)
    return max(1, round(rank * m))

  def asmat(g, p):
    return g.T if side(p)[2] else g

  def init(params):
    P, extra, mu, nu = {}, {}, {}, {}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, p in flat:
      k = jax.tree_util.keystr(path)
      if proj_leaf(p):
        m, n, _ = side(p)
        r = r_of(p)
        P[k] = jnp.zeros((m, r))
        core = (r, n)
        if refresh == "gram_ema":
          extra[k] = jnp.zeros((m, m))
        if refresh in ("sketch", "sketch_ref"):
          extra[k] = jnp.zeros((m, r))
        if refresh == "energy":
          extra[k] = jnp.zeros((r,))
        if refresh == "acc":
          extra[k] = jnp.zeros((m, n))
        if LIMIT:
          extra["lim" + k] = jnp.zeros(())
        if RES == "factored":
          extra["row" + k] = jnp.zeros((m,))
          extra["col" + k] = jnp.zeros((n,))
      else:
        core = p.shape
      mu[k] = jnp.zeros(core)
      nu[k] = jnp.zeros(core)
    return S(jnp.zeros([], jnp.int32), P, extra, mu, nu)

  def update(grads, state, params):
    t = state.count
    flat, tdef = jax.tree_util.tree_flatten_with_path(grads)
    pflat = jax.tree.leaves(params)
    now = (t % gap) == 0
    P, extra, mu, nu, outs = dict(state.P), dict(state.extra), {}, {}, []
    c1 = 1 - b1 ** (t + 1.0)
    c2 = 1 - b2 ** (t + 1.0)
    for (path, g), p in zip(flat, pflat):
      k = jax.tree_util.keystr(path)
      if k in P:
        G = asmat(g, p)
        r = P[k].shape[1]
        if refresh == "gram_ema":
          Sg = beta * extra[k] + (1 - beta) * G @ G.T
          extra[k] = Sg
          src = lambda: jnp.linalg.eigh(Sg + 0 * G[:, :1] @ G[:, :1].T)[1][:, ::-1][:, :r]
        elif refresh == "acc":
          A = extra[k] + G
          extra[k] = jnp.where(now, 0.0, 1.0) * A  # reset after use
          src = lambda: jnp.linalg.svd(A, full_matrices=False)[0][:, :r]
        elif refresh == "sketch":  # Y = EMA(G G^T P_old), refresh qr(Y)
          Y = extra[k]
          src = lambda: jnp.linalg.qr(
            jnp.where(t == 0, G @ jax.random.normal(jax.random.PRNGKey(0), (G.shape[1], r)), Y)
          )[0]
        elif refresh == "energy":
          e = extra[k]

          def src():
            B = jnp.concatenate(
              [
                G / jnp.linalg.norm(G),
                P[k] * jnp.sqrt(e / jnp.maximum(e.sum(), 1e-30)) * VARIANT.get("w", 1.0),
              ],
              axis=1,
            )
            return jnp.linalg.svd(B, full_matrices=False)[0][:, :r]
        else:
          src = lambda: jnp.linalg.svd(G, full_matrices=False)[0][:, :r]
        Pk = jax.lax.cond(now, src, lambda: P[k])
        C = Pk.T @ G
        if refresh == "sketch":
          Yn = G @ C.T  # G G^T P
          extra[k] = (
            jnp.where(now, 0.0, 1.0) * (beta * extra[k] + (1 - beta) * Yn)
            + jnp.where(now, 1.0, 0.0) * Yn
          )
        if refresh == "energy":
          en = jnp.sum(C * C, axis=1)
          extra[k] = jnp.where(now, en, beta * extra[k] + (1 - beta) * en)
        P[k] = Pk
        gc = C
      else:
        gc = g
      m_ = b1 * state.mu[k] + (1 - b1) * gc
      v_ = b2 * state.nu[k] + (1 - b2) * gc * gc
      mu[k], nu[k] = m_, v_
      u = (m_ / c1) / (jnp.sqrt(v_ / c2) + eps)
      if k in P:
        core_u = u
        u = P[k] @ u * (math.sqrt(G.shape[0] / P[k].shape[1]) if SCALE == "matched" else SCALE)
        if RES == "fira":
          R = G - P[k] @ gc
          phi = jnp.linalg.norm(core_u, axis=0) / jnp.maximum(jnp.linalg.norm(gc, axis=0), 1e-30)
          term = RSCALE * phi * R
          if LIMIT:
            nrm = jnp.linalg.norm(term)
            last = extra["lim" + k]
            shrink = jnp.where(last > 0, jnp.maximum(nrm / (LIMIT * last), 1.0), 1.0)
            term = term / shrink
            extra["lim" + k] = nrm / shrink
          u = u + term
        elif RES == "factored":
          R = G - P[k] @ gc
          R2 = R * R + 1e-30
          row = b2 * extra["row" + k] + (1 - b2) * R2.mean(1)
          col = b2 * extra["col" + k] + (1 - b2) * R2.mean(0)
          extra["row" + k], extra["col" + k] = row, col
          vhat = jnp.outer(row, col) / row.mean() / c2
          term = R / (jnp.sqrt(vhat) + eps)
          rms = jnp.sqrt(jnp.mean(term * term))
          term = term / jnp.maximum(1.0, rms / CLIP)
          if VARIANT.get("rmsmatch"):
            term = term / jnp.maximum(rms, 1e-30) * jnp.sqrt(jnp.mean(core_u * core_u))
          u = u + RSCALE * term
        elif RES == "apollo":
          phi = jnp.linalg.norm(core_u, axis=0) / jnp.maximum(jnp.linalg.norm(gc, axis=0), 1e-30)
          u = RSCALE * phi * G
        u = u.T if side(p)[2] else u
      outs.append(-lr_sched(t) * (u + wd * p))
    return jax.tree_util.tree_unflatten(tdef, outs), S(t + 1, P, extra, mu, nu)

  return optax.GradientTransformation(init, update)


_orig = optimizers.make_optimizer


def patched(name, learning_rate, **kw):
  if name == "tensor_galore_defaults" and VARIANT.get("adafactor"):
    return optax.chain(
      optax.adafactor(learning_rate, multiply_by_parameter_scale=False, min_dim_size_to_factor=128),
      optax.add_decayed_weights(1e-4 * 0),
    )
  if name == "tensor_galore_defaults" and VARIANT:
    v = {
      k: v
      for k, v in VARIANT.items()
      if k not in ("w", "side", "only", "scale", "res", "rscale", "limit", "clip", "rmsmatch")
    }
    return galore_exp(learning_rate, gap=kw.get("update_proj_gap", 100), **v)
  return _orig(name, learning_rate, **kw)


optimizers.make_optimizer = patched


def run(opt, lr, seed=0, **over):
  base = dict(
    pde="darcy",
    resolution=16,
    preset="mlp",
    optimizer=opt,
    lr=lr,
    seed=seed,
    epochs=15,
    update_proj_gap=100,
    tensor_rank=0.25,
    scale="matched",
    out=tempfile.mkdtemp(),
    progress=False,
  )
  base.update(over)
  cfg = dataclasses.replace(configs.Config(), **base)
  import contextlib
  import io

  with contextlib.redirect_stdout(io.StringIO()):
    m = train_and_evaluate(cfg)
  return m["test_rel_l2"], m["optimizer_state_bytes"]


if __name__ == "__main__":
  spec = json.loads(sys.argv[1])
  lrs = [float(x) for x in sys.argv[2].split(",")]
  seeds = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0").split(",")]
  over = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
  opt = spec.pop("opt", "tensor_galore_defaults")
  VARIANT.update(spec)
  for lr in lrs:
    res = [run(opt, lr, s, **over) for s in seeds]
    errs = [r[0] for r in res]
    print(
      json.dumps(
        {
          "variant": spec,
          "opt": opt,
          "lr": lr,
          "over": over,
          "errs": [round(e, 4) for e in errs],
          "mean": round(float(np.mean(errs)), 4),
          "bytes": res[0][1],
        }
      ),
      flush=True,
    )
