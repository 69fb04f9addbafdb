"""The package's shape: its public names, and modules that import each other without a circle."""

from __future__ import annotations

import ast
import pathlib

import tensor_galore_optax

PACKAGE = pathlib.Path(tensor_galore_optax.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
  """The package's modules that ``path`` imports (at any depth of the file)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "tensor_galore_optax":
        found |= {f"tensor_galore_optax.{alias.name}" for alias in node.names}
      elif node.module.startswith("tensor_galore_optax."):
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("tensor_galore_optax.")}
  return {name for name in found if (PACKAGE / f"{name.split('.')[-1]}.py").is_file()}


def test_private_modules_import_each_other_without_a_circle():
  graph = {
    f"tensor_galore_optax.{path.stem}": _imports(path)
    for path in PACKAGE.glob("_*.py")
    if path.name != "__init__.py"
  }

  def visit(module: str, path: tuple[str, ...]) -> None:
    assert module not in path, " -> ".join((*path, module))
    for imported in graph.get(module, ()):
      visit(imported, (*path, module))

  for module in graph:
    visit(module, ())


def test_every_public_name_is_exported_once():
  names = tensor_galore_optax.__all__
  assert len(names) == len(set(names))
  for name in names:
    assert hasattr(tensor_galore_optax, name), name


def test_the_public_surface_is_exactly_these_names():
  # A name added or removed is an API change: it is made here, on purpose.
  assert set(tensor_galore_optax.__all__) == {
    "tensor_galore",
    "tensor_galore_adamw",
    "scale_by_core_adam",
    "TuckerSpec",
    "TensorGaLoreState",
    "projection_plan",
    "ProjectionPlan",
    "LeafPlan",
    "optimizer_state_bytes",
    "optimizer_state_shardings",
  }
  assert tensor_galore_optax.__version__.split(".")[0] == "1"


def test_building_every_optimizer_leaves_jax_distributed_initialize_possible(tmp_path):
  """Multi-host programs build the optimizer in configuration code, before initialising JAX.

  A fresh interpreter builds every public optimizer (and plans one), then
  calls ``jax.distributed.initialize``: it raises RuntimeError if any of them
  started the XLA backend.
  """
  import socket
  import subprocess
  import sys

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  program = f"""
import jax, jax.numpy as jnp, optax
from tensor_galore_optax import TuckerSpec, scale_by_core_adam, tensor_galore, tensor_galore_adamw
built = [
  tensor_galore_adamw(1e-3, rank=0.25, mu_dtype=jnp.bfloat16),
  tensor_galore_adamw(1e-3, rank=0.1, second_moment="factored", mu_dtype="bfloat16"),
  tensor_galore(base_optimizer=scale_by_core_adam(second_moment="factored")),
  tensor_galore(rank=8, spec=TuckerSpec(num_projected="all"), update_proj_gap=10),
  optax.chain(tensor_galore(rank=0.5), optax.add_decayed_weights(1e-4),
              optax.scale_by_learning_rate(1e-3)),
  optax.inject_hyperparams(tensor_galore_adamw, static_args=("rank",))(1e-3, rank=0.25),
]
jax.distributed.initialize("127.0.0.1:{port}", num_processes=1, process_id=0)
print("initialized", jax.process_count())
"""
  done = subprocess.run(
    [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=tmp_path
  )
  assert done.returncode == 0, done.stderr
  assert "initialized 1" in done.stdout
