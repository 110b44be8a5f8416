"""What an archive holds: one work item per procedure (a video file, a folder of stills, or the DICOM stills of
one study), from a folder tree, a glob or a manifest, on any filesystem `pyarrow.fs` reaches.

A path the user types is a path, whatever characters its names hold (`[`, `*`, `#`, non-ASCII): a pattern is
matched only when asked for (`glob=True`). Procedure ids carry no folder or file name unless asked for
(`id_from="path"`): hospital exports name folders after patients.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from ..dicom import HEAD_LENGTH, sniff_dicom
from ..errors import DataError
from ..preprocessing import IMAGE_EXTENSIONS
from ..textfiles import SPREADSHEET_FALLBACK, decode_user_bytes

# Stills are what `load_image` reads but DICOM (a DICOM file may be a whole procedure: its header says);
# every other file is taken for a video, and what is not one is named in `errors`, except the files an
# archive holds beside its media (lists, notes, tables), which are skipped.
STILL_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e != ".dcm")
NOT_MEDIA_EXTENSIONS = (
    ".csv", ".tsv", ".parquet", ".json", ".jsonl", ".txt", ".md", ".pdf", ".xml", ".html", ".htm", ".log",
    ".xlsx", ".xls", ".ods", ".ini", ".yaml", ".yml", ".sha256", ".md5",
)  # fmt: skip
# Manifest columns with a meaning; any other column is carried into every table as text.
MANIFEST_COLUMNS = ("path", "procedure_id")
ID_SOURCES = ("auto", "path", "uid", "hash", "manifest")
MANIFEST_SEPARATORS = ",;\t"


@dataclass(frozen=True)
class Procedure:
    """One unit of work: a video (`kind` "video", `paths` its one file), a folder of stills or the DICOM
    stills of one study (`kind` "stills", `paths` its images in order), with the manifest's extra columns
    (`extras`, as text). `path` is what the tables record of where it came from ("" unless paths are
    recorded); `source` is where to read it. `problem` names why a manifest row cannot be read."""

    procedure_id: str
    path: str
    kind: str
    paths: tuple[str, ...]
    extras: dict[str, str] = field(default_factory=dict)
    source: str = ""
    study_uid: str = ""
    series_uid: str = ""
    problem: str = ""

    def to_item(self) -> dict:
        """The row Ray Data carries to a worker (plain types; the extras as JSON, one column for any set)."""
        return {
            "procedure_id": self.procedure_id,
            "path": self.path,
            "kind": self.kind,
            "paths": json.dumps(list(self.paths)),
            "extras": json.dumps(self.extras, sort_keys=True),
            "source": self.source,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "problem": self.problem,
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
            str(item["source"]),
            str(item["study_uid"]),
            str(item["series_uid"]),
            str(item["problem"]),
        )


def is_image(path: str) -> bool:
    """Whether a file name says it is a still image (a DICOM's name says nothing: its header does)."""
    return posixpath.splitext(path)[1].lower() in STILL_EXTENSIONS


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/") if part)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path (relative or absolute, any characters) or a URI (`s3://`,
    `gs://`, `file://`, ...).

    Raises:
        DataError: a URI whose filesystem pyarrow cannot open, naming it and why.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as error:
        raise DataError(f"'{uri}' names no filesystem that pyarrow can open: {error}") from error


def _prefix(uri: str) -> str:
    """What to put before a filesystem path to name it again as the user did (`s3://` and the like)."""
    return uri.split("://", 1)[0] + "://" if "://" in uri and not uri.startswith("file://") else ""


def opaque_id(relative: str) -> str:
    """A procedure id that names no folder or file: a digest of its path relative to the input."""
    return "P-" + hashlib.sha256(relative.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Listing:
    """How procedures are named and what they record: `id_from` (`ID_SOURCES`), and the folders whose files
    are never inputs (the run's own outputs, where they lie inside the archive)."""

    id_from: str = "auto"
    exclude: tuple[str, ...] = ()

    @property
    def records_paths(self) -> bool:
        """Whether ids and the `path` column may carry folder and file names."""
        return self.id_from == "path"

    def excluded(self, path: str) -> bool:
        return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in self.exclude)

    def name(self, relative: str, uid: str = "") -> str:
        """The id of a procedure found at `relative` (its DICOM study's `uid` where it has one)."""
        if self.id_from == "path":
            return relative
        if self.id_from in ("uid", "auto") and uid:
            return uid
        if self.id_from == "uid":
            raise DataError("--id-from uid: only DICOM procedures have a UID; use auto to name the others by digest")
        return opaque_id(relative)


def _dicom_identity(filesystem: pafs.FileSystem, path: str) -> tuple[str, str, int] | None:
    """(Study, Series Instance UID, frames) of a DICOM file, read from its header alone; None where the file
    is not DICOM."""
    try:
        with filesystem.open_input_stream(path) as stream:
            head = stream.read(HEAD_LENGTH)
            if not sniff_dicom(head):
                return None
            rest = stream.read(1 << 20)  # the header; Pixel Data is not read
    except OSError:
        return None
    import pydicom

    try:
        dataset = pydicom.dcmread(
            io.BytesIO(head + rest), stop_before_pixels=True, force=True, specific_tags=None, defer_size=256
        )
        frames = int(str(dataset.get("NumberOfFrames", 1) or 1))
        return str(dataset.get("StudyInstanceUID", "") or ""), str(dataset.get("SeriesInstanceUID", "") or ""), frames
    except Exception:  # noqa: BLE001 - a header that does not parse: read as a file of its own, named in errors
        return "", "", 0


def _group(files: list[str], root: str, uri_prefix: str, filesystem: pafs.FileSystem, listing: Listing):
    """Videos one each and stills one procedure per folder; DICOM by study (Study Instance UID: a hospital
    export's objects of one colonoscopy lie in any folders, under any names): its stills one procedure, its
    video objects another (several recordings of one procedure, in name order, on one timeline)."""
    procedures, stills, studies = [], {}, {}
    for path in sorted(files):
        relative = posixpath.relpath(path, root)
        if _hidden(relative) or listing.excluded(path):
            continue
        if posixpath.splitext(path)[1].lower() in NOT_MEDIA_EXTENSIONS:
            continue
        if is_image(path):
            stills.setdefault(posixpath.dirname(path), []).append(path)
            continue
        identity = _dicom_identity(filesystem, path)
        if identity is not None and identity[0]:
            kind = "stills" if identity[2] == 1 else "video"
            studies.setdefault(identity[0], {}).setdefault(kind, []).append((path, identity[1]))
            continue
        source = uri_prefix + path  # a container video, or a file to be named in errors
        procedures.append(
            Procedure(
                listing.name(relative), source if listing.records_paths else "", "video", (source,), source=source
            )
        )
    for folder, paths in stills.items():
        relative = posixpath.relpath(folder, root)
        source = uri_prefix + folder
        procedures.append(
            Procedure(
                listing.name(relative),
                source if listing.records_paths else "",
                "stills",
                tuple(uri_prefix + p for p in sorted(paths)),
                source=source,
            )
        )
    for study, kinds in studies.items():
        for kind, members in sorted(kinds.items()):
            # In name order (a PACS names objects by UID: the order is then the instances').
            paths = tuple(uri_prefix + p for p, _ in sorted(members))
            folder = (
                posixpath.commonpath([p for p, _ in members]) if len(members) > 1 else posixpath.dirname(members[0][0])
            )
            relative = posixpath.relpath(folder, root) + f" (study {study}, {kind})"
            series = sorted({s for _, s in members})
            uid = study if len(kinds) == 1 else f"{study} {kind}"  # a study holding both: two procedures
            procedures.append(
                Procedure(
                    listing.name(relative, uid),
                    uri_prefix + folder if listing.records_paths else "",
                    kind,
                    paths,
                    source=uri_prefix + folder,
                    study_uid=study,
                    series_uid=series[0] if len(series) == 1 else "",
                )
            )
    ids = [p.procedure_id for p in procedures]
    if len(ids) != len(set(ids)):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"two procedures would share the id {twice[0]!r}: choose another --id-from")
    return sorted(procedures, key=lambda p: p.procedure_id)


def _files_under(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return [info.path for info in infos if info.type == pafs.FileType.File]


def from_folder(uri: str, listing: Listing = Listing()) -> list[Procedure]:
    """Every video file under a folder, every folder of stills in it, and its DICOM stills by study."""
    filesystem, root = resolve(uri)
    return _group(_files_under(filesystem, root), root, _prefix(uri), filesystem, listing)


def from_glob(pattern: str, listing: Listing = Listing()) -> list[Procedure]:
    """The files and folders a glob names (`*`, `?`, `[...]`, matched with `fnmatch`, where `*` also crosses
    folders); a folder is read as a tree. Ids are paths relative to the folder before the first wildcard."""
    base = pattern.split("*")[0].split("?")[0].split("[")[0]
    filesystem, root = resolve(base if base.endswith("/") else posixpath.dirname(base) or ".")
    _, full = resolve(pattern)
    files = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if not fnmatch.fnmatchcase(info.path, full):
            continue
        files += [info.path] if info.type == pafs.FileType.File else _files_under(filesystem, info.path)
    return _group(sorted(set(files)), root, _prefix(pattern), filesystem, listing)


def _manifest_rows(uri: str, encoding: str | None) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV manifest as spreadsheets save it: UTF-8 with or without a byte-order mark, else
    Windows-1252 (or `encoding`); `,`, `;` or tab between cells; blank rows skipped."""
    filesystem, path = resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            raw = stream.read()
    except OSError as error:
        raise DataError(f"manifest '{uri}' cannot be read: {error}") from error
    text = decode_user_bytes(raw, f"manifest '{uri}'", encoding, fallback=SPREADSHEET_FALLBACK)
    lines = text.split("\n")
    header = next((line for line in lines if line.strip()), "")
    # The header's separator: the one that splits it into the most cells (a path may hold any of the others).
    separator = max(MANIFEST_SEPARATORS, key=lambda s: len(next(csv.reader([header], delimiter=s))))
    rows = list(csv.reader(io.StringIO(text), delimiter=separator))
    numbered = [(line, row) for line, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"manifest '{uri}' is empty")
    names = [cell.strip() for cell in numbered[0][1]]
    return [(line, dict(zip(names, (c.strip() for c in row), strict=False))) for line, row in numbered[1:]]


def from_manifest(uri: str, listing: Listing = Listing(), encoding: str | None = None) -> list[Procedure]:
    """A CSV or Parquet manifest: a `path` column (a video, or a folder of stills), optionally `procedure_id`;
    every other column (`site`, `date`, ...) is carried into the outputs as text. Rows that share a
    `procedure_id` are one procedure of several files (two clips of one colonoscopy), in manifest order. A row
    without a path becomes an error row naming its manifest line.

    Raises:
        DataError: the manifest cannot be read or has no `path` column.
    """
    filesystem, path = resolve(uri)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"manifest '{uri}' cannot be read: {error}") from error
        rows = [
            (line, {k: "" if v is None else str(v) for k, v in row.items()})
            for line, row in enumerate(table.to_pylist(), start=1)
        ]
        columns = table.column_names
    else:
        rows = _manifest_rows(uri, encoding)
        columns = list(rows[0][1]) if rows else []
    if "path" not in columns:
        raise DataError(f"manifest '{uri}' has no 'path' column (columns: {', '.join(columns)})")
    base = posixpath.dirname(path) if "://" not in uri else uri.rsplit("/", 1)[0]
    groups: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
    for line, row in rows:
        where = row.get("path", "").strip()
        given = row.get("procedure_id", "").strip()
        if given:
            procedure_id = given
        elif where:  # the same id on every run, whatever rows are added: the path as given, or its digest
            procedure_id = where if listing.id_from == "path" else opaque_id(where)
        else:
            procedure_id = f"manifest line {line}"
        extras = {k: v for k, v in row.items() if k not in MANIFEST_COLUMNS and k}
        groups.setdefault(procedure_id, []).append((line, where, extras))
    procedures = []
    for procedure_id, members in groups.items():
        missing = [line for line, where, _ in members if not where]
        sources = [
            where if "://" in where or posixpath.isabs(where) else posixpath.join(base, where)
            for _, where, _ in members
            if where
        ]
        problem = f"manifest '{uri}', line {missing[0]}: the path cell is empty" if missing else ""
        recorded = ";".join(sources) if listing.records_paths else ""
        extras = members[0][2]
        procedures.append(Procedure(procedure_id, recorded, "", tuple(sources), extras, problem=problem))
    return procedures


def discover(
    source: str, glob: bool = False, listing: Listing = Listing(), manifest_encoding: str | None = None
) -> list[Procedure]:
    """The procedures of a folder, a file, a manifest (`.csv` or `.parquet`), or a glob (with `glob`).

    Raises:
        DataError: nothing there, or an unreadable manifest; the message names `source`.
    """
    if glob:
        procedures = from_glob(source, listing)
    elif source.lower().endswith((".csv", ".parquet")):
        procedures = from_manifest(source, listing, manifest_encoding)
    else:
        filesystem, path = resolve(source)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            hint = " (to match a pattern, add --glob)" if any(ch in source for ch in "*?[") else ""
            raise DataError(f"input '{source}' does not exist{hint}")
        procedures = (
            from_folder(source, listing)
            if info.type == pafs.FileType.Directory
            else _group([path], posixpath.dirname(path), _prefix(source), filesystem, listing)
        )
    if not procedures:
        raise DataError(f"input '{source}' holds no file to read")
    return procedures


def _expand_one(filesystem: pafs.FileSystem, path: str, uri: str) -> tuple[str, tuple[str, ...]]:
    """(kind, files) of one manifest path: a file (a video, or a DICOM still or clip), or a folder of stills
    (images by name, DICOM by content)."""
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"'{uri}' does not exist")
    if info.type == pafs.FileType.File:
        identity = _dicom_identity(filesystem, path)
        return ("stills" if identity is not None and identity[2] == 1 else "video"), (uri,)
    prefix = _prefix(uri)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not _hidden(posixpath.basename(i.path)))
    stills = [
        prefix + p
        for p in files
        if is_image(p) or ((identity := _dicom_identity(filesystem, p)) is not None and identity[2] == 1)
    ]
    if not stills:
        raise DataError(f"folder '{uri}' holds no image ({', '.join(STILL_EXTENSIONS)}, or single-frame DICOM)")
    return "stills", tuple(stills)


def expand(procedure: Procedure) -> Procedure:
    """A manifest's procedure with its kind and files found: one or more videos, or stills (a folder of
    them, DICOM stills). Several manifest paths of one procedure must be of one kind.

    Raises:
        DataError: the manifest row's problem, a path that does not exist, a folder that holds no image, or
            videos and stills mixed in one procedure.
    """
    if procedure.problem:
        raise DataError(procedure.problem)
    if procedure.kind:
        return procedure
    kinds, files = set(), []
    for uri in procedure.paths:
        filesystem, path = resolve(uri)
        kind, found = _expand_one(filesystem, path, uri)
        kinds.add(kind)
        files += found
    if len(kinds) > 1:
        raise DataError(f"procedure '{procedure.procedure_id}' mixes videos and stills: give them as two procedures")
    return Procedure(
        procedure.procedure_id,
        procedure.path,
        kinds.pop(),
        tuple(files),
        procedure.extras,
        source=procedure.paths[0] if procedure.paths else "",
    )
