"""The documentation's code runs, its API page is complete and the site builds.

Convention for code blocks in ``README.md`` and ``docs/*.md``:

* a block fenced with ```` ```python ```` is executed here, one test per block,
  named ``file:line``, each alone in a fresh interpreter (as a reader who
  copies that one block would run it): a block imports and defines everything
  it uses;
* a ```` ```text ```` block right after a ```` ```python ```` block (nothing but
  blank lines between them) is the output it shows: the block's standard output
  must be exactly that text (trailing spaces aside);
* a block that must not run (a multi-host launch, a long training command, a
  fragment) is fenced with ```` ```py ```` instead: it is highlighted the same
  way on the site and skipped here. ```` ```bash ```` and other languages are
  never run.

Every executed block should take at most a few seconds on a CPU: use small
shapes, and few blocks (each starts an interpreter and imports JAX).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An opening fence (up to 3 spaces of indentation), its info string, then the
# body up to a closing fence of the same indentation.
_FENCE = re.compile(
  r"^(?P<indent> {0,3})```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
  re.MULTILINE | re.DOTALL,
)


def _python_blocks(path: pathlib.Path) -> list[tuple[int, str, str | None]]:
  """``(line, code, shown output or None)`` of every ```python block of ``path``, in order."""
  text = path.read_text(encoding="utf-8")
  blocks = []
  matches = list(_FENCE.finditer(text))
  for k, match in enumerate(matches):
    info = match.group("info").strip().split()
    if not info or info[0] != "python":
      continue
    line = text.count("\n", 0, match.start()) + 1
    indent = len(match.group("indent"))
    body = "\n".join(
      ln[indent:] if ln[:indent].strip() == "" else ln for ln in match.group("body").splitlines()
    )
    shown = None
    if k + 1 < len(matches):
      after = matches[k + 1]
      adjacent = text[match.end() : after.start()].strip() == ""
      if adjacent and after.group("info").strip() == "text":
        shown = after.group("body")
    blocks.append((line, body, shown))
  return blocks


def _lines(text: str) -> list[str]:
  return [ln.rstrip() for ln in text.strip("\n").splitlines()]


def _relative(path: pathlib.Path) -> str:
  return path.relative_to(ROOT).as_posix()


_BLOCKS = {path: _python_blocks(path) for path in DOC_FILES}


@pytest.mark.parametrize(
  ("path", "index"),
  [
    pytest.param(path, i, id=f"{_relative(path)}:{line}")
    for path, blocks in _BLOCKS.items()
    for i, (line, _, _) in enumerate(blocks)
  ],
)
def test_code_block_runs_alone(path, index, tmp_path):
  line, code, shown = _BLOCKS[path][index]
  # A file named after the block, so that a traceback points at the page and the line.
  script = tmp_path / f"{_relative(path).replace('/', '_')}_line{line}.py"
  script.write_text(code, encoding="utf-8")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run(
    [sys.executable, str(script)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, f"{_relative(path)}:{line} failed:\n{result.stderr[-4000:]}"
  if shown is not None:  # the output the page shows is the output the code prints
    assert _lines(result.stdout) == _lines(shown), (
      f"{_relative(path)}:{line} printed:\n{result.stdout}"
    )


def test_fence_parser_sees_blocks():
  # Guards the parser itself: the README's quick start is a ```python block.
  assert _BLOCKS[ROOT / "README.md"]
  assert sum(len(b) for b in _BLOCKS.values()) > len(_BLOCKS[ROOT / "README.md"])
  # The README's first block shows its output (the plan table), and is checked against it.
  assert _BLOCKS[ROOT / "README.md"][0][2] is not None


def test_api_page_lists_every_public_name():
  import tensor_galore_optax

  api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
  documented = set(re.findall(r"^::: tensor_galore_optax\.(\w+)\s*$", api, re.MULTILINE))
  missing = sorted(set(tensor_galore_optax.__all__) - documented)
  assert not missing, f"docs/api.md has no `::: tensor_galore_optax.NAME` for {missing}"


def test_nav_pages_exist():
  text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
  pages = re.findall(r"^\s*- [^:\n]+:\s*(\S+\.md)\s*$", text, re.MULTILINE)
  assert pages
  missing = [p for p in pages if not (ROOT / "docs" / p).is_file()]
  assert not missing, f"mkdocs.yml's nav names missing pages: {missing}"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "index.html").is_file()
  assert (tmp_path / "api" / "index.html").is_file()
