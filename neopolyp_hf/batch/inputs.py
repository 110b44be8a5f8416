"""What an archive holds: one work item per procedure (a video file, or a folder of stills), from a folder
tree, a glob or a manifest, on any filesystem `pyarrow.fs` reaches."""

from __future__ import annotations

import fnmatch
import json
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from ..errors import DataError
from ..preprocessing import IMAGE_EXTENSIONS

# Stills are what `load_image` reads but DICOM (a .dcm file may be a whole procedure: it is read as a video,
# one frame or many); every other file is taken for a video, and what is not one is named in `errors`.
STILL_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e != ".dcm")
# Manifest columns with a meaning; any other column is carried into every table as text.
MANIFEST_COLUMNS = ("path", "procedure_id")


@dataclass(frozen=True)
class Procedure:
    """One unit of work: a video (`kind` "video", `paths` its one file) or a folder of stills (`kind`
    "stills", `paths` its images in name order), with the manifest's extra columns (`extras`, as text)."""

    procedure_id: str
    path: str
    kind: str
    paths: tuple[str, ...]
    extras: dict[str, str] = field(default_factory=dict)

    def to_item(self) -> dict:
        """The row Ray Data carries to a worker (plain types; the extras as JSON, one column for any set)."""
        return {
            "procedure_id": self.procedure_id,
            "path": self.path,
            "kind": self.kind,
            "paths": json.dumps(list(self.paths)),
            "extras": json.dumps(self.extras, sort_keys=True),
        }

    @staticmethod
    def from_item(item: dict) -> Procedure:
        """The inverse of `to_item`."""
        return Procedure(
            str(item["procedure_id"]),
            str(item["path"]),
            str(item["kind"]),
            tuple(json.loads(item["paths"])),
            json.loads(item["extras"]),
        )


def is_image(path: str) -> bool:
    """Whether a file name says it is a still image."""
    return posixpath.splitext(path)[1].lower() in STILL_EXTENSIONS


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/") if part)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a URI (`s3://`, `gs://`, `file://`, ...)."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, ValueError, TypeError):  # a plain relative path
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)


def _group(files: list[str], root: str, uri_prefix: str) -> list[Procedure]:
    """Videos one each, stills one procedure per folder; ids are paths relative to `root`."""
    procedures, stills = [], {}
    for path in sorted(files):
        if _hidden(posixpath.relpath(path, root)):
            continue
        if is_image(path):
            stills.setdefault(posixpath.dirname(path), []).append(path)
        else:
            procedures.append(
                Procedure(posixpath.relpath(path, root), uri_prefix + path, "video", (uri_prefix + path,))
            )
    for folder, paths in stills.items():
        relative = posixpath.relpath(folder, root)
        procedures.append(
            Procedure(relative, uri_prefix + folder, "stills", tuple(uri_prefix + p for p in sorted(paths)))
        )
    return sorted(procedures, key=lambda p: p.procedure_id)


def _prefix(uri: str) -> str:
    """What to put before a filesystem path to name it again as the user did (`s3://` and the like)."""
    return uri.split("://", 1)[0] + "://" if "://" in uri and not uri.startswith("file://") else ""


def _files_under(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return [info.path for info in infos if info.type == pafs.FileType.File]


def from_folder(uri: str) -> list[Procedure]:
    """Every video file under a folder, and every folder of stills in it, as procedures."""
    filesystem, root = resolve(uri)
    return _group(_files_under(filesystem, root), root, _prefix(uri))


def from_glob(pattern: str) -> list[Procedure]:
    """The files and folders a glob names (`*`, `?`, `[...]`, matched with `fnmatch`, where `*` also crosses
    folders); a folder is read as a tree. Ids are paths relative to the folder before the first wildcard."""
    base = pattern.split("*")[0].split("?")[0].split("[")[0]
    filesystem, root = resolve(base if base.endswith("/") else posixpath.dirname(base) or ".")
    _, full = resolve(pattern)
    files = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if not fnmatch.fnmatch(info.path, full):
            continue
        files += [info.path] if info.type == pafs.FileType.File else _files_under(filesystem, info.path)
    return _group(sorted(set(files)), root, _prefix(pattern))


def from_manifest(uri: str) -> list[Procedure]:
    """A CSV or Parquet manifest: a `path` column (a video, or a folder of stills), optionally `procedure_id`;
    every other column (`site`, `date`, ...) is carried into the outputs as text.

    Raises:
        DataError: the manifest cannot be read, has no `path` column, or repeats a procedure id.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    filesystem, path = resolve(uri)
    try:
        if path.lower().endswith(".parquet"):
            table = pq.read_table(path, filesystem=filesystem)
        else:
            with filesystem.open_input_stream(path) as stream:
                table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except (OSError, pafs.ArrowInvalid) as error:
        raise DataError(f"manifest '{uri}' cannot be read: {error}") from error
    if "path" not in table.column_names:
        raise DataError(f"manifest '{uri}' has no 'path' column (columns: {', '.join(table.column_names)})")
    procedures, seen = [], set()
    base = posixpath.dirname(path)
    for row in table.to_pylist():
        where = str(row["path"])
        full = where if "://" in where or posixpath.isabs(where) else posixpath.join(base, where)
        procedure_id = str(row.get("procedure_id") or where)
        if procedure_id in seen:
            raise DataError(f"manifest '{uri}' names procedure '{procedure_id}' twice")
        seen.add(procedure_id)
        extras = {k: "" if v is None else str(v) for k, v in row.items() if k not in MANIFEST_COLUMNS}
        procedures.append(Procedure(procedure_id, full, "", (), extras))  # kind found by the worker: it may not exist
    return procedures


def discover(source: str) -> list[Procedure]:
    """The procedures of a folder, a glob or a manifest (`.csv` or `.parquet`).

    Raises:
        DataError: nothing there, or an unreadable manifest; the message names `source`.
    """
    if any(ch in source for ch in "*?["):
        procedures = from_glob(source)
    elif source.lower().endswith((".csv", ".parquet")):
        procedures = from_manifest(source)
    else:
        filesystem, path = resolve(source)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"input '{source}' does not exist")
        procedures = (
            from_folder(source)
            if info.type == pafs.FileType.Directory
            else _group([path], posixpath.dirname(path), _prefix(source))
        )
    if not procedures:
        raise DataError(f"input '{source}' holds no file to read")
    return procedures


def expand(procedure: Procedure) -> Procedure:
    """A manifest's procedure with its kind and files found (a folder of stills, or a video file).

    Raises:
        DataError: the path does not exist, or a folder holds no image.
    """
    if procedure.kind:
        return procedure
    filesystem, path = resolve(procedure.path)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"'{procedure.path}' does not exist")
    if info.type == pafs.FileType.File:
        return Procedure(procedure.procedure_id, procedure.path, "video", (procedure.path,), procedure.extras)
    prefix = _prefix(procedure.path)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    stills = sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File and is_image(i.path))
    if not stills:
        raise DataError(f"folder '{procedure.path}' holds no image ({', '.join(STILL_EXTENSIONS)})")
    return Procedure(procedure.procedure_id, procedure.path, "stills", tuple(stills), procedure.extras)
