"""Progress on a terminal as a bar; in a log file (a batch job, nohup, CI) as a plain line now and then."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class PlainProgress:
    """tqdm's interface as plain lines: `desc: n/total unit, rate unit/s`, one every `every` items and one when
    it closes; no carriage returns."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", unit: str = "it", every: int = 100, **_):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.shown = 0
        self.started = time.perf_counter()

    def _line(self) -> None:
        rate = self.n / max(time.perf_counter() - self.started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        print(f"{self.desc}: {done} {self.unit}, {rate:.1f} {self.unit}/s", file=sys.stderr, flush=True)
        self.shown = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self.shown >= self.every:
            self._line()

    def set_postfix(self, *args, **kwargs) -> None:
        """Nothing: a log file gets the totals, not each step's figures."""

    def close(self) -> None:
        if self.n != self.shown:
            self._line()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(*args, plain_every: int | None = None, **kwargs):
    """`tqdm(*args, **kwargs)` when stderr is a terminal. Redirected to a file, where each of a bar's updates
    would be written into it (a 16-epoch run wrote several MB of carriage-return lines): with `plain_every`,
    a `PlainProgress` line every that many items and at the end; without, nothing (the caller prints its own
    lines, as training does once per epoch)."""
    if kwargs.get("disable") or sys.stderr.isatty() or not plain_every:
        kwargs["disable"] = bool(kwargs.get("disable")) or not sys.stderr.isatty()
        return tqdm(*args, **kwargs)
    return PlainProgress(*args, every=plain_every, **kwargs)
