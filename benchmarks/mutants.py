"""Hand-made mutants of the library, run against the tests that should catch them.

Each mutant is one textual change to a module. For each, the named tests of the current
checkout are run on the mutated code (they must fail), and, where given, the tests they
replaced are run on the same mutant applied to an older checkout (they passed: the reason
the tests were rewritten). Run from the repository root::

  python -m benchmarks.mutants [--old-commit SHA] [--out benchmarks/results/mutants/mutants.json]

It writes one JSON row per mutant and check. Needs git and pytest; takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

# (name, file, original text, mutated text, new tests, old tests)
MUTANTS = [
  (
    "transpose instead of the conjugate transpose",
    "tensor_galore_optax/_tucker.py",
    "tensor = mode_dot(tensor, factors[k].conj(), modes[k])",
    "tensor = mode_dot(tensor, factors[k], modes[k])",
    [
      "tests/test_transform.py::test_full_rank_with_sgd_base_equals_sgd",
      "tests/test_transform.py::test_full_rank_projection_with_identity_base_is_identity_on_complex_4d",
    ],
    [
      "tests/test_transform.py::test_full_rank_with_sgd_base_equals_sgd",
      "tests/test_transform.py::test_full_rank_projection_with_identity_base_is_identity_on_complex_4d",
    ],
  ),
  (
    "the trailing singular vectors instead of the leading ones",
    "tensor_galore_optax/_refresh.py",
    "    u, _, _ = jnp.linalg.svd(r.conj().T)\n    return u[:, :rank]",
    "    u, _, _ = jnp.linalg.svd(r.conj().T)\n    return u[:, ::-1][:, :rank]",
    [
      "tests/test_refresh.py::test_a_cut_inside_tied_singular_values_keeps_the_leading_ones_and_the_optimal_energy"
    ],
    ["tests/test_refresh.py::test_ties_do_not_change_the_projection"],
  ),
  (
    "a residual step on a leaf whose factors span every mode",
    "tensor_galore_optax/_residual.py",
    "  return any(r < i for r, i in zip(plan.ranks, plan.mode_sizes) if r is not None)",
    "  return True",
    ["tests/test_residual.py::test_a_gradient_the_factors_hold_whole_adds_nothing"],
    [],
  ),
  (
    "scale dropped",
    "tensor_galore_optax/_transform.py",
    "  full = scale * plan.back_project(step.astype(work), factors)",
    "  full = plan.back_project(step.astype(work), factors)",
    [
      "tests/test_scale.py::test_the_first_step_is_as_long_as_full_size_adams",
      "tests/test_transform.py::test_the_chain_and_the_one_call_optimizer_are_one_algorithm_with_one_set_of_defaults",
    ],
    [],
  ),
  (
    "the refresh skipped",
    "tensor_galore_optax/_transform.py",
    "  factors = jax.lax.cond(now, lambda: refresh(tensor, factors), lambda: factors)",
    "  factors = jax.lax.cond(False, lambda: refresh(tensor, factors), lambda: factors)",
    [
      "tests/test_transform.py::test_factors_change_exactly_at_multiples_of_update_proj_gap",
      "tests/test_transform.py::test_full_rank_with_sgd_base_equals_sgd",
    ],
    [],
  ),
]

# The same mutants as they read in 0.4.0 (the old tests ran against that code).
OLD_TEXT = {
  "tensor_galore_optax/_refresh.py": (
    "    u, _, _ = jnp.linalg.svd(r.conj().T)\n    return u[:, :rank]",
    "    u, _, _ = jnp.linalg.svd(r.conj().T)\n    return u[:, ::-1][:, :rank]",
  ),
}


def _run(root: pathlib.Path, tests: list[str]) -> bool:
  """Whether every test passes in ``root``."""
  done = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
    cwd=root,
    capture_output=True,
    text=True,
  )
  return done.returncode == 0


def _mutate(root: pathlib.Path, path: str, old: str, new: str):
  file = root / path
  text = file.read_text()
  if old not in text:
    return None
  file.write_text(text.replace(old, new, 1))
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--old-commit", default="06f8497")
  p.add_argument("--out", default="benchmarks/results/mutants/mutants.json")
  args = p.parse_args(argv)
  here = pathlib.Path.cwd()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    old_root = pathlib.Path(tmp) / "old"
    subprocess.run(
      ["git", "worktree", "add", "--detach", str(old_root), args.old_commit],
      check=True,
      capture_output=True,
    )
    try:
      for name, path, original, mutated, new_tests, old_tests in MUTANTS:
        saved = _mutate(here, path, original, mutated)
        assert saved is not None, f"mutant {name!r} does not apply"
        try:
          new_pass = _run(here, new_tests)
        finally:
          (here / path).write_text(saved)
        old_pass = None
        if old_tests:
          o, m = OLD_TEXT.get(path, (original, mutated))
          saved = _mutate(old_root, path, o, m)
          if saved is not None:
            try:
              old_pass = _run(old_root, old_tests)
            finally:
              (old_root / path).write_text(saved)
        rows.append(
          {
            "mutant": name,
            "file": path,
            "new_tests": new_tests,
            "new_tests_pass": new_pass,
            "old_tests": old_tests,
            "old_tests_pass": old_pass,
          }
        )
        print(json.dumps(rows[-1]))
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", str(old_root)], capture_output=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rows, indent=1) + "\n")
  return 0 if all(not r["new_tests_pass"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
