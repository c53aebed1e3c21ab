"""The terminal summary of a finished command: rich tables, then plain lines (``prune-run``'s job, ``prune-bench``)."""
from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

# a table: (title, [(column, justify)], rows of cells)
TableSpec = tuple[str, list[tuple[str, str]], list[tuple[str, ...]]]


def print_summary(tables: list[TableSpec], lines: list[str], console: Console | None = None) -> None:
    console = console or Console()
    for title, columns, rows in tables:
        table = Table(title=title)
        for name, justify in columns:
            table.add_column(name, justify=justify)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in lines:
        console.print(line, highlight=False)


def summary_text(tables: list[TableSpec], lines: list[str], width: int = 110) -> str:
    """The same summary as plain text (for a log file or a test)."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    print_summary(tables, lines, console)
    return console.export_text()
