"""Text files that users hand in (id lists, split files, sample submissions), read as their programs wrote them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """The text of `path`: UTF-8 with or without a byte-order mark (spreadsheet programs write one),
    any line ending (\\n, \\r\\n, \\r) turned into \\n.

    Raises:
        DataError: a missing or unreadable file, or one that is not UTF-8, naming `what` and the path.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {what} '{path}': {error.strerror or error}") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{what} '{path}', line {line}: not UTF-8 text ({error.reason})") from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_user_json(path: str | os.PathLike, what: str) -> Any:
    """`read_user_text`, parsed as JSON; a syntax error names the line.

    Raises:
        DataError: as `read_user_text`, or JSON that does not parse.
    """
    text = read_user_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{what} '{path}', line {error.lineno}: not valid JSON ({error.msg})") from error
