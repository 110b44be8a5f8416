"""Progress bars on a terminal only: a log file (a batch job, nohup, CI) gets the plain per-epoch lines."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*args, **kwargs) -> tqdm:
    """`tqdm(*args, **kwargs)`, shown only when stderr is a terminal: redirected to a file, each of a bar's
    updates would be written into it (a 16-epoch run wrote several MB of carriage-return lines)."""
    kwargs["disable"] = bool(kwargs.get("disable")) or not sys.stderr.isatty()
    return tqdm(*args, **kwargs)
