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
