"""The scaling example: the FNO trained by 2 processes, checkpointed, resumed by 1; its docs."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A spectral weight (8, 8, 4, 3): above --min-size, so projected (its input channels to 2),
# and split over 2 processes along its first axis like its core.
TINY = ["--width", "8", "--modes", "4", "--resolution", "16", "--layers", "1"]
TINY += ["--batch-size", "4", "--min-size", "256", "--update-proj-gap", "2"]


def _run(*args: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  result = subprocess.run(
    [sys.executable, "-m", "examples.scaling", *args, *TINY],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,  # a launch takes 10 to 30 s on a 2-core machine; processes stuck past this fail
  )
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_and_one_resumes(tmp_path):
  checkpoints = tmp_path / "checkpoints"
  common = ["--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2"]
  out = _run("--num-processes", "2", "--steps", "4", *common)
  assert "2 process(es), 2 device(s); resumed at 0" in out, out
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]
  # The same program, unchanged, in one process: it continues from the newest checkpoint.
  out = _run("--steps", "6", *common)
  assert "1 process(es), 1 device(s); resumed at 4" in out, out
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]


def _between(text: str, start: str, end: str) -> str:
  match = re.search(rf"^{re.escape(start)}\n(.*?)^{re.escape(end)}", text, re.MULTILINE | re.DOTALL)
  assert match, (start, end)
  return match.group(1)


def test_the_docs_several_hosts_block_is_the_programs_code():
  program = (ROOT / "examples" / "scaling" / "train.py").read_text(encoding="utf-8")
  excerpt = textwrap.dedent(_between(program, "  # [several-hosts]", "  # [/several-hosts]"))
  page = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
  section = _between(page, "## Several hosts", "## ")
  assert f"```py\n{excerpt}```" in section
