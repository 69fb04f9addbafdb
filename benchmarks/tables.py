"""Markdown tables of the benchmarks' results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[Any], str]]


def markdown_table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
  """Formats ``rows`` as a Markdown table, one line per row.

  Args:
    rows: The rows, of any type.
    columns: ``(title, cell)`` pairs; ``cell(row)`` is the row's text in
      that column.

  Returns:
    The table's lines, joined by newlines (no final newline).
  """
  lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
  return "\n".join(lines)


def cell(key: str, fmt: str = "{}", missing: str = "-") -> Callable[[dict], str]:
  """A column's cell: ``row[key]`` formatted by ``fmt``, or ``missing`` when it is ``None``."""
  return lambda row: missing if row[key] is None else fmt.format(row[key])
