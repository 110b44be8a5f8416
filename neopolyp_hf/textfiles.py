"""Text files that users hand in (id lists, split files, sample submissions), read as their programs wrote them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError

# What a spreadsheet program saves as "CSV" where it is not UTF-8: Excel on Windows in Western Europe and
# the Americas writes Windows-1252.
SPREADSHEET_FALLBACK = "cp1252"


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
    return decode_user_bytes(raw, f"{what} '{path}'")


def decode_user_bytes(raw: bytes, name: str, encoding: str | None = None, fallback: str | None = None) -> str:
    """Text as a user's program wrote it, every line ending turned into \\n: in `encoding` where given; else
    UTF-8 with or without a byte-order mark, and where that fails, `fallback` (None: no fallback).

    Raises:
        DataError: bytes that are not text in the encoding tried last, naming `name` and the line.
    """
    codecs = [encoding] if encoding else ["utf-8-sig"] + ([fallback] if fallback else [])
    for codec in codecs:
        try:
            return raw.decode(codec).replace("\r\n", "\n").replace("\r", "\n")
        except LookupError as error:
            raise DataError(f"{name}: unknown text encoding '{codec}'") from error
        except UnicodeDecodeError as error:
            failed = (codec, error)
    codec, error = failed
    line = raw[: error.start].count(b"\n") + 1
    described = "UTF-8" if codec == "utf-8-sig" else codec
    raise DataError(f"{name}, line {line}: not {described} text ({error.reason})") from error


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
