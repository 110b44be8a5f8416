"""A run's identity and its lock: one model and one set of settings per output folder, one driver at a time.

The first run on an output folder writes `run.json`: the weights' SHA-256, the Hub commit they came from
(resolved once, here on the driver: every actor loads that commit, never a later `main`), the backend,
precision and every setting that changes a row. A rerun with any difference is refused, naming each field,
so two models' rows never mix in one table. `.lock` holds the driver's host and process id; a second driver
on the same output is refused while that process lives, and takes the lock over from a dead one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..cache import file_digest
from ..errors import DataError, ModelSourceError
from ..source import resolve_model_source

RUN_FILE = "run.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class ResolvedModel:
    """A model source resolved on the driver: what every actor loads, and the digest the tables record."""

    source: str  # as given
    load_from: str  # a folder, a Hub repo id, or an .onnx file
    revision: str | None  # the Hub commit (None for local files)
    sha256: str  # of the weights file


def resolve_model(source: str, revision: str | None) -> ResolvedModel:
    """Find the model's weights once, before Ray starts: a bad source is refused in one line.

    Raises:
        ModelSourceError: the source does not resolve (its message names it).
    """
    if source.endswith(".onnx"):
        if not os.path.isfile(source):
            raise ModelSourceError(f"model file '{source}' does not exist")
        return ResolvedModel(source, os.path.abspath(source), None, file_digest(Path(source)))
    files = resolve_model_source(source, revision)
    load_from = str(Path(source).resolve()) if files.is_local else source
    return ResolvedModel(source, load_from, files.commit, file_digest(files.weights))


def run_identity(model: ResolvedModel, settings: dict) -> dict:
    """What makes two runs the same run: the model's digest and commit, and the settings that change rows."""
    return {"model_sha256": model.sha256, "model_commit": model.revision, **settings}


def run_id(identity: dict) -> str:
    """A run's id: a digest of its identity (the same identity, the same id)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_or_record(output: Path, identity: dict, model_source: str) -> str:
    """Record the run's identity in `output/run.json`, or check it against the one there; returns the run id.

    Raises:
        DataError: the folder holds another run's rows: each differing field named, with the way out.
    """
    path = output / RUN_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))["identity"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"'{path}' is not a run record of neopolyp-batch: {error}") from error
        fields = sorted(set(recorded) | set(identity))
        changed = [
            f"{name} {recorded.get(name)!r} -> {identity.get(name)!r}"
            for name in fields
            if recorded.get(name) != identity.get(name)
        ]
        if changed:
            raise DataError(
                f"'{output}' holds the rows of another run (a different {', '.join(changed)}): give a new --output "
                "folder for this one, so no table mixes two models or settings"
            )
        return run_id(identity)
    record = {"run_id": run_id(identity), "model": model_source, "identity": identity}
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record["run_id"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """One driver per output folder: `acquire` refuses while another live driver on this host holds it, and
    takes over the lock of a dead one (a driver killed with kill -9)."""

    def __init__(self, output: Path) -> None:
        self.path = output / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        """Raises DataError naming the driver that holds the output."""
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    holder = {}
                same_host = holder.get("host") == me["host"]
                if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                    self.path.unlink(missing_ok=True)  # its driver is dead: take over
                    continue
                where = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another run"
                raise DataError(
                    f"output '{self.path.parent}' is in use by {where}: wait for it to end, or give another "
                    f"--output (if no run is going, delete '{self.path}')"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise DataError(f"cannot take the lock '{self.path}'")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
