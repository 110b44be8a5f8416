"""The four output tables, one Parquet dataset each under the output folder, and the per-procedure commit
that makes a killed run resumable.

Each procedure writes one file per table, named by its key (`procedure_key`): `frames/KEY.parquet`,
`tracks/KEY.parquet`, `errors/KEY.parquet`, then `procedures/KEY.parquet` last. Each file is written to a
hidden temporary name and renamed (`write_atomic`), and the `procedures` file is the commit: a procedure
without one is redone from the start, its files replaced under the same names, so no row is ever
doubled. `pyarrow.dataset.dataset(folder)` skips the hidden temporary files of a killed run. Every file of a
table has the same columns (the RLE columns are null where `--rle` is off), so any reader sees one schema.

Before a procedure is redone (`--retry-errors`), its commit is removed first (`uncommit`), so a redo killed
half-way is redone again; an error commit removes the procedure's other rows first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import write_atomic

TABLES = ("frames", "tracks", "errors", "procedures")
COMMIT_TABLE = "procedures"

# The fixed columns of each table (the manifest's extra columns follow them, as text).
FRAMES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),  # the run (run.json) that wrote the row
        ("procedure_id", pa.string()),
        ("path", pa.string()),  # the video, or the still this frame is (null unless --id-from path)
        ("frame_index", pa.int64()),
        ("time_s", pa.float64()),  # from the procedure's first frame
        ("neoplastic_percent", pa.float64()),  # of all the frame's pixels
        ("non_neoplastic_percent", pa.float64()),
        ("lesions", pa.int32()),  # lesions of at least the model's min_lesion_area
        ("track_ids", pa.list_(pa.int32())),
        ("rle_neoplastic", pa.string()),  # the competition's RLE of each class's mask, with --rle (else null)
        ("rle_non_neoplastic", pa.string()),
    ]
)
TRACKS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("procedure_id", pa.string()),
        ("track_id", pa.int32()),
        ("class", pa.string()),  # the class the track is called: neoplastic or non_neoplastic
        ("p_neoplastic_given_polyp", pa.float64()),
        ("uncertain", pa.bool_()),
        ("first_frame", pa.int64()),
        ("last_frame", pa.int64()),
        ("first_time_s", pa.float64()),
        ("last_time_s", pa.float64()),  # the start of the last frame it is seen in
        ("time_in_view_s", pa.float64()),  # first frame's start to last frame's end
        ("frames_seen", pa.int64()),
        ("largest_area_px", pa.int64()),
    ]
)
ERRORS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("procedure_id", pa.string()),
        ("path", pa.string()),  # the file that failed (null unless --id-from path)
        ("error_type", pa.string()),  # the exception's type: VideoLoadError, WorkerDied, ...
        ("reason", pa.string()),  # the CLI's text
    ]
)
PROCEDURES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("procedure_id", pa.string()),
        ("path", pa.string()),  # null unless --id-from path
        ("kind", pa.string()),  # video or stills ("" where it could not be read)
        ("status", pa.string()),  # ok, or error (its reason in `errors`)
        ("duration_s", pa.float64()),  # first to last frame, plus one frame's time (null: timing unknown)
        ("frames", pa.int64()),
        ("timing", pa.string()),  # where frame times come from: container, dicom, stream, rate or unknown
        ("polyps_neoplastic", pa.int64()),  # tracks seen in at least --min-polyp-frames frames, by class called
        ("polyps_non_neoplastic", pa.int64()),
        ("polyps_uncertain", pa.int64()),  # of those, how many are flagged uncertain
        ("polyp_time_s", pa.float64()),  # time with a polyp in view
        ("overlay", pa.string()),  # the overlaid clip's file name under --overlays, or ""
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("backend", pa.string()),
        ("precision", pa.string()),
        ("software_version", pa.string()),
        ("model_sha256", pa.string()),  # SHA-256 of the weights file the run used
        ("study_instance_uid", pa.string()),  # of a DICOM procedure, else null
        ("series_instance_uid", pa.string()),  # where all its objects share one, else null
    ]
)
SCHEMAS = {"frames": FRAMES_SCHEMA, "tracks": TRACKS_SCHEMA, "errors": ERRORS_SCHEMA, "procedures": PROCEDURES_SCHEMA}


PROGRESS_FOLDER = ".progress"  # frames done so far by each procedure in flight: KEY.json, {"frames": N}


def write_progress(output: Path, key: str, frames: int) -> None:
    """Say how many frames of a procedure in flight are done (read by the driver's progress line)."""
    write_atomic(output / PROGRESS_FOLDER / f"{key}.json", lambda tmp: tmp.write_text(json.dumps({"frames": frames})))


def frames_in_flight(output: Path) -> int:
    """Frames done so far by the procedures in flight (their progress files); unreadable files count 0."""
    total = 0
    for path in (output / PROGRESS_FOLDER).glob("*.json") if (output / PROGRESS_FOLDER).is_dir() else ():
        try:
            total += int(json.loads(path.read_text())["frames"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total


def procedure_key(procedure_id: str) -> str:
    """The file name stem of a procedure's rows: a digest of its id (ids hold slashes and any character)."""
    return hashlib.sha256(procedure_id.encode("utf-8")).hexdigest()[:24]


def schema(table: str, extras: list[str]) -> pa.Schema:
    """A table's schema: its fixed columns, then the manifest's extra columns as text."""
    return pa.schema(list(SCHEMAS[table]) + [pa.field(name, pa.string()) for name in extras])


def table_path(output: Path, table: str, key: str) -> Path:
    """Where a procedure's rows of one table go."""
    return output / table / f"{key}.parquet"


def write_rows(output: Path, table: str, key: str, rows: list[dict], table_schema: pa.Schema) -> Path:
    """One procedure's rows of one table as one Parquet file, written atomically (a temporary file, renamed)."""
    data = pa.Table.from_pylist(rows, schema=table_schema)
    return write_atomic(table_path(output, table, key), lambda tmp: pq.write_table(data, tmp))


def committed(output: Path) -> dict[str, str]:
    """The committed procedures of an output folder: key -> status ("ok" or "error")."""
    folder = output / COMMIT_TABLE
    if not folder.is_dir():
        return {}
    done = {}
    for path in folder.glob("*.parquet"):
        if path.name.startswith("."):
            continue
        status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
        done[path.stem] = status[0] if status else "error"
    return done


def uncommit(output: Path, key: str) -> None:
    """Undo a procedure's commit, then delete its rows: a redo killed at any point is redone again, never
    kept with the old commit."""
    table_path(output, COMMIT_TABLE, key).unlink(missing_ok=True)
    for table in TABLES:
        table_path(output, table, key).unlink(missing_ok=True)


def clear_progress(output: Path) -> None:
    """Forget the progress files of an earlier or ended run."""
    shutil.rmtree(output / PROGRESS_FOLDER, ignore_errors=True)


def remove_uncommitted(output: Path) -> list[Path]:
    """Delete what a killed run left: temporary files, rows of procedures that never committed, and frame and
    track rows of procedures committed as errors (a failed procedure has none)."""
    done = committed(output)
    removed = []
    for table in TABLES:
        folder = output / table
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            stale = path.suffix == ".parquet" and (
                path.stem not in done or (done[path.stem] == "error" and table in ("frames", "tracks"))
            )
            if path.name.startswith(".") or stale:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
