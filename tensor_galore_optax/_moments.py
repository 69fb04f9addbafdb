"""The base optimizer's per-leaf moments, found by their structure.

A base optimizer's state holds, somewhere, trees with the structure of what it
optimises (Adam's ``mu`` and ``nu``, amsgrad's ``nu_max``, momentum's
``trace``, the inner states of ``optax.partition`` ...). For `tensor_galore`
those trees are core-shaped: a state initialised for other parameters gets
their shapes wrong, and complex cores' second moments can be stored real. They are found by
structure, not by name, so states nested in dicts or chains are found too;
only the name decides the order of a moment (first or second).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _key_name(key) -> str:
  for attribute in ("name", "key", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _matcher(cores_like) -> Callable[[Any], bool]:
  """Whether a subtree is a per-leaf moment of the tree ``cores_like``."""
  treedef = jax.tree.structure(cores_like, is_leaf=_is_masked)
  cores = jax.tree.leaves(cores_like, is_leaf=_is_masked)

  def is_moment(x) -> bool:
    if jax.tree.structure(x, is_leaf=_is_masked) != treedef:
      return False
    return all(
      _is_masked(m)
      or (hasattr(m, "dtype") and jnp.issubdtype(m.dtype, jnp.inexact) and m.ndim == c.ndim)
      for m, c in zip(jax.tree.leaves(x, is_leaf=_is_masked), cores)
    )

  return is_moment


def map_moments(fn: Callable[[str, Any], Any], state, cores_like):
  """``state`` with each per-leaf moment ``m`` (field ``name``) replaced by ``fn(name, m)``."""
  is_moment = _matcher(cores_like)

  def visit(path, x):
    return fn(_key_name(path[-1]) if path else "", x) if is_moment(x) else x

  return jax.tree_util.tree_map_with_path(visit, state, is_leaf=is_moment)


def find_moments(state, cores_like) -> list[tuple[str, Any]]:
  """Every per-leaf moment of ``state``, as ``(field name, tree)``."""
  found = []
  map_moments(lambda name, m: found.append((name, m)) or m, state, cores_like)
  return found


def is_second_order(name: str) -> bool:
  """Second moments (``nu``, ``nu_max``) by optax's naming; the rest are first order."""
  return name.startswith("nu")


def check_shapes(state, cores_like) -> None:
  """Raises, naming the leaf, if a moment's shape is not its core's."""
  cores = jax.tree_util.tree_flatten_with_path(cores_like, is_leaf=_is_masked)[0]
  for name, moments in find_moments(state, cores_like):
    for (path, core), moment in zip(cores, jax.tree.leaves(moments, is_leaf=_is_masked)):
      if not _is_masked(moment) and not _is_masked(core) and moment.shape != core.shape:
        raise ValueError(
          f"leaf {jax.tree_util.keystr(path)}: the base optimizer sees an array of shape "
          f"{tuple(core.shape)} but the state's `{name}` holds {tuple(moment.shape)}; was the "
          "state initialised for other params?"
        )


def real_second_moments(init: Callable[[Any], Any], update: Callable, cores_like) -> Callable:
  """``init`` whose second moments of complex cores are real.

  A second moment averages squared magnitudes, so its imaginary part is zero;
  optax's ``scale_by_adam`` still stores it complex, as it initialises every
  moment like the updates. Stored real it takes half the bytes, and Adam's
  update keeps it real: real scalars times ``|g|^2`` stay real. That is
  checked, not assumed: if one ``update`` from the real state would turn any
  moment back to complex (another optimizer, another rule), or computes it
  complex and casts it back (optax's ``cast_like``; so does Adam whose ``b2``
  is complex, as ``optax.inject_hyperparams`` makes it for complex params
  unless given ``hyperparam_dtype``), ``init`` is returned unchanged.
  """

  def real_init(cores):
    def to_real(name, moments):
      if not is_second_order(name):
        return moments
      return jax.tree.map(
        lambda m: m.real if jnp.iscomplexobj(m) else m, moments, is_leaf=_is_masked
      )

    return map_moments(to_real, init(cores), cores_like)

  abstract_cores = jax.tree.map(lambda c: jax.ShapeDtypeStruct(c.shape, c.dtype), cores_like)
  state = jax.eval_shape(real_init, abstract_cores)
  try:
    # JAX warns on a complex-to-real cast (and will raise, in a later release).
    with warnings.catch_warnings():
      warnings.filterwarnings("error", "Casting from complex to real", DeprecationWarning)
      _, updated = jax.eval_shape(lambda c, s: update(c, s, None), abstract_cores, state)
  except (DeprecationWarning, TypeError, ValueError):
    return init
  kept = jax.tree.map(lambda a, b: a.dtype == b.dtype, state, updated)
  return real_init if all(jax.tree.leaves(kept)) else init
