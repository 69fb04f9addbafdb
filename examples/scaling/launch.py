"""Starting several processes of one program on this machine, and stopping them all if one fails.

A multi-process JAX program blocks in its first collective until every process has joined, so a
process that dies leaves the others waiting (for `jax.distributed`'s heartbeat timeout, 100 s by
default). `run_processes` waits for all of them with one deadline, stops the rest as soon as one
fails, and reports every process's output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence


class ProcessesFailed(RuntimeError):
  """A process exited with an error, or the processes ran past their deadline.

  Attributes:
    outputs: Every process's combined stdout and stderr, in process order.
    returncodes: Every process's exit status, ``None`` for one that was still running.
  """

  def __init__(self, reason: str, outputs: list[str], returncodes: list[int | None]):
    self.outputs = outputs
    self.returncodes = returncodes
    sections = [
      f"--- process {i} (exit status {code}) ---\n{out}"
      for i, (out, code) in enumerate(zip(outputs, returncodes))
    ]
    super().__init__("\n".join([reason, *sections]))


def free_port() -> int:
  """A TCP port of the loopback interface that no process listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(
  commands: Sequence[Sequence[str]],
  *,
  timeout: float | None = None,
  env: Mapping[str, str] | None = None,
  cwd: str | os.PathLike | None = None,
  echo: int | None = None,
) -> list[str]:
  """Runs ``commands`` at once, one process each, and waits for all of them.

  Args:
    commands: One argument list per process.
    timeout: Seconds the processes may run together, from their start; ``None`` for no limit.
    env: The environment of every process (default: this process's).
    cwd: Their working directory (default: this process's).
    echo: The index of a process whose output is also written to this process's stdout as it
      comes.

  Returns:
    Every process's combined stdout and stderr, in the order of ``commands``.

  Raises:
    ProcessesFailed: When a process exits with a non-zero status (the others are then
      stopped) or when some still run after ``timeout`` seconds (they are stopped). The
      error's message holds every process's output.
  """
  with tempfile.TemporaryDirectory(prefix="processes-") as tmp:
    logs = [open(os.path.join(tmp, f"{i}.log"), "w+b") for i in range(len(commands))]  # noqa: SIM115
    processes = []
    try:
      for command, log in zip(commands, logs):
        processes.append(
          subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        )
      deadline = None if timeout is None else time.monotonic() + timeout
      reason, echoed = None, 0
      while reason is None:
        codes = [p.poll() for p in processes]
        if echo is not None:
          echoed += _echo(logs[echo], echoed)
        if any(c not in (None, 0) for c in codes):
          failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
          reason = f"process(es) {failed} failed; the others were stopped"
        elif all(c == 0 for c in codes):
          break
        elif deadline is not None and time.monotonic() > deadline:
          reason = f"the processes ran past {timeout:g} s and were stopped"
        else:
          time.sleep(0.1)
    finally:
      for p in processes:
        if p.poll() is None:
          p.terminate()
      for p in processes:
        try:
          p.wait(timeout=10)
        except subprocess.TimeoutExpired:
          p.kill()
          p.wait()
      if echo is not None:
        _echo(logs[echo], echoed)
      outputs = []
      for log in logs:
        log.seek(0)
        outputs.append(log.read().decode(errors="replace"))
        log.close()
    if reason is not None:
      raise ProcessesFailed(reason, outputs, [p.returncode for p in processes])
    return outputs


def _echo(log, offset: int) -> int:
  """Writes what ``log`` holds past ``offset`` to stdout; returns how many bytes that was."""
  log.flush()
  log.seek(offset)
  new = log.read()
  if new:
    sys.stdout.write(new.decode(errors="replace"))
    sys.stdout.flush()
  return len(new)
