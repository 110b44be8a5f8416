"""What the benchmark scripts share: a Markdown table on stdout, and the rows kept as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from neopolyp_hf.atomic import write_text_atomic


def print_table(headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A Markdown table: one line of headers, the rule, one line per row of already formatted cells."""
    print("\n| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def save_rows(path: str | None, rows) -> None:
    """The figures as JSON at `path` (atomically), where one is given."""
    if path:
        write_text_atomic(path, json.dumps(rows, indent=1))
